// CUDA kernels of the masked-weight family: elementwise, grid-stride, arithmetic in float.
// The temperature is read on the device (no host synchronisation).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../morpho.h"

namespace morpho {
namespace {

constexpr int kThreads = 256;

// σ in the op-math type: float for fp16/bf16/fp32 storage, double for fp64 (gradcheck).
__device__ __forceinline__ float sigmoid_op(float z) { return 1.0f / (1.0f + __expf(-z)); }
__device__ __forceinline__ double sigmoid_op(double z) { return 1.0 / (1.0 + exp(-z)); }

template <typename scalar_t, typename temp_t, typename opmath_t = at::opmath_type<scalar_t>>
__global__ void masked_weight_kernel(const scalar_t* __restrict__ w,
                                     const scalar_t* __restrict__ l,
                                     const temp_t* __restrict__ temperature,
                                     scalar_t* __restrict__ out, int64_t n) {
  const opmath_t inv_t = opmath_t(1) / static_cast<opmath_t>(*temperature);
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const opmath_t s = sigmoid_op(static_cast<opmath_t>(l[i]) * inv_t);
    out[i] = static_cast<scalar_t>(static_cast<opmath_t>(w[i]) * s);
  }
}

template <typename scalar_t, typename temp_t, typename opmath_t = at::opmath_type<scalar_t>>
__global__ void masked_weight_backward_kernel(const scalar_t* __restrict__ g,
                                              const scalar_t* __restrict__ w,
                                              const scalar_t* __restrict__ l,
                                              const temp_t* __restrict__ temperature,
                                              scalar_t* __restrict__ dw,
                                              scalar_t* __restrict__ dm, int64_t n) {
  const opmath_t inv_t = opmath_t(1) / static_cast<opmath_t>(*temperature);
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const opmath_t gi = static_cast<opmath_t>(g[i]);
    const opmath_t s = sigmoid_op(static_cast<opmath_t>(l[i]) * inv_t);
    dw[i] = static_cast<scalar_t>(gi * s);
    dm[i] = static_cast<scalar_t>(gi * static_cast<opmath_t>(w[i]) * s * (opmath_t(1) - s) * inv_t);
  }
}

int blocks_for(int64_t n) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t want = (n + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(want, sms * 32)));
}

}  // namespace

at::Tensor masked_weight_cuda(const at::Tensor& weight, const at::Tensor& mask_logits,
                              const at::Tensor& temperature) {
  check_masked_weight_args(weight, mask_logits, temperature, at::kCUDA);
  const c10::cuda::CUDAGuard guard(weight.device());
  auto w = weight.contiguous();
  auto l = mask_logits.contiguous();
  auto t = temperature.to(at::kDouble).reshape({});
  auto out = at::empty_like(w);
  const int64_t n = w.numel();
  if (n == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "masked_weight", [&] {
    masked_weight_kernel<scalar_t, double><<<blocks_for(n), kThreads, 0, stream>>>(
        w.const_data_ptr<scalar_t>(), l.const_data_ptr<scalar_t>(), t.const_data_ptr<double>(),
        out.mutable_data_ptr<scalar_t>(), n);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> masked_weight_backward_cuda(const at::Tensor& grad,
                                                               const at::Tensor& weight,
                                                               const at::Tensor& mask_logits,
                                                               const at::Tensor& temperature) {
  check_masked_weight_args(weight, mask_logits, temperature, at::kCUDA);
  MORPHO_CHECK(grad.sizes() == weight.sizes(), "morpho: grad shape ", shape_str(grad),
              " must equal weight shape ", shape_str(weight));
  MORPHO_CHECK(grad.device() == weight.device(), "morpho: grad must be on the weight's device");
  const c10::cuda::CUDAGuard guard(weight.device());
  auto g = grad.to(weight.scalar_type()).contiguous();
  auto w = weight.contiguous();
  auto l = mask_logits.contiguous();
  auto t = temperature.to(at::kDouble).reshape({});
  auto dw = at::empty_like(w);
  auto dm = at::empty_like(w);
  const int64_t n = w.numel();
  if (n == 0) return {dw, dm};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, w.scalar_type(), "masked_weight_backward", [&] {
        masked_weight_backward_kernel<scalar_t, double><<<blocks_for(n), kThreads, 0, stream>>>(
            g.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
            l.const_data_ptr<scalar_t>(), t.const_data_ptr<double>(),
            dw.mutable_data_ptr<scalar_t>(), dm.mutable_data_ptr<scalar_t>(), n);
      });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dw, dm};
}

}  // namespace morpho

TORCH_LIBRARY_IMPL(morpho, CUDA, m) {
  m.impl("masked_weight", &morpho::masked_weight_cuda);
  m.impl("masked_weight_backward", &morpho::masked_weight_backward_cuda);
}
