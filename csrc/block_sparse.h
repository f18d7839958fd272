// Declarations of the block-sparse CPU kernels (csrc/cpu/block_sparse.cpp).
#pragma once
#include <ATen/ATen.h>

#include <optional>

namespace morpho {

// C (M, n_out_blocks·B) = A @ op(W) for W block-sparse: for output block pb, the slots
// order[ptr[pb]:ptr[pb+1]] each add A[:, idx[s]·B : +B] @ vmat[s], vmat (C, B, B) laid out
// [slot][reduction][output]. Forward: A = x, vmat = valuesᵀ per block, idx = cols. dX: A = dY,
// vmat = values, idx = rows (with the column ordering).
at::Tensor bs_dsd_cpu(const at::Tensor& a, const at::Tensor& vmat, const at::Tensor& ptr,
                      const at::Tensor& order, const at::Tensor& idx, int64_t n_out_blocks,
                      const std::optional<at::Tensor>& bias);

// dV (C, B, B): dV[s] = dY[:, rows[s]·B : +B]ᵀ @ X[:, cols[s]·B : +B] (sampled dense-dense).
at::Tensor bs_sdd_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& rows,
                      const at::Tensor& cols, int64_t block);

}  // namespace morpho
