// CPU kernel of extrema_stats: one pass over the activations giving, per channel, the counts
// below `low` / above `high`, the sum (for the mean), min and max. The five-pass PyTorch version
// reads the tensor five times and writes two boolean temporaries of its size.
//
// Layout (outer, C, inner): inner == 1 is the common (tokens, features) case, reduced down the
// columns with per-thread partial rows; inner > 1 (N, C, H·W) reduces each contiguous (o, c)
// run with local accumulators. Partials: one set of C-wide arrays per thread, summed at the end.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "../graph.h"

namespace morpho {
namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MORPHO_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MORPHO_CLONES
#endif

constexpr int64_t kColChunk = 1024;  // partials of 1024 columns (~28 KiB) stay in L1/L2

struct Partials {  // one thread's C-wide partial statistics
  std::vector<int64_t> lo, hi;
  std::vector<double> sum;
  std::vector<float> mn, mx;
  explicit Partials(int64_t c)
      : lo(c, 0), hi(c, 0), sum(c, 0.0), mn(c, std::numeric_limits<float>::infinity()),
        mx(c, -std::numeric_limits<float>::infinity()) {}
};

// NaN-propagating min / max as selects (vectorisable; std::fmin would drop NaNs).
template <typename T>
inline T nan_min(T acc, T v) { return (v < acc || v != v) ? v : acc; }
template <typename T>
inline T nan_max(T acc, T v) { return (v > acc || v != v) ? v : acc; }

// Rows [r0, r1) of a (R, C) fp32 matrix into partials, column chunk by column chunk.
MORPHO_CLONES void columns_f32(const float* __restrict x, int64_t C, int64_t r0, int64_t r1,
                               float low, float high, int64_t* __restrict lo,
                               int64_t* __restrict hi, double* __restrict sum,
                               float* __restrict mn, float* __restrict mx) {
  for (int64_t c0 = 0; c0 < C; c0 += kColChunk) {
    const int64_t cn = std::min(kColChunk, C - c0);
    for (int64_t r = r0; r < r1; ++r) {
      const float* __restrict xr = x + r * C + c0;
#pragma omp simd
      for (int64_t j = 0; j < cn; ++j) {
        const float v = xr[j];
        lo[c0 + j] += v < low ? 1 : 0;
        hi[c0 + j] += v > high ? 1 : 0;
        sum[c0 + j] += static_cast<double>(v);
        mn[c0 + j] = nan_min(mn[c0 + j], v);
        mx[c0 + j] = nan_max(mx[c0 + j], v);
      }
    }
  }
}

// Thresholds in the comparison type T such that, for any value v of T, v < low_t ⟺ v < low and
// v > high_t ⟺ v > high exactly (low rounded up, high rounded down), as the float64 truth says.
template <typename T>
std::pair<T, T> exact_thresholds(double low, double high) {
  T lo = static_cast<T>(low), hi = static_cast<T>(high);
  if (static_cast<double>(lo) < low) lo = std::nextafter(lo, std::numeric_limits<T>::infinity());
  if (static_cast<double>(hi) > high) hi = std::nextafter(hi, -std::numeric_limits<T>::infinity());
  return {lo, hi};
}

template <typename scalar_t, typename opmath_t = at::opmath_type<scalar_t>>
void columns_generic(const scalar_t* x, int64_t C, int64_t r0, int64_t r1, opmath_t low,
                     opmath_t high, Partials& p) {
  for (int64_t c0 = 0; c0 < C; c0 += kColChunk) {
    const int64_t cn = std::min(kColChunk, C - c0);
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* xr = x + r * C + c0;
#pragma omp simd
      for (int64_t j = 0; j < cn; ++j) {
        const auto vo = static_cast<at::opmath_type<scalar_t>>(xr[j]);
        const float v = static_cast<float>(vo);
        p.lo[c0 + j] += vo < low ? 1 : 0;
        p.hi[c0 + j] += vo > high ? 1 : 0;
        p.sum[c0 + j] += static_cast<double>(vo);
        p.mn[c0 + j] = nan_min(p.mn[c0 + j], v);
        p.mx[c0 + j] = nan_max(p.mx[c0 + j], v);
      }
    }
  }
}

// One contiguous run of `n` elements of channel c (the N×C×H×W case).
template <typename scalar_t, typename opmath_t = at::opmath_type<scalar_t>>
void run_into(const scalar_t* xr, int64_t n, int64_t c, opmath_t low, opmath_t high, Partials& p) {
  int64_t lo = 0, hi = 0, nan = 0;
  double s = 0.0;
  float mn = std::numeric_limits<float>::infinity(), mx = -mn;
#pragma omp simd reduction(+ : lo, hi, nan, s) reduction(min : mn) reduction(max : mx)
  for (int64_t i = 0; i < n; ++i) {
    const auto vo = static_cast<at::opmath_type<scalar_t>>(xr[i]);
    const float v = static_cast<float>(vo);
    lo += vo < low ? 1 : 0;
    hi += vo > high ? 1 : 0;
    nan += v != v ? 1 : 0;
    s += static_cast<double>(vo);
    mn = v < mn ? v : mn;
    mx = v > mx ? v : mx;
  }
  if (nan) mn = mx = std::numeric_limits<float>::quiet_NaN();
  p.lo[c] += lo;
  p.hi[c] += hi;
  p.sum[c] += s;
  p.mn[c] = nan_min(p.mn[c], mn);
  p.mx[c] = nan_max(p.mx[c], mx);
}

template <typename scalar_t>
void reduce(const scalar_t* x, int64_t outer, int64_t C, int64_t inner, double low_d,
            double high_d, std::vector<Partials>& parts) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto [low, high] = exact_thresholds<opmath_t>(low_d, high_d);
  if (inner == 1) {
    // Rows split across threads; ≥ 64 rows per task so each thread streams a long range.
    at::parallel_for(0, outer, 64, [&](int64_t r0, int64_t r1) {
      Partials& p = parts[at::get_thread_num()];
      if constexpr (std::is_same_v<scalar_t, float>) {
        columns_f32(x, C, r0, r1, low, high, p.lo.data(), p.hi.data(), p.sum.data(), p.mn.data(),
                    p.mx.data());
      } else {
        columns_generic<scalar_t>(x, C, r0, r1, low, high, p);
      }
    });
    return;
  }
  const int64_t grain = std::max<int64_t>(1, 32768 / inner);
  at::parallel_for(0, outer * C, grain, [&](int64_t b, int64_t e) {
    Partials& p = parts[at::get_thread_num()];
    for (int64_t oc = b; oc < e; ++oc) {
      run_into<scalar_t>(x + oc * inner, inner, oc % C, low, high, p);
    }
  });
}

}  // namespace

ExtremaOut extrema_stats_cpu(const at::Tensor& x_in, double low, double high) {
  check_extrema_args(x_in, low, high, at::kCPU);
  auto x = x_in.contiguous();
  const int64_t outer = x.size(0), C = x.size(1), inner = x.size(2);
  std::vector<Partials> parts;
  parts.reserve(at::get_num_threads());
  for (int i = 0; i < at::get_num_threads(); ++i) parts.emplace_back(C);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "extrema_stats", [&] {
    reduce<scalar_t>(x.const_data_ptr<scalar_t>(), outer, C, inner, low, high, parts);
  });
  auto i64 = at::TensorOptions().dtype(at::kLong);
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  auto below = at::empty({C}, i64), above = at::empty({C}, i64);
  auto mean = at::empty({C}, f32), mn = at::empty({C}, f32), mx = at::empty({C}, f32);
  const int64_t count = outer * inner;
  int64_t* bp = below.mutable_data_ptr<int64_t>();
  int64_t* ap = above.mutable_data_ptr<int64_t>();
  float *mp = mean.mutable_data_ptr<float>(), *np = mn.mutable_data_ptr<float>(),
        *xp = mx.mutable_data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    int64_t lo = 0, hi = 0;
    double s = 0.0;
    float a = std::numeric_limits<float>::infinity(), b = -a;
    for (const Partials& p : parts) {
      lo += p.lo[c];
      hi += p.hi[c];
      s += p.sum[c];
      a = nan_min(a, p.mn[c]);
      b = nan_max(b, p.mx[c]);
    }
    bp[c] = lo;
    ap[c] = hi;
    mp[c] = count ? static_cast<float>(s / static_cast<double>(count))
                  : std::numeric_limits<float>::quiet_NaN();
    np[c] = a;
    xp[c] = b;
  }
  return {below, above, mean, mn, mx, at::scalar_tensor(count, i64)};
}

}  // namespace morpho
