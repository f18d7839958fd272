// CPU kernels of the masked-weight family: one pass over N×K elements each, parallel over
// contiguous chunks (at::parallel_for), arithmetic in float (opmath) for fp16/bf16 storage.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../morpho.h"

namespace morpho {
namespace {

// 32k elements per task: large enough that thread start-up is amortised, small enough that a
// 4096×4096 weight splits into hundreds of tasks.
constexpr int64_t kGrain = 32768;

// exp(x) for float in straight-line arithmetic (Cephes expf: range reduction x = n·ln2 + r,
// degree-5 polynomial, 2^n assembled in the exponent bits; relative error < 2e-7), so that
// `#pragma omp simd` loops vectorise; std::exp is a libm call that blocks vectorisation
// (measured 2.3x slower than torch.sigmoid on 4096x4096 fp32, 2 cores).
inline float fast_expf(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);  // branch-free clamp (min/max ops)
  // round to nearest with the 1.5·2^23 trick: no libm call, so the loop stays vectorisable
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// σ(z) with σ(−∞) = 0 exactly (hard-pruned connections) and σ(+∞) = 1; never NaN.
inline float sigmoid(float z) {
  const float s = 1.0f / (1.0f + fast_expf(-z));
  return z == -std::numeric_limits<float>::infinity() ? 0.0f : s;
}

inline double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

double temperature_value(const at::Tensor& temperature) {
  const double t = temperature.item<double>();
  MORPHO_CHECK(std::isfinite(t) && t > 0.0, "morpho: temperature must be finite and > 0, got ", t);
  return t;
}

// fp32 bodies compiled for AVX-512, AVX2 and baseline x86-64, picked at load time by the CPU
// (GCC function multi-versioning), like torch's own CPU-capability dispatch. Baseline SSE alone
// ran 2x slower than torch's three-pass AVX expression at 2048x2048 (2 cores).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MORPHO_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MORPHO_CLONES
#endif

MORPHO_CLONES void masked_weight_chunk_f32(const float* __restrict wp, const float* __restrict lp,
                                           float* __restrict op, int64_t begin, int64_t end,
                                           float inv_t) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    op[i] = wp[i] * sigmoid(lp[i] * inv_t);
  }
}

MORPHO_CLONES void masked_weight_backward_chunk_f32(const float* __restrict gp,
                                                    const float* __restrict wp,
                                                    const float* __restrict lp,
                                                    float* __restrict dwp, float* __restrict dmp,
                                                    int64_t begin, int64_t end, float inv_t) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    const float s = sigmoid(lp[i] * inv_t);
    dwp[i] = gp[i] * s;
    dmp[i] = gp[i] * wp[i] * s * (1.0f - s) * inv_t;
  }
}

template <typename scalar_t>
void masked_weight_loop(const scalar_t* wp, const scalar_t* lp, scalar_t* op, int64_t n,
                        double t) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t inv_t = opmath_t(1.0 / t);
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      masked_weight_chunk_f32(wp, lp, op, begin, end, inv_t);
      return;
    }
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const opmath_t s = sigmoid(static_cast<opmath_t>(lp[i]) * inv_t);
      op[i] = static_cast<scalar_t>(static_cast<opmath_t>(wp[i]) * s);
    }
  });
}

template <typename scalar_t>
void masked_weight_backward_loop(const scalar_t* gp, const scalar_t* wp, const scalar_t* lp,
                                 scalar_t* dwp, scalar_t* dmp, int64_t n, double t) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t inv_t = opmath_t(1.0 / t);
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      masked_weight_backward_chunk_f32(gp, wp, lp, dwp, dmp, begin, end, inv_t);
      return;
    }
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const opmath_t gi = static_cast<opmath_t>(gp[i]);
      const opmath_t s = sigmoid(static_cast<opmath_t>(lp[i]) * inv_t);
      dwp[i] = static_cast<scalar_t>(gi * s);
      dmp[i] = static_cast<scalar_t>(gi * static_cast<opmath_t>(wp[i]) * s * (opmath_t(1) - s) *
                                     inv_t);
    }
  });
}

}  // namespace

at::Tensor masked_weight_cpu(const at::Tensor& weight, const at::Tensor& mask_logits,
                             const at::Tensor& temperature) {
  check_masked_weight_args(weight, mask_logits, temperature, at::kCPU);
  const double t = temperature_value(temperature);
  auto w = weight.contiguous();
  auto l = mask_logits.contiguous();
  auto out = at::empty_like(w);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "masked_weight", [&] {
    masked_weight_loop<scalar_t>(w.const_data_ptr<scalar_t>(), l.const_data_ptr<scalar_t>(),
                                 out.mutable_data_ptr<scalar_t>(), w.numel(), t);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> masked_weight_backward_cpu(const at::Tensor& grad,
                                                              const at::Tensor& weight,
                                                              const at::Tensor& mask_logits,
                                                              const at::Tensor& temperature) {
  check_masked_weight_args(weight, mask_logits, temperature, at::kCPU);
  MORPHO_CHECK(grad.sizes() == weight.sizes(), "morpho: grad shape ", shape_str(grad),
              " must equal weight shape ", shape_str(weight));
  MORPHO_CHECK(grad.device().is_cpu(), "morpho: grad must be a CPU tensor");
  const double t = temperature_value(temperature);
  auto g = grad.to(weight.scalar_type()).contiguous();
  auto w = weight.contiguous();
  auto l = mask_logits.contiguous();
  auto dw = at::empty_like(w);
  auto dm = at::empty_like(w);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, w.scalar_type(), "masked_weight_backward", [&] {
        masked_weight_backward_loop<scalar_t>(
            g.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
            l.const_data_ptr<scalar_t>(), dw.mutable_data_ptr<scalar_t>(),
            dm.mutable_data_ptr<scalar_t>(), w.numel(), t);
      });
  return {dw, dm};
}

}  // namespace morpho
