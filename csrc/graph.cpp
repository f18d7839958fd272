// Schemas and argument checks of the graph family (issue 5), registered as a fragment of the
// `morpho` library defined in morpho.cpp. Fake kernels: morpho_kernels/ops/{extrema,edges,
// sparse_linear}.py.
#include <torch/library.h>

#include "graph.h"

namespace morpho {

void check_extrema_args(const at::Tensor& x, double low, double high, at::DeviceType device) {
  MORPHO_CHECK(x.dim() == 3, "morpho: extrema_stats expects x viewed as (outer, C, inner), got ",
              x.dim(), " dims");
  MORPHO_CHECK(x.device().type() == device, "morpho: extrema_stats x must be on ", device);
  MORPHO_CHECK(at::isFloatingType(x.scalar_type()), "morpho: extrema_stats x must be floating, got ",
              x.scalar_type());
  MORPHO_CHECK(!(low > high), "morpho: extrema_stats low (", low, ") must be <= high (", high, ")");
}

void check_edges_args(const at::Tensor& row_ptr, const at::Tensor& col, const at::Tensor& src,
                      const at::Tensor& dst, int64_t n_src, at::DeviceType device) {
  MORPHO_CHECK(row_ptr.dim() == 1 && row_ptr.numel() >= 1,
              "morpho: row_ptr must be 1-D with n_dst + 1 entries");
  MORPHO_CHECK(col.dim() == 1 && src.dim() == 1 && dst.dim() == 1,
              "morpho: col, src and dst must be 1-D");
  MORPHO_CHECK(src.numel() == dst.numel(), "morpho: src (", src.numel(), ") and dst (",
              dst.numel(), ") must have the same length");
  for (const at::Tensor* t : {&row_ptr, &col, &src, &dst}) {
    MORPHO_CHECK(t->scalar_type() == at::kLong, "morpho: edge index tensors must be int64, got ",
                t->scalar_type());
    MORPHO_CHECK(t->device().type() == device && t->device() == row_ptr.device(),
                "morpho: edge index tensors must all be on the same ", device, " device");
  }
  MORPHO_CHECK(n_src >= 0, "morpho: n_src must be >= 0, got ", n_src);
}

void check_sparse_linear_args(const at::Tensor& xt, const at::Tensor& row_ptr,
                              const at::Tensor& col, const at::Tensor& values,
                              const c10::optional<at::Tensor>& bias, at::DeviceType device) {
  MORPHO_CHECK(xt.dim() == 2 || (xt.dim() == 3 && xt.size(2) == 64),
              "morpho: sparse_linear xt must be (in_features, tokens) or tile-major "
              "(tokens / 64, in_features, 64)");
  MORPHO_CHECK(row_ptr.dim() == 1 && row_ptr.numel() >= 1 && row_ptr.scalar_type() == at::kLong,
              "morpho: row_ptr must be 1-D int64 with out_features + 1 entries");
  MORPHO_CHECK(col.dim() == 1 && col.scalar_type() == at::kLong, "morpho: col must be 1-D int64");
  MORPHO_CHECK(values.dim() == 1 && values.numel() == col.numel(), "morpho: values (",
              values.numel(), ") must be 1-D with one entry per edge slot (", col.numel(), ")");
  MORPHO_CHECK(values.scalar_type() == xt.scalar_type(), "morpho: values dtype ",
              values.scalar_type(), " must equal x dtype ", xt.scalar_type());
  for (const at::Tensor* t : {&xt, &row_ptr, &col, &values}) {
    MORPHO_CHECK(t->device().type() == device && t->device() == xt.device(),
                "morpho: sparse_linear tensors must all be on the same ", device, " device");
  }
  if (bias.has_value()) {
    MORPHO_CHECK(bias->dim() == 1 && bias->numel() == row_ptr.numel() - 1,
                "morpho: bias must be 1-D with out_features entries");
    MORPHO_CHECK(bias->scalar_type() == xt.scalar_type() && bias->device() == xt.device(),
                "morpho: bias must match x's dtype and device");
  }
}

}  // namespace morpho

TORCH_LIBRARY_FRAGMENT(morpho, m) {
  m.def(
      "extrema_reduce(Tensor x, float low, float high) -> (Tensor below, Tensor above, "
      "Tensor mean, Tensor min, Tensor max, Tensor count)");
  m.def(
      "edges_insert(Tensor row_ptr, Tensor col, Tensor src, Tensor dst, int n_src, "
      "int max_fan_in, int max_fan_out) -> (Tensor row_ptr, Tensor col, Tensor old_to_new, "
      "Tensor cand_pos, Tensor status)");
  m.def(
      "sparse_linear_t(Tensor xt, Tensor row_ptr, Tensor col, Tensor values, Tensor? bias) "
      "-> Tensor");
  m.def("sparse_linear_dvalues(Tensor dyt, Tensor xt, Tensor row_ptr, Tensor col) -> Tensor");
}

TORCH_LIBRARY_IMPL(morpho, CPU, m) {
  m.impl("extrema_reduce", &morpho::extrema_stats_cpu);
  m.impl("edges_insert", &morpho::insert_connections_cpu);
  m.impl("sparse_linear_t", &morpho::sparse_linear_t_cpu);
  m.impl("sparse_linear_dvalues", &morpho::sparse_linear_dvalues_cpu);
}
