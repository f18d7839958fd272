// Declarations of the graph family of the morpho extension (issue 5): extrema statistics,
// edge-list (CSR by destination) insertion and the edge-list sparse linear layer.
// Schemas: csrc/graph.cpp. CPU kernels: csrc/cpu/{extrema,edges,sparse_linear}.cpp.
// CUDA kernels: csrc/cuda/graph.cu, csrc/cuda/edges.cu.
#pragma once
#include <ATen/ATen.h>

#include "morpho.h"  // MORPHO_CHECK: check messages without iostreams (see there)

#include <tuple>

namespace morpho {

using ExtremaOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                              at::Tensor>;  // below, above, mean, min, max, count
using InsertOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
// row_ptr, col, old_to_new, cand_pos, status

// Status codes of insert_connections, per candidate (int8).
constexpr int8_t kInserted = 0;
constexpr int8_t kDuplicate = 1;
constexpr int8_t kFanIn = 2;
constexpr int8_t kFanOut = 3;

// x: (outer, C, inner); statistics per C over outer·inner elements.
void check_extrema_args(const at::Tensor& x, double low, double high, at::DeviceType device);
ExtremaOut extrema_stats_cpu(const at::Tensor& x, double low, double high);

void check_edges_args(const at::Tensor& row_ptr, const at::Tensor& col, const at::Tensor& src,
                      const at::Tensor& dst, int64_t n_src, at::DeviceType device);
InsertOut insert_connections_cpu(const at::Tensor& row_ptr, const at::Tensor& col,
                                 const at::Tensor& src, const at::Tensor& dst, int64_t n_src,
                                 int64_t max_fan_in, int64_t max_fan_out);

// yᵀ (N, T) from xᵀ (K, T): yᵀ[r] = bias[r] + Σ_{e in row r} values[e] · xᵀ[col[e]].
void check_sparse_linear_args(const at::Tensor& xt, const at::Tensor& row_ptr,
                              const at::Tensor& col, const at::Tensor& values,
                              const c10::optional<at::Tensor>& bias, at::DeviceType device);
at::Tensor sparse_linear_t_cpu(const at::Tensor& xt, const at::Tensor& row_ptr,
                               const at::Tensor& col, const at::Tensor& values,
                               const c10::optional<at::Tensor>& bias);
// dvalues[e] = ⟨dyᵀ[dst_e], xᵀ[col[e]]⟩ for e < nnz, 0 in the spare capacity.
at::Tensor sparse_linear_dvalues_cpu(const at::Tensor& dyt, const at::Tensor& xt,
                                     const at::Tensor& row_ptr, const at::Tensor& col);

}  // namespace morpho
