// extrema_stats on CUDA (issue 22, item 5): one kernel per call, whose last block per column tile
// finishes the reduction. The device code; its grid and its launch: extrema_launch.cuh. Only
// CUDA headers, so that nvcc compiles both standalone (tests/kernels/test_sass.py reads their
// sm_90 SASS and runs the per-thread code on the host); csrc/cuda/graph.cu includes them.
//
// Why this shape (H100, 65536×4096 bf16, the issue's figures): the previous kernel spent ≈14
// instructions per value (per-value compares and selects, double sums) and reached 56% of copy
// bandwidth, then 8 more ATen kernels reduced its partials. Here, per pair of bf16 / fp16 columns
// and row: one packed min, one packed max, two packed compares whose 0xFFFF lane masks are summed
// as 32-bit words (½ IADD3 each, decoded exactly, see LaneCounts), and two fp32 adds per value
// (convert + FADD): ≈5 instructions per value, counted from SASS by the test.
//
// Grid: (column tiles, row splits), sized so that the blocks are resident at once (SM count ×
// occupancy); no block ever waits for another, so a larger grid is still correct. Each block
// writes one partial per column; the last block of a tile (threadfence + atomic ticket, the
// single-pass pattern of CUB) merges the tile's partials in a fixed order and writes the outputs.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <cmath>
#include <cstring>

namespace morpho {
namespace extrema {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kUnroll = 4;  // rows per step, loads first: 4 × 16 bytes in flight per thread
// 16-bit lane counters take one increment per row; a step adds kUnroll rows: flush after at most
// 65535 / kUnroll steps. 8192 steps (32768 rows) keep the flush out of the hot loop.
constexpr int kFlushSteps = 8192;
static_assert(kFlushSteps * kUnroll < 65536, "16-bit lane counters would overflow");

// ----------------------------------------------------------------------------- types

template <typename T> struct Traits;
template <> struct Traits<__nv_bfloat16> {
  using acc_t = float;          // per-thread sums: fp32
  using pack_t = __nv_bfloat162;
  static constexpr bool kPacked = true;
};
template <> struct Traits<__half> {
  using acc_t = float;
  using pack_t = __half2;
  static constexpr bool kPacked = true;
};
template <> struct Traits<float> {
  using acc_t = double;  // as before issue 22: fp32 inputs are memory-bound, double sums are free
  using pack_t = float;
  static constexpr bool kPacked = false;
};
template <> struct Traits<double> {
  using acc_t = double;
  using pack_t = double;
  static constexpr bool kPacked = false;
};

// Explicit conversions: torch builds CUDA code with __CUDA_NO_BFLOAT16_CONVERSIONS__ and friends.
template <typename T> __host__ __device__ inline float to_float(T v) { return static_cast<float>(v); }
template <> __host__ __device__ inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __host__ __device__ inline float to_float(__half v) { return __half2float(v); }
template <typename T> __host__ __device__ inline T from_float(float v) { return static_cast<T>(v); }
template <> __host__ __device__ inline __nv_bfloat16 from_float(float v) { return __float2bfloat16(v); }
template <> __host__ __device__ inline __half from_float(float v) { return __float2half(v); }
// Comparisons of the scalar path: in float for the 16-bit types (exact: thresholds are T values).
template <typename T> struct Cmp { using type = T; };
template <> struct Cmp<__nv_bfloat16> { using type = float; };
template <> struct Cmp<__half> { using type = float; };
template <typename T> __host__ __device__ inline typename Cmp<T>::type to_cmp(T v) {
  return static_cast<typename Cmp<T>::type>(to_float(v));
}
template <> __host__ __device__ inline double to_cmp(double v) { return v; }

__host__ __device__ inline float bits_to_float(unsigned u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

__host__ __device__ inline float nan_min(float a, float v) { return (v < a || v != v) ? v : a; }
__host__ __device__ inline float nan_max(float a, float v) { return (v > a || v != v) ? v : a; }

// Statistics of one column over some values (a thread's, a block's, all).
struct Stats {
  long long lo, hi;
  double sum;
  float mn, mx;
  __host__ __device__ static Stats identity() { return {0, 0, 0.0, INFINITY, -INFINITY}; }
  __host__ __device__ void merge(const Stats& o) {
    lo += o.lo;
    hi += o.hi;
    sum += o.sum;
    mn = nan_min(mn, o.mn);  // NaN-propagating, like amin / amax
    mx = nan_max(mx, o.mx);
  }
};

// Two 16-bit lane counters in one word, fed with the 0xFFFF-per-true-lane masks of __hlt2_mask:
// word = L·0xFFFF + H·0xFFFF0000 (mod 2^32) after L / H true lanes (low / high), so one 32-bit
// add per mask, no AND. Exact while L, H ≤ 65535: L = −word mod 2^16, H = (L·0xFFFF − word) >> 16.
struct LaneCounts {
  __host__ __device__ static unsigned low(unsigned word) { return (0u - word) & 0xFFFFu; }
  __host__ __device__ static unsigned high(unsigned word) {
    return (low(word) * 0xFFFFu - word) >> 16;
  }
};

// ----------------------------------------------------------------------------- per thread

// Accumulator of VEC consecutive columns. Packed (bf16 / fp16, VEC even): pairs of columns in
// one register. Loads are VEC-wide vectors (`Vec`).
template <typename T, int VEC, bool PACKED = Traits<T>::kPacked && VEC % 2 == 0>
struct ColumnAcc;

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  T v[VEC];
};

template <typename T, int VEC>
struct ColumnAcc<T, VEC, true> {
  using P = typename Traits<T>::pack_t;
  static constexpr int NP = VEC / 2;
  P mn[NP], mx[NP], low2, high2;
  unsigned clo[NP], chi[NP];  // LaneCounts words since the last flush
  int lo[VEC], hi[VEC];       // flushed counts (< 2^31: the launcher bounds a block's rows)
  float sum[VEC];

  __host__ __device__ void init(T low, T high) {
    low2 = P(low, low);
    high2 = P(high, high);
    const T inf = from_float<T>(INFINITY), ninf = from_float<T>(-INFINITY);
    for (int j = 0; j < NP; ++j) {
      mn[j] = P(inf, inf);
      mx[j] = P(ninf, ninf);
      clo[j] = chi[j] = 0u;
    }
    for (int j = 0; j < VEC; ++j) lo[j] = hi[j] = 0, sum[j] = 0.f;
  }
  // Columns 2j, 2j+1: the two halves of one 32-bit word of the vector (a copy, no instruction).
  __host__ __device__ static P pair(const Vec<T, VEC>& v, int j) {
    P r;
    memcpy(&r, &v.v[2 * j], sizeof(P));
    return r;
  }
  // kUnroll rows of the same columns. Pairwise trees: shorter dependency chains, same count.
  __host__ __device__ void step(const Vec<T, VEC> (&v)[kUnroll]) {
#pragma unroll
    for (int j = 0; j < NP; ++j) {
      const P a = pair(v[0], j), b = pair(v[1], j), c = pair(v[2], j), d = pair(v[3], j);
      // chains of two: sm_90 fuses each pair into one 3-input VHMNMX (2 per 4 rows, not 4)
      mn[j] = __hmin2_nan(__hmin2_nan(mn[j], a), b);
      mn[j] = __hmin2_nan(__hmin2_nan(mn[j], c), d);
      mx[j] = __hmax2_nan(__hmax2_nan(mx[j], a), b);
      mx[j] = __hmax2_nan(__hmax2_nan(mx[j], c), d);
      // ordered compares: NaN lanes count in neither
      clo[j] += (__hlt2_mask(a, low2) + __hlt2_mask(b, low2)) +
                (__hlt2_mask(c, low2) + __hlt2_mask(d, low2));
      chi[j] += (__hgt2_mask(a, high2) + __hgt2_mask(b, high2)) +
                (__hgt2_mask(c, high2) + __hgt2_mask(d, high2));
      const float2 fa = to_float2(a), fb = to_float2(b), fc = to_float2(c), fd = to_float2(d);
      sum[2 * j] += (fa.x + fb.x) + (fc.x + fd.x);
      sum[2 * j + 1] += (fa.y + fb.y) + (fc.y + fd.y);
    }
  }
  __host__ __device__ void step1(const Vec<T, VEC>& v) {
#pragma unroll
    for (int j = 0; j < NP; ++j) {
      const P a = pair(v, j);
      mn[j] = __hmin2_nan(mn[j], a);
      mx[j] = __hmax2_nan(mx[j], a);
      clo[j] += __hlt2_mask(a, low2);
      chi[j] += __hgt2_mask(a, high2);
      const float2 fa = to_float2(a);
      sum[2 * j] += fa.x;
      sum[2 * j + 1] += fa.y;
    }
  }
  __host__ __device__ void flush() {
#pragma unroll
    for (int j = 0; j < NP; ++j) {
      lo[2 * j] += LaneCounts::low(clo[j]);
      lo[2 * j + 1] += LaneCounts::high(clo[j]);
      hi[2 * j] += LaneCounts::low(chi[j]);
      hi[2 * j + 1] += LaneCounts::high(chi[j]);
      clo[j] = chi[j] = 0u;
    }
  }
  __host__ __device__ Stats get(int j) const {
    const float2 a = to_float2(mn[j / 2]), b = to_float2(mx[j / 2]);
    return {lo[j], hi[j], static_cast<double>(sum[j]), j % 2 ? a.y : a.x, j % 2 ? b.y : b.x};
  }
  // bf16 → fp32 is a shift (low lane) or a mask (high lane): one instruction each, where
  // __bfloat1622float2 spends two on the high lane (PRMT + IMAD.U32; 16 more per step of 32).
  __host__ __device__ static float2 to_float2(__nv_bfloat162 p) {
    unsigned w;
    memcpy(&w, &p, sizeof(w));
    return make_float2(bits_to_float(w << 16), bits_to_float(w & 0xFFFF0000u));
  }
  __host__ __device__ static float2 to_float2(__half2 p) { return __half22float2(p); }
};

template <typename T, int VEC>
struct ColumnAcc<T, VEC, false> {
  using acc_t = typename Traits<T>::acc_t;
  using cmp_t = typename Cmp<T>::type;
  float mn[VEC], mx[VEC];
  int lo[VEC], hi[VEC];
  acc_t sum[VEC];
  cmp_t low, high;

  __host__ __device__ void init(T low_, T high_) {
    low = to_cmp(low_);
    high = to_cmp(high_);
    for (int j = 0; j < VEC; ++j) {
      mn[j] = INFINITY, mx[j] = -INFINITY, lo[j] = hi[j] = 0, sum[j] = acc_t(0);
    }
  }
  __host__ __device__ void add(int j, T x) {
    const cmp_t v = to_cmp(x);
    lo[j] += v < low;
    hi[j] += v > high;
    mn[j] = nan_min(mn[j], static_cast<float>(v));
    mx[j] = nan_max(mx[j], static_cast<float>(v));
    sum[j] += static_cast<acc_t>(v);
  }
  __host__ __device__ void step(const Vec<T, VEC> (&v)[kUnroll]) {
#pragma unroll
    for (int r = 0; r < kUnroll; ++r) step1(v[r]);
  }
  __host__ __device__ void step1(const Vec<T, VEC>& v) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) add(j, v.v[j]);
  }
  __host__ __device__ void flush() {}
  __host__ __device__ Stats get(int j) const {
    return {lo[j], hi[j], static_cast<double>(sum[j]), mn[j], mx[j]};
  }
};

// Arguments of both kernels (one signature: one launch site selects the kernel).
template <typename T>
struct Params {
  const T* x;
  long long outer, C, inner;  // x viewed as (outer, C, inner), contiguous
  long long per_split;        // rows of a block; channels: rows o, or values of i (see below)
  long long splits_per_row;   // channels only: 0, or blocks per row o (inner split in spans)
  T low, high;                // exact: x < low ⇔ x < low_double, x > high ⇔ x > high_double
  // workspace: (S, C) partials, then one ticket per tile (zeroed before the launch)
  long long *ws_lo, *ws_hi;
  double* ws_sum;
  float *ws_mn, *ws_mx;
  unsigned* tickets;
  // outputs
  long long *below, *above, *count;
  float *mean, *mn, *mx;
};

// Columns layout (inner == 1): a warp reads 128 contiguous bytes of kRowLanes rows per load.
template <typename T, int VEC>
struct ColLayout {
  static constexpr int kColThreads =
      128 / (VEC * static_cast<int>(sizeof(T))) < 32 ? 128 / (VEC * static_cast<int>(sizeof(T))) : 32;
  static constexpr int kRowLanes = 32 / kColThreads;
  static constexpr int kTileCols = kColThreads * VEC;       // columns of a block
  static constexpr int kRowStride = kRowLanes * kWarps;     // rows between a thread's rows
};

// The rows of split `split` that thread (warp, lane) of tile `tile` owns, into acc (flushed).
// FLUSH: steps between flushes (a parameter so that the host test can exercise the flush).
template <typename T, int VEC, int FLUSH = kFlushSteps>
__host__ __device__ void thread_columns(const Params<T>& p, long long tile, long long split,
                                        int warp, int lane, ColumnAcc<T, VEC>& acc) {
  using L = ColLayout<T, VEC>;
  acc.init(p.low, p.high);
  const long long c0 = tile * L::kTileCols + (lane % L::kColThreads) * VEC;
  if (c0 >= p.C) return;
  const long long r_begin = split * p.per_split;
  const long long r_end = r_begin + p.per_split < p.outer ? r_begin + p.per_split : p.outer;
  long long r = r_begin + warp * L::kRowLanes + lane / L::kColThreads;
  const long long ld = static_cast<long long>(L::kRowStride) * p.C;  // between a thread's rows
  const T* xr = p.x + r * p.C + c0;
  long long full = r + (kUnroll - 1) * L::kRowStride < r_end
                       ? (r_end - r - (kUnroll - 1) * L::kRowStride - 1) / (kUnroll * L::kRowStride) + 1
                       : 0;
  while (full > 0) {
    const int n = full < FLUSH ? static_cast<int>(full) : FLUSH;
    full -= n;
    for (int s = 0; s < n; ++s) {  // the hot loop
      Vec<T, VEC> v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) v[u] = *reinterpret_cast<const Vec<T, VEC>*>(xr + u * ld);
      acc.step(v);
      xr += kUnroll * ld;
    }
    acc.flush();
    r += static_cast<long long>(n) * kUnroll * L::kRowStride;
  }
  for (; r < r_end; r += L::kRowStride, xr += ld) {
    const Vec<T, VEC> v = *reinterpret_cast<const Vec<T, VEC>*>(xr);  // a vector load, then use
    acc.step1(v);
  }
  acc.flush();
}

// Channels layout (inner > 1), block (channel c, split), scalar (not the issue's target shape).
// Either (splits_per_row == 0) the block takes per_split whole rows o of the channel, its threads
// striding over their o·inner + i, or (inner large) each row o is cut into splits_per_row spans
// of per_split values of i. Index arithmetic without 64-bit divisions (a subroutine that
// spilled registers): 32-bit ones of tid or split only.
template <typename T>
__host__ __device__ void thread_channel(const Params<T>& p, long long c, long long split, int tid,
                                        ColumnAcc<T, 1>& acc) {
  acc.init(p.low, p.high);
  if (p.inner <= 0 || p.per_split <= 0) return;  // no values (and no division by 0)
  if (p.splits_per_row == 0) {
    const long long o_end = (split + 1) * p.per_split < p.outer ? (split + 1) * p.per_split : p.outer;
    const bool small = p.inner <= kThreads;  // then kThreads / inner etc. are 32-bit divisions
    const int in = small ? static_cast<int>(p.inner) : 1;
    long long o = split * p.per_split + (small ? tid / in : 0);
    long long i = small ? tid % in : tid;  // < inner
    const long long dq = small ? kThreads / in : 0, dr = small ? kThreads % in : kThreads;
    while (o < o_end) {  // advance (o, i) by kThreads values; dr < inner
      acc.add(0, p.x[(o * p.C + c) * p.inner + i]);
      o += dq;
      i += dr;
      if (i >= p.inner) i -= p.inner, ++o;
    }
  } else {
    const unsigned k = static_cast<unsigned>(p.splits_per_row);  // split, k < 2^16 (the grid)
    const long long o = static_cast<unsigned>(split) / k;
    const long long i0 = (split - o * k) * p.per_split;
    const long long i1 = i0 + p.per_split < p.inner ? i0 + p.per_split : p.inner;
    const T* row = p.x + (o * p.C + c) * p.inner;
    for (long long i = i0 + tid; i < i1; i += kThreads) acc.add(0, row[i]);
  }
}

// The outputs of column c from the statistics of all its values.
template <typename T>
__host__ __device__ void write_outputs(const Params<T>& p, long long c, const Stats& t) {
  p.below[c] = t.lo;
  p.above[c] = t.hi;
  p.mean[c] = static_cast<float>(t.sum / static_cast<double>(p.outer * p.inner));  // 0/0: NaN
  p.mn[c] = t.mn;
  p.mx[c] = t.mx;
}

// ----------------------------------------------------------------------------- per block

#ifdef __CUDACC__

__device__ inline Stats shfl_xor(const Stats& s, int m) {
  return {__shfl_xor_sync(0xffffffffu, s.lo, m), __shfl_xor_sync(0xffffffffu, s.hi, m),
          __shfl_xor_sync(0xffffffffu, s.sum, m), __shfl_xor_sync(0xffffffffu, s.mn, m),
          __shfl_xor_sync(0xffffffffu, s.mx, m)};
}

// sm[t] for t < kThreads: merge the entries of equal t % W (W a power of two dividing kThreads)
// into sm[0..W), in a fixed tree order.
__device__ inline void block_merge(Stats* sm, int W) {
  for (int s = kThreads / 2; s >= W; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) sm[threadIdx.x].merge(sm[threadIdx.x + s]);
    __syncthreads();
  }
}

// Writes the block's partial of column c (split blockIdx.y), then, in the last block of the
// tile, merges the tile's S partials and writes the outputs. `sm` holds kThreads Stats.
template <typename T>
__device__ void finish(const Params<T>& p, Stats* sm, long long tile, int W) {
  __shared__ bool last;
  const unsigned S = gridDim.y;
  __threadfence();  // the partials are visible device-wide before the ticket is taken
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(p.tickets + tile, 1u) == S - 1;
  __syncthreads();
  if (!last) return;
  const int j = threadIdx.x % W;
  const long long c = tile * W + j;
  Stats acc = Stats::identity();
  if (c < p.C) {
    for (unsigned s = threadIdx.x / W; s < S; s += kThreads / W) {
      const long long k = static_cast<long long>(s) * p.C + c;  // L2 reads: written by other SMs
      acc.merge({__ldcg(p.ws_lo + k), __ldcg(p.ws_hi + k), __ldcg(p.ws_sum + k),
                 __ldcg(p.ws_mn + k), __ldcg(p.ws_mx + k)});
    }
  }
  sm[threadIdx.x] = acc;
  __syncthreads();
  block_merge(sm, W);
  if (static_cast<int>(threadIdx.x) < W && c < p.C) write_outputs(p, c, sm[threadIdx.x]);
}

template <typename T>
__device__ inline void store(const Params<T>& p, long long c, const Stats& s) {
  const long long k = static_cast<long long>(blockIdx.y) * p.C + c;
  p.ws_lo[k] = s.lo;
  p.ws_hi[k] = s.hi;
  p.ws_sum[k] = s.sum;
  p.ws_mn[k] = s.mn;
  p.ws_mx[k] = s.mx;
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) columns_kernel(Params<T> p) {
  using L = ColLayout<T, VEC>;
  __shared__ Stats part[kWarps * L::kTileCols];  // per warp and column of the tile
  __shared__ Stats sm[kThreads];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, cx = lane % L::kColThreads;
  const long long tile = blockIdx.x;
  if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) *p.count = p.outer * p.inner;
  ColumnAcc<T, VEC> acc;
  thread_columns<T, VEC>(p, tile, blockIdx.y, warp, lane, acc);
  // The kRowLanes row lanes of a column sit in one warp (shuffles), the warps meet in `part`.
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    Stats s = acc.get(j);
#pragma unroll
    for (int m = L::kColThreads; m < 32; m <<= 1) s.merge(shfl_xor(s, m));
    if (lane < L::kColThreads) part[warp * L::kTileCols + cx * VEC + j] = s;
  }
  __syncthreads();
  if (static_cast<int>(threadIdx.x) < L::kTileCols) {
    const long long c = tile * L::kTileCols + threadIdx.x;
    if (c < p.C) {
      Stats s = part[threadIdx.x];
#pragma unroll
      for (int w = 1; w < kWarps; ++w) s.merge(part[w * L::kTileCols + threadIdx.x]);
      store(p, c, s);
    }
  }
  finish(p, sm, tile, L::kTileCols);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) channels_kernel(Params<T> p) {
  __shared__ Stats sm[kThreads];
  const long long c = blockIdx.x;
  if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) *p.count = p.outer * p.inner;
  ColumnAcc<T, 1> acc;
  thread_channel(p, c, blockIdx.y, threadIdx.x, acc);
  sm[threadIdx.x] = acc.get(0);
  __syncthreads();
  block_merge(sm, 1);
  if (threadIdx.x == 0) store(p, c, sm[0]);
  __syncthreads();
  finish(p, sm, c, 1);
}

#endif  // __CUDACC__

}  // namespace extrema
}  // namespace morpho
