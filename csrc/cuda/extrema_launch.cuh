// extrema_stats on CUDA (issue 22, item 5), host side: exact thresholds, the grid (column tiles ×
// row splits, sized to the resident blocks: SM count × occupancy), the workspace and the one
// launch of a call. Kernels: extrema_kernels.cuh. Only CUDA headers (see there).
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>

#include "extrema_kernels.cuh"

namespace morpho {
namespace extrema {

// Thresholds as T values that compare exactly like the doubles: x < low ⇔ x < ceil_T(low) and
// x > high ⇔ x > floor_T(high) for every T value x (±inf included).
inline float ceil_float(double v) {
  float f = static_cast<float>(v);
  return static_cast<double>(f) < v ? std::nextafter(f, INFINITY) : f;
}
inline float floor_float(double v) {
  float f = static_cast<float>(v);
  return static_cast<double>(f) > v ? std::nextafter(f, -INFINITY) : f;
}
template <typename T> inline T ceil_to(double v);
template <typename T> inline T floor_to(double v);
template <> inline double ceil_to(double v) { return v; }
template <> inline double floor_to(double v) { return v; }
template <> inline float ceil_to(double v) { return ceil_float(v); }
template <> inline float floor_to(double v) { return floor_float(v); }
template <> inline __nv_bfloat16 ceil_to(double v) { return __float2bfloat16_ru(ceil_float(v)); }
template <> inline __nv_bfloat16 floor_to(double v) { return __float2bfloat16_rd(floor_float(v)); }
template <> inline __half ceil_to(double v) { return __float2half_ru(ceil_float(v)); }
template <> inline __half floor_to(double v) { return __float2half_rd(floor_float(v)); }

// The launch decided on the host: which kernel, its grid, the split and the workspace size.
struct Plan {
  int vec;                 // columns per thread (inner == 1), 0 for the channels kernel
  long long tiles, S;      // grid (tiles, S)
  long long per_split;     // rows (columns) / rows o or a span of i (channels) per block
  long long splits_per_row;  // channels: 0 (blocks take whole rows o) or spans per row o
  size_t ws_bytes;         // workspace: (S, C) partials + one ticket per tile
  const char* error;       // non-null: cannot launch (message)
};

inline long long ceil_div(long long a, long long b) { return (a + b - 1) / b; }
inline size_t align16(size_t n) { return (n + 15) / 16 * 16; }
inline size_t partials_bytes(long long S, long long C) { return align16(S * C * 32); }

template <typename T, int VEC>
inline void plan_columns(Plan& pl, long long outer, long long C, long long resident) {
  using L = ColLayout<T, VEC>;
  pl.vec = VEC;
  pl.tiles = C > 0 ? ceil_div(C, L::kTileCols) : 1;
  // splits: enough blocks to fill the machine, each thread ≥ 4 steps of kUnroll rows
  const long long by_rows = ceil_div(outer, static_cast<long long>(L::kRowStride) * kUnroll * 4);
  long long S = resident / pl.tiles;  // floor: one wave of resident blocks
  S = S < by_rows ? S : by_rows;
  S = S < 65535 ? S : 65535;
  S = S > 1 ? S : 1;
  pl.per_split = outer > 0 ? ceil_div(outer, S) : 0;
  pl.S = outer > 0 ? ceil_div(outer, pl.per_split) : 1;
  if (pl.per_split >= 2147483647LL) pl.error = "too many rows per block for 32-bit counts";
}

// Plan for x (outer, C, inner) at address `ptr`; `resident`: blocks resident at once.
template <typename T>
Plan plan(const void* ptr, long long outer, long long C, long long inner, long long resident) {
  Plan pl{0, 1, 1, 0, 0, 0, nullptr};
  constexpr int kMaxVec = 16 / sizeof(T);  // 16-byte loads
  const uintptr_t a = reinterpret_cast<uintptr_t>(ptr);
  if (inner == 1) {
    if (C % kMaxVec == 0 && a % 16 == 0) {
      plan_columns<T, kMaxVec>(pl, outer, C, resident);
    } else if (Traits<T>::kPacked && C % 2 == 0 && a % (2 * sizeof(T)) == 0) {
      plan_columns<T, 2>(pl, outer, C, resident);
    } else {
      plan_columns<T, 1>(pl, outer, C, resident);
    }
  } else {
    const long long n = outer * inner;
    pl.tiles = C > 0 ? C : 1;
    long long S = resident / pl.tiles, by_n = ceil_div(n, kThreads * 4);
    S = S < by_n ? S : by_n;
    S = S < 32767 ? S : 32767;  // with the row spans below, at most 2 S blocks: < 65536
    S = S > 1 ? S : 1;
    const long long target = n > 0 ? ceil_div(n, S) : 0;  // values per block
    if (inner <= target || n == 0) {  // whole rows o per block
      pl.per_split = n > 0 ? ceil_div(target, inner) : 0;
      pl.S = n > 0 ? ceil_div(outer, pl.per_split) : 1;
      if (pl.per_split * inner >= 2147483647LL) pl.error = "too many values per block for 32-bit counts";
    } else {  // outer < S here: rows cut into k spans, S = outer·k ≤ 2 S
      const long long k = ceil_div(inner, target);
      pl.per_split = ceil_div(inner, k);
      pl.splits_per_row = k;
      pl.S = outer * k;
      if (pl.per_split >= 2147483647LL) pl.error = "too many values per block for 32-bit counts";
    }
    if (C > 2147483647LL) pl.error = "at most 2^31 - 1 channels";
  }
  pl.ws_bytes = partials_bytes(pl.S, C) + align16(pl.tiles * sizeof(unsigned));
  return pl;
}

// The kernels' arguments but for workspace and outputs.
template <typename T>
Params<T> make_params(const Plan& pl, const T* x, long long outer, long long C, long long inner,
                      double low, double high) {
  Params<T> p{};
  p.x = x;
  p.outer = outer, p.C = C, p.inner = inner;
  p.per_split = pl.per_split, p.splits_per_row = pl.splits_per_row;
  p.low = ceil_to<T>(low);
  p.high = floor_to<T>(high);
  return p;
}

#ifdef __CUDACC__

template <typename T>
using Kernel = void (*)(Params<T>);

template <typename T>
Kernel<T> kernel_for(int vec) {
  constexpr int kMaxVec = 16 / sizeof(T);
  if (vec == kMaxVec) return columns_kernel<T, kMaxVec>;
  if constexpr (Traits<T>::kPacked) {
    if (vec == 2) return columns_kernel<T, 2>;
  }
  if (vec == 1) return columns_kernel<T, 1>;
  return channels_kernel<T>;
}

// Blocks of the kernel for `vec` (0: channels) resident at once on the current device: SM count
// × occupancy, the occupancy asked once per kernel and device.
template <typename T>
long long resident_blocks(int vec) {
  constexpr int kMaxDevices = 64;
  static int per_sm_cache[kMaxDevices][4];  // [device][kernel: channels, vec 1, 2, max]; 0: unknown
  const int slot = vec == 0 ? 0 : vec == 1 ? 1 : vec == 2 ? 2 : 3;
  int dev = 0, sms = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  int per_sm = dev < kMaxDevices ? per_sm_cache[dev][slot] : 0;
  if (per_sm == 0) {
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel_for<T>(vec), kThreads, 0);
    per_sm = per_sm > 0 ? per_sm : 1;
    if (dev < kMaxDevices) per_sm_cache[dev][slot] = per_sm;
  }
  return static_cast<long long>(sms) * per_sm;
}

// The plan for this device (the split needs the occupancy of the kernel the shape selects).
template <typename T>
Plan plan_for_device(const T* x, long long outer, long long C, long long inner) {
  const Plan probe = plan<T>(x, outer, C, inner, 1);
  return plan<T>(x, outer, C, inner, resident_blocks<T>(inner == 1 ? probe.vec : 0));
}

// The one launch of a call: zero the tickets (a memset, no kernel), then the kernel.
// ws: pl.ws_bytes of device memory, 16-byte aligned. Outputs: below, above (int64, C),
// mean, mn, mx (fp32, C), count (int64, 0-dim).
template <typename T>
cudaError_t launch(const Plan& pl, const T* x, long long outer, long long C, long long inner,
                   double low, double high, void* ws, long long* below, long long* above,
                   float* mean, float* mn, float* mx, long long* count, cudaStream_t stream) {
  Params<T> p = make_params(pl, x, outer, C, inner, low, high);
  char* w = static_cast<char*>(ws);
  const long long n = pl.S * C;
  p.ws_lo = reinterpret_cast<long long*>(w);
  p.ws_hi = p.ws_lo + n;
  p.ws_sum = reinterpret_cast<double*>(p.ws_hi + n);
  p.ws_mn = reinterpret_cast<float*>(p.ws_sum + n);
  p.ws_mx = p.ws_mn + n;
  p.tickets = reinterpret_cast<unsigned*>(w + partials_bytes(pl.S, C));
  p.below = below, p.above = above, p.count = count, p.mean = mean, p.mn = mn, p.mx = mx;
  cudaError_t e = cudaMemsetAsync(p.tickets, 0, pl.tiles * sizeof(unsigned), stream);
  if (e != cudaSuccess) return e;
  const Kernel<T> k = kernel_for<T>(inner == 1 ? pl.vec : 0);
  k<<<dim3(static_cast<unsigned>(pl.tiles), static_cast<unsigned>(pl.S)), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

#endif  // __CUDACC__

}  // namespace extrema
}  // namespace morpho
