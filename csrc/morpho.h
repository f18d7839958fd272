// Shared declarations of the morpho extension.
#pragma once
#include <ATen/ATen.h>

#include <string>

namespace morpho {

// Effective weight W ⊙ σ(L/T) in one pass (the PyTorch expression takes three passes and two
// N×K temporaries). `temperature` is a 0-dim floating tensor on the weight's device.
at::Tensor masked_weight_cpu(const at::Tensor& weight, const at::Tensor& mask_logits,
                             const at::Tensor& temperature);

// Backward epilogue of masked_linear: from G = dYᵀX, dW = G·s and dM = G·W·s(1−s)/T, both in
// one pass over G, W and L.
std::tuple<at::Tensor, at::Tensor> masked_weight_backward_cpu(const at::Tensor& grad,
                                                              const at::Tensor& weight,
                                                              const at::Tensor& mask_logits,
                                                              const at::Tensor& temperature);

// "[4, 5]": a tensor's shape as text for TORCH_CHECK messages. Streaming `t.sizes()` (an
// ArrayRef) into TORCH_CHECK crashed inside c10's inline printer when built with g++ 13 against
// the torch 2.11+cu130 wheel (H100 machine, 2026-11-22); plain strings are safe everywhere.
std::string shape_str(const at::Tensor& t);

// Checks shared by the CPU and CUDA implementations (TORCH_CHECK with a message).
void check_masked_weight_args(const at::Tensor& weight, const at::Tensor& mask_logits,
                              const at::Tensor& temperature, at::DeviceType device);

}  // namespace morpho
