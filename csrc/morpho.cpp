// Schemas of the morpho extension and the Python module that carries them.
//
// The ops live in the `morpho` namespace next to the Python custom ops (which register
// fragments of the same namespace). Kernels: csrc/cpu (always built), csrc/cuda (built when
// torch has CUDA). Fake (meta) kernels are registered from Python (morpho_kernels/_ext.py).
#include <torch/extension.h>
#include <torch/library.h>

#include "morpho.h"

#ifndef MORPHO_TORCH_VERSION
#define MORPHO_TORCH_VERSION "unknown"
#endif

namespace morpho {

std::string shape_str(const at::Tensor& t) {
  std::string out = "[";
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (d) out += ", ";
    out += std::to_string(t.size(d));
  }
  return out + "]";
}

void check_masked_weight_args(const at::Tensor& weight, const at::Tensor& mask_logits,
                              const at::Tensor& temperature, at::DeviceType device) {
  MORPHO_CHECK(weight.dim() == 2, "morpho: weight must be 2-D (out, in), got ", weight.dim(),
              " dims");
  MORPHO_CHECK(mask_logits.sizes() == weight.sizes(), "morpho: mask_logits shape ",
              shape_str(mask_logits), " must equal weight shape ", shape_str(weight));
  MORPHO_CHECK(mask_logits.scalar_type() == weight.scalar_type(),
              "morpho: mask_logits dtype ", mask_logits.scalar_type(),
              " must equal weight dtype ", weight.scalar_type());
  MORPHO_CHECK(weight.device().type() == device && mask_logits.device() == weight.device(),
              "morpho: weight and mask_logits must be on the same ", device, " device");
  MORPHO_CHECK(temperature.numel() == 1 && at::isFloatingType(temperature.scalar_type()),
              "morpho: temperature must be a floating tensor with one element");
  MORPHO_CHECK(temperature.device() == weight.device(),
              "morpho: temperature must be on the weight's device ", weight.device(), ", got ",
              temperature.device());
}

}  // namespace morpho

TORCH_LIBRARY(morpho, m) {
  m.def("masked_weight(Tensor weight, Tensor mask_logits, Tensor temperature) -> Tensor");
  m.def(
      "masked_weight_backward(Tensor grad, Tensor weight, Tensor mask_logits, "
      "Tensor temperature) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(morpho, CPU, m) {
  m.impl("masked_weight", &morpho::masked_weight_cpu);
  m.impl("masked_weight_backward", &morpho::masked_weight_backward_cpu);
}

static bool has_cuda() {
#ifdef MORPHO_WITH_CUDA
  return true;
#else
  return false;
#endif
}

static bool has_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "morpho C++/CUDA kernels; the ops are registered under torch.ops.morpho";
  m.def("torch_version", []() { return std::string(MORPHO_TORCH_VERSION); },
        "torch version this extension was compiled against");
  m.def("has_cuda", &has_cuda, "whether the CUDA kernels were compiled in");
  m.def("has_openmp", &has_openmp,
        "whether the CPU kernels were compiled with OpenMP (at::parallel_for runs on "
        "torch.get_num_threads() threads; without it, on one)");
}
