// CUDA kernels of the graph family (issue 5): extrema_reduce (kernels in extrema_kernels.cuh,
// issue 22), sparse_linear_t, sparse_linear_dvalues. Grid-stride loops, int64 indexing,
// arithmetic in the op-math type (float for fp16/bf16/fp32, double for fp64), no host
// synchronisation.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <utility>

#include "../graph.h"
#include "extrema_launch.cuh"

namespace morpho {
namespace {

// ----------------------------------------------------------------------------- extrema
//
// The kernels, their grid and their one launch live in extrema_kernels.cuh (CUDA headers only,
// compiled standalone by tests/kernels/test_sass.py); this is the torch side: checks, outputs,
// workspace. One kernel per call, no ATen kernel after it (the outputs are written by the
// kernel's last blocks; the workspace's tickets are zeroed by a memset).

int64_t sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// c10 scalar types → the CUDA types of the header (same layout).
template <typename scalar_t> struct CudaType { using type = scalar_t; };
template <> struct CudaType<at::BFloat16> { using type = __nv_bfloat16; };
template <> struct CudaType<at::Half> { using type = __half; };

}  // namespace

ExtremaOut extrema_stats_cuda(const at::Tensor& x_in, double low, double high) {
  check_extrema_args(x_in, low, high, at::kCUDA);
  const c10::cuda::CUDAGuard guard(x_in.device());
  auto x = x_in.contiguous();
  const int64_t outer = x.size(0), C = x.size(1), inner = x.size(2);
  auto opt = x.options();
  auto i64 = opt.dtype(at::kLong), f32 = opt.dtype(at::kFloat);
  auto below = at::empty({C}, i64), above = at::empty({C}, i64), count = at::empty({}, i64);
  auto mean = at::empty({C}, f32), mn = at::empty({C}, f32), mx = at::empty({C}, f32);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "extrema_cuda", [&] {
    using T = typename CudaType<scalar_t>::type;
    const T* xp = reinterpret_cast<const T*>(x.const_data_ptr<scalar_t>());
    const extrema::Plan pl = extrema::plan_for_device<T>(xp, outer, C, inner);
    MORPHO_CHECK(pl.error == nullptr, "morpho: extrema_stats: ", pl.error ? pl.error : "",
                 " (x viewed as ", outer, " x ", C, " x ", inner, ")");
    auto ws = at::empty({static_cast<int64_t>(pl.ws_bytes)}, opt.dtype(at::kByte));
    C10_CUDA_CHECK(extrema::launch<T>(
        pl, xp, outer, C, inner, low, high, ws.mutable_data_ptr(),
        reinterpret_cast<long long*>(below.mutable_data_ptr<int64_t>()),
        reinterpret_cast<long long*>(above.mutable_data_ptr<int64_t>()),
        mean.mutable_data_ptr<float>(), mn.mutable_data_ptr<float>(),
        mx.mutable_data_ptr<float>(), reinterpret_cast<long long*>(count.mutable_data_ptr<int64_t>()),
        stream));
  });
  return {below, above, mean, mn, mx, count};
}

// ----------------------------------------------------------------------------- sparse linear

namespace {

// yᵀ[r, t] = bias[r] + Σ_e v[e] · xᵀ[col[e], t]: one block per (row, tile of blockDim.x
// tokens), threads along tokens so every xᵀ read is coalesced; col / v loads are broadcasts.
template <typename scalar_t>
__global__ void sparse_linear_t_kernel(const scalar_t* __restrict__ xt,
                                       const int64_t* __restrict__ row_ptr,
                                       const int64_t* __restrict__ col,
                                       const scalar_t* __restrict__ v,
                                       const scalar_t* __restrict__ bias,
                                       scalar_t* __restrict__ yt, int64_t N, int64_t T,
                                       int64_t n_tiles) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t w = blockIdx.x; w < N * n_tiles; w += gridDim.x) {
    const int64_t r = w / n_tiles;
    const int64_t t = (w - r * n_tiles) * blockDim.x + threadIdx.x;
    if (t >= T) continue;
    opmath_t acc = bias ? static_cast<opmath_t>(bias[r]) : opmath_t(0);
    const int64_t e1 = row_ptr[r + 1];
    for (int64_t e = row_ptr[r]; e < e1; ++e) {
      acc += static_cast<opmath_t>(v[e]) * static_cast<opmath_t>(xt[col[e] * T + t]);
    }
    yt[r * T + t] = static_cast<scalar_t>(acc);
  }
}

// dv[e] = ⟨dyᵀ[r], xᵀ[col[e]]⟩ for the edges e of row r: one warp per edge, lanes along tokens.
template <typename scalar_t>
__global__ void sparse_linear_dvalues_kernel(const scalar_t* __restrict__ dyt,
                                             const scalar_t* __restrict__ xt,
                                             const int64_t* __restrict__ row_ptr,
                                             const int64_t* __restrict__ col,
                                             scalar_t* __restrict__ dv, int64_t N, int64_t T) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    const scalar_t* g = dyt + r * T;
    for (int64_t e = row_ptr[r] + warp; e < row_ptr[r + 1]; e += n_warps) {
      const scalar_t* xr = xt + col[e] * T;
      opmath_t s = 0;
      for (int64_t t = lane; t < T; t += 32) {
        s += static_cast<opmath_t>(g[t]) * static_cast<opmath_t>(xr[t]);
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
      if (lane == 0) dv[e] = static_cast<scalar_t>(s);
    }
  }
}

int grid_for(int64_t work) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(work, sm_count() * 32)));
}

}  // namespace

at::Tensor sparse_linear_t_cuda(const at::Tensor& xt_in, const at::Tensor& row_ptr_in,
                                const at::Tensor& col_in, const at::Tensor& values_in,
                                const c10::optional<at::Tensor>& bias_in) {
  check_sparse_linear_args(xt_in, row_ptr_in, col_in, values_in, bias_in, at::kCUDA);
  MORPHO_CHECK(xt_in.dim() == 2, "morpho: the CUDA sparse_linear takes xt as (in_features, "
              "tokens); the tile-major layout is CPU only");
  const c10::cuda::CUDAGuard guard(xt_in.device());
  auto xt = xt_in.contiguous(), row_ptr = row_ptr_in.contiguous(), col = col_in.contiguous();
  auto values = values_in.contiguous();
  at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  const int64_t N = row_ptr.numel() - 1, T = xt.size(1);
  auto yt = at::empty({N, T}, xt.options());
  if (N == 0 || T == 0) return yt;
  const int threads = static_cast<int>(std::min<int64_t>(256, ceil_div(T, 32) * 32));
  const int64_t n_tiles = ceil_div(T, threads);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xt.scalar_type(), "sparse_linear_t", [&] {
    sparse_linear_t_kernel<scalar_t><<<grid_for(N * n_tiles), threads, 0, stream>>>(
        xt.const_data_ptr<scalar_t>(), row_ptr.const_data_ptr<int64_t>(),
        col.const_data_ptr<int64_t>(), values.const_data_ptr<scalar_t>(),
        bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr,
        yt.mutable_data_ptr<scalar_t>(), N, T, n_tiles);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return yt;
}

at::Tensor sparse_linear_dvalues_cuda(const at::Tensor& dyt_in, const at::Tensor& xt_in,
                                      const at::Tensor& row_ptr_in, const at::Tensor& col_in) {
  MORPHO_CHECK(dyt_in.dim() == 2 && xt_in.dim() == 2 && dyt_in.size(1) == xt_in.size(1),
              "morpho: dyt (N, T) and xt (K, T) must be 2-D with the same token count");
  MORPHO_CHECK(dyt_in.scalar_type() == xt_in.scalar_type(), "morpho: dyt and xt dtypes differ");
  MORPHO_CHECK(dyt_in.is_cuda() && xt_in.device() == dyt_in.device() &&
              row_ptr_in.device() == dyt_in.device() && col_in.device() == dyt_in.device(),
              "morpho: sparse_linear_dvalues tensors must be on the same CUDA device");
  MORPHO_CHECK(row_ptr_in.numel() == dyt_in.size(0) + 1 && row_ptr_in.scalar_type() == at::kLong &&
              col_in.scalar_type() == at::kLong,
              "morpho: row_ptr must be int64 with N + 1 entries and col int64");
  const c10::cuda::CUDAGuard guard(dyt_in.device());
  auto dyt = dyt_in.contiguous(), xt = xt_in.contiguous();
  auto row_ptr = row_ptr_in.contiguous(), col = col_in.contiguous();
  const int64_t N = dyt.size(0), T = dyt.size(1);
  auto dv = at::zeros({col.numel()}, dyt.options());  // spare slots stay 0
  if (N == 0) return dv;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dyt.scalar_type(),
                                  "sparse_linear_dvalues", [&] {
    sparse_linear_dvalues_kernel<scalar_t><<<grid_for(N), 256, 0, stream>>>(
        dyt.const_data_ptr<scalar_t>(), xt.const_data_ptr<scalar_t>(),
        row_ptr.const_data_ptr<int64_t>(), col.const_data_ptr<int64_t>(),
        dv.mutable_data_ptr<scalar_t>(), N, T);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dv;
}

}  // namespace morpho

TORCH_LIBRARY_IMPL(morpho, CUDA, m) {
  m.impl("extrema_reduce", &morpho::extrema_stats_cuda);
  m.impl("sparse_linear_t", &morpho::sparse_linear_t_cuda);
  m.impl("sparse_linear_dvalues", &morpho::sparse_linear_dvalues_cuda);
}
