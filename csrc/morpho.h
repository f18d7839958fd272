// Shared declarations of the morpho extension.
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <type_traits>

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

// "[4, 5]": a tensor's shape as text for check messages.
std::string shape_str(const at::Tensor& t);

// Check messages built without iostreams. TORCH_CHECK streams its arguments into an
// ostringstream, and on the H100 machine (extension built with g++ 13.3 against the torch
// 2.11.0+cu130 wheel, 2026-11-22) inserting any number (an int64 of a shape, a double) crashed
// with SIGSEGV inside libstdc++'s num_put; a single std::string argument is passed through
// untouched. MORPHO_CHECK(cond, parts...) formats the parts with std::to_string instead.
inline void msg_append(std::string& s, const std::string& v) { s += v; }
inline void msg_append(std::string& s, const char* v) { s += v; }
inline void msg_append(std::string& s, c10::DeviceType v) { s += c10::DeviceTypeName(v, true); }
inline void msg_append(std::string& s, const c10::Device& v) { s += v.str(); }
inline void msg_append(std::string& s, c10::ScalarType v) { s += c10::toString(v); }
inline void msg_append(std::string& s, c10::IntArrayRef v) {
  s += "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  s += "]";
}
template <typename T, std::enable_if_t<std::is_arithmetic_v<T>, int> = 0>
inline void msg_append(std::string& s, T v) {
  s += std::to_string(v);
}
template <typename... Args>
std::string msg(const Args&... args) {
  std::string s;
  (msg_append(s, args), ...);
  return s;
}
#define MORPHO_CHECK(cond, ...) TORCH_CHECK(cond, ::morpho::msg(__VA_ARGS__))

// Checks shared by the CPU and CUDA implementations (TORCH_CHECK with a message).
void check_masked_weight_args(const at::Tensor& weight, const at::Tensor& mask_logits,
                              const at::Tensor& temperature, at::DeviceType device);

}  // namespace morpho
