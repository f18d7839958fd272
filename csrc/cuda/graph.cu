// CUDA kernels of the graph family (issue 5): extrema_reduce, sparse_linear_t,
// sparse_linear_dvalues. Grid-stride loops, int64 indexing, arithmetic in the op-math type
// (float for fp16/bf16/fp32, double for fp64), no host synchronisation.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <utility>

#include "../graph.h"

namespace morpho {
namespace {

// ----------------------------------------------------------------------------- extrema
//
// Two stages: blocks reduce a slab of rows into one partial row per block-row ("split"),
// (S, C) per statistic, and ATen sums / mins the S partials (S ≈ 8 blocks per SM / column
// blocks, so the partials are ~2% of the input's bytes at 65536×4096 bf16).

template <typename T>
__device__ __forceinline__ T nan_min(T a, T v) { return (v < a || v != v) ? v : a; }
template <typename T>
__device__ __forceinline__ T nan_max(T a, T v) { return (v > a || v != v) ? v : a; }

template <typename opmath_t>
struct Acc {
  int lo = 0, hi = 0;  // per thread / per block: < 2^31 values each (splits bound them)
  double sum = 0.0;
  float mn = INFINITY, mx = -INFINITY;
  __device__ __forceinline__ void count(opmath_t v, opmath_t low, opmath_t high) {
    lo += v < low;
    hi += v > high;
    const float f = static_cast<float>(v);
    mn = nan_min(mn, f);
    mx = nan_max(mx, f);
  }
  __device__ __forceinline__ void add(opmath_t v, opmath_t low, opmath_t high) {
    count(v, low, high);
    sum += static_cast<double>(v);
  }
  // Four values whose sum is formed in the op-math type first: one double add per four values.
  __device__ __forceinline__ void add4(opmath_t a, opmath_t b, opmath_t c, opmath_t d,
                                       opmath_t low, opmath_t high) {
    count(a, low, high);
    count(b, low, high);
    count(c, low, high);
    count(d, low, high);
    sum += static_cast<double>((a + b) + (c + d));
  }
  __device__ __forceinline__ void merge(const Acc& o) {
    lo += o.lo;
    hi += o.hi;
    sum += o.sum;
    mn = nan_min(mn, o.mn);
    mx = nan_max(mx, o.mx);
  }
};

struct Partials {
  long long* lo;
  long long* hi;
  double* sum;
  float* mn;
  float* mx;
  template <typename opmath_t>
  __device__ __forceinline__ void store(int64_t i, const Acc<opmath_t>& a) const {
    lo[i] = a.lo;
    hi[i] = a.hi;
    sum[i] = a.sum;
    mn[i] = a.mn;  // NaN-propagating, like amin / amax over the partials
    mx[i] = a.mx;
  }
};

constexpr int kColThreads = 32;  // threads across columns (each VEC columns wide)
constexpr int kRowThreads = 8;   // threads down the rows

// (rows, C), inner == 1. Block (32, 8): thread (tx, ty) owns VEC consecutive columns and the
// rows ty, ty + 8, ... of split blockIdx.y; one VEC-wide vector load per row (16 bytes).
template <typename scalar_t, int VEC>
__global__ void extrema_columns_kernel(const scalar_t* __restrict__ x, int64_t rows, int64_t C,
                                       int64_t rows_per_split, at::opmath_type<scalar_t> low,
                                       at::opmath_type<scalar_t> high, Partials part) {
  using opmath_t = at::opmath_type<scalar_t>;
  struct alignas(sizeof(scalar_t) * VEC) Vec { scalar_t v[VEC]; };
  __shared__ Acc<opmath_t> red[kRowThreads][kColThreads];
  const int64_t c0 = (static_cast<int64_t>(blockIdx.x) * kColThreads + threadIdx.x) * VEC;
  const int64_t r_begin = static_cast<int64_t>(blockIdx.y) * rows_per_split;
  const int64_t r_end = r_begin + rows_per_split < rows ? r_begin + rows_per_split : rows;
  Acc<opmath_t> acc[VEC];
  if (c0 < C) {
    // Four rows per step, loads first: 4 x 16 bytes in flight per thread (one load per step
    // reached 41% of the copy bandwidth at 65536x4096 bf16 on an H100: latency-bound).
    const scalar_t* xc = x + c0;
    int64_t r = r_begin + threadIdx.y;
    for (; r + 3 * kRowThreads < r_end; r += 4 * kRowThreads) {
      const Vec v0 = *reinterpret_cast<const Vec*>(xc + r * C);
      const Vec v1 = *reinterpret_cast<const Vec*>(xc + (r + kRowThreads) * C);
      const Vec v2 = *reinterpret_cast<const Vec*>(xc + (r + 2 * kRowThreads) * C);
      const Vec v3 = *reinterpret_cast<const Vec*>(xc + (r + 3 * kRowThreads) * C);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        acc[j].add4(static_cast<opmath_t>(v0.v[j]), static_cast<opmath_t>(v1.v[j]),
                    static_cast<opmath_t>(v2.v[j]), static_cast<opmath_t>(v3.v[j]), low, high);
      }
    }
    for (; r < r_end; r += kRowThreads) {
      const Vec v = *reinterpret_cast<const Vec*>(xc + r * C);
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j].add(static_cast<opmath_t>(v.v[j]), low, high);
    }
  }
  // Reduce the 8 row-threads of each column through shared memory, one column at a time.
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    red[threadIdx.y][threadIdx.x] = acc[j];
    __syncthreads();
    if (threadIdx.y == 0 && c0 + j < C) {
      Acc<opmath_t> a = red[0][threadIdx.x];
      for (int k = 1; k < kRowThreads; ++k) a.merge(red[k][threadIdx.x]);
      part.store(static_cast<int64_t>(blockIdx.y) * C + c0 + j, a);
    }
    __syncthreads();
  }
}

// (outer, C, inner), inner > 1: block (c = blockIdx.x, split = blockIdx.y) of 256 threads
// reduces its share of channel c's outer·inner elements.
template <typename scalar_t>
__global__ void extrema_channels_kernel(const scalar_t* __restrict__ x, int64_t outer, int64_t C,
                                        int64_t inner, int64_t per_split,
                                        at::opmath_type<scalar_t> low,
                                        at::opmath_type<scalar_t> high, Partials part) {
  using opmath_t = at::opmath_type<scalar_t>;
  __shared__ Acc<opmath_t> red[256];
  const int64_t c = blockIdx.x;
  const int64_t n = outer * inner;
  const int64_t f_begin = static_cast<int64_t>(blockIdx.y) * per_split;
  const int64_t f_end = f_begin + per_split < n ? f_begin + per_split : n;
  Acc<opmath_t> acc;
  for (int64_t f = f_begin + threadIdx.x; f < f_end; f += blockDim.x) {
    const int64_t o = f / inner, i = f - o * inner;
    acc.add(static_cast<opmath_t>(x[(o * C + c) * inner + i]), low, high);
  }
  red[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) red[threadIdx.x].merge(red[threadIdx.x + s]);
    __syncthreads();
  }
  if (threadIdx.x == 0) part.store(static_cast<int64_t>(blockIdx.y) * C + c, red[0]);
}

template <typename T>
std::pair<T, T> exact_thresholds(double low, double high) {
  T lo = static_cast<T>(low), hi = static_cast<T>(high);
  if (static_cast<double>(lo) < low) lo = std::nextafter(lo, std::numeric_limits<T>::infinity());
  if (static_cast<double>(hi) > high) hi = std::nextafter(hi, -std::numeric_limits<T>::infinity());
  return {lo, hi};
}

int64_t sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

ExtremaOut extrema_stats_cuda(const at::Tensor& x_in, double low, double high) {
  check_extrema_args(x_in, low, high, at::kCUDA);
  const c10::cuda::CUDAGuard guard(x_in.device());
  auto x = x_in.contiguous();
  const int64_t outer = x.size(0), C = x.size(1), inner = x.size(2), count = outer * inner;
  auto opt = x.options();
  auto i64 = opt.dtype(at::kLong);
  auto count_t = at::full({}, count, i64);
  if (count == 0 || C == 0) {
    auto inf = at::full({C}, std::numeric_limits<float>::infinity(), opt.dtype(at::kFloat));
    return {at::zeros({C}, i64), at::zeros({C}, i64),
            at::full({C}, std::numeric_limits<float>::quiet_NaN(), opt.dtype(at::kFloat)), inf,
            -inf, count_t};
  }
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t target_blocks = 8 * sm_count();  // 2048 threads per SM
  int64_t S = 1;
  at::Tensor lo, hi, sum, mn, mx;
  auto alloc = [&](int64_t s) {
    lo = at::empty({s, C}, i64);
    hi = at::empty({s, C}, i64);
    sum = at::empty({s, C}, opt.dtype(at::kDouble));
    mn = at::empty({s, C}, opt.dtype(at::kFloat));
    mx = at::empty({s, C}, opt.dtype(at::kFloat));
    return Partials{reinterpret_cast<long long*>(lo.mutable_data_ptr<int64_t>()),
                    reinterpret_cast<long long*>(hi.mutable_data_ptr<int64_t>()),
                    sum.mutable_data_ptr<double>(), mn.mutable_data_ptr<float>(),
                    mx.mutable_data_ptr<float>()};
  };
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "extrema_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto th = exact_thresholds<opmath_t>(low, high);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    if (inner == 1) {
      constexpr int kVec = 16 / sizeof(scalar_t);  // 16-byte loads
      const bool vec_ok = C % kVec == 0 && reinterpret_cast<uintptr_t>(xp) % 16 == 0;
      const int vec = vec_ok ? kVec : 1;
      const int64_t col_blocks = ceil_div(C, kColThreads * vec);
      S = std::max<int64_t>(1, std::min<int64_t>({ceil_div(target_blocks, col_blocks),
                                                   ceil_div(outer, kRowThreads * 16), 65535}));
      const int64_t rows_per_split = ceil_div(outer, S);
      S = ceil_div(outer, rows_per_split);
      MORPHO_CHECK(rows_per_split < INT32_MAX, "morpho: extrema_stats: too many rows (",
                   outer, ") for 32-bit per-block counts");
      Partials part = alloc(S);
      const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(S));
      const dim3 block(kColThreads, kRowThreads);
      if (vec_ok) {
        extrema_columns_kernel<scalar_t, kVec><<<grid, block, 0, stream>>>(
            xp, outer, C, rows_per_split, th.first, th.second, part);
      } else {
        extrema_columns_kernel<scalar_t, 1><<<grid, block, 0, stream>>>(
            xp, outer, C, rows_per_split, th.first, th.second, part);
      }
    } else {
      MORPHO_CHECK(C <= INT32_MAX, "morpho: extrema_stats supports at most 2^31 - 1 channels");
      S = std::max<int64_t>(1, std::min<int64_t>({ceil_div(target_blocks, C),
                                                   ceil_div(count, 256 * 4), 65535}));
      const int64_t per_split = ceil_div(count, S);
      S = ceil_div(count, per_split);
      MORPHO_CHECK(per_split < INT32_MAX, "morpho: extrema_stats: too many values per channel (",
                   count, ") for 32-bit per-block counts");
      Partials part = alloc(S);
      const dim3 grid(static_cast<unsigned>(C), static_cast<unsigned>(S));
      extrema_channels_kernel<scalar_t><<<grid, 256, 0, stream>>>(
          xp, outer, C, inner, per_split, th.first, th.second, part);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // amin / amax propagate NaN, as the kernels do.
  auto mean = (sum.sum(0) / static_cast<double>(count)).to(at::kFloat);
  return {lo.sum(0), hi.sum(0), mean, mn.amin(0), mx.amax(0), count_t};
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
