// CPU kernels of sparse_linear on a CSR-by-destination edge list.
//
// The token dimension is made contiguous (xᵀ: (K, T)) so that every edge is one vectorised
// axpy over a tile of tokens, acc[tile] += v[e] · xᵀ[col[e], tile], with the tile's
// accumulators in registers, stored into yᵀ (N, T) at the end of the row: work ∝ edges × tokens, no gathers inside the SIMD loop. The
// backward dx is the same kernel on the transposed edge list (built once per structure in
// Python); dvalues[e] = ⟨dyᵀ[dst_e], xᵀ[col[e]]⟩ is one contiguous dot per edge.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "../graph.h"

namespace morpho {
namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MORPHO_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MORPHO_CLONES
#endif

// 64 fp32 accumulators = 4 AVX-512 / 8 AVX2 registers; the (K × 64) slice of xᵀ a tile reads
// is 1 MiB at K = 4096, about one core's L2.
constexpr int64_t kTile = 64;

template <typename acc_t, typename scalar_t, int64_t TN>
inline void row_tile(const scalar_t* __restrict xt, int64_t T, int64_t e0, int64_t e1,
                     const int64_t* __restrict col, const scalar_t* __restrict v, acc_t init,
                     acc_t* __restrict acc, int64_t tn) {
  const int64_t n = TN > 0 ? TN : tn;
  for (int64_t j = 0; j < n; ++j) acc[j] = init;
  for (int64_t e = e0; e < e1; ++e) {
    const acc_t w = static_cast<acc_t>(v[e]);
    const scalar_t* __restrict xr = xt + col[e] * T;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) acc[j] += w * static_cast<acc_t>(xr[j]);
  }
}

// 16 floats as a GCC vector: one zmm in the AVX-512 clone, two ymm in the AVX2 clone. Four of
// them (64 tokens) are the accumulators of a full tile, kept in registers: with a plain array
// and `omp simd` GCC kept them on the stack (load-FMA-store per edge) and the kernel ran 8x
// slower (26 ms instead of ~3 ms at 4096x4096, 1%, 256 tokens, 2 cores).
typedef float v16f __attribute__((vector_size(64)));

inline v16f load16(const float* p) {
  v16f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// NV·16 tokens of one row with the accumulators in registers (NV <= 3: the ragged tile).
template <int NV>
__attribute__((always_inline)) inline void row_vectors(const float* xt, int64_t rs, int64_t e0,
                                                       int64_t e1, const int64_t* col,
                                                       const float* v, float init, float* out) {
  v16f a[NV];
  for (int k = 0; k < NV; ++k) a[k] = v16f{} + init;
  for (int64_t e = e0; e < e1; ++e) {
    const float w = v[e];
    const float* xr = xt + col[e] * rs;
    for (int k = 0; k < NV; ++k) a[k] += w * load16(xr + 16 * k);
  }
  for (int k = 0; k < NV; ++k) std::memcpy(out + 16 * k, &a[k], sizeof(v16f));
}

// xᵀ is (K, T) (row stride T, tile stride kTile) or tile-major (T / kTile, K, kTile) (row
// stride kTile, tile stride K·kTile); the latter keeps a tile's slice of xᵀ contiguous.
MORPHO_CLONES void rows_f32(const float* xt, int64_t T, int64_t rs, int64_t ts, const int64_t* rp,
                            const int64_t* col, const float* v, const float* bias, float* yt,
                            int64_t r0, int64_t r1) {
  int64_t t0 = 0;
  for (; t0 + kTile <= T; t0 += kTile) {
    const float* xtile = xt + (t0 / kTile) * ts;
    for (int64_t r = r0; r < r1; ++r) {
      const float init = bias ? bias[r] : 0.0f;
      v16f a0 = {}, a1 = {}, a2 = {}, a3 = {};
      a0 += init;
      a1 += init;
      a2 += init;
      a3 += init;
      for (int64_t e = rp[r]; e < rp[r + 1]; ++e) {
        const float w = v[e];
        const float* xr = xtile + col[e] * rs;
        a0 += w * load16(xr);
        a1 += w * load16(xr + 16);
        a2 += w * load16(xr + 32);
        a3 += w * load16(xr + 48);
      }
      float* out = yt + r * T + t0;
      std::memcpy(out, &a0, sizeof(a0));
      std::memcpy(out + 16, &a1, sizeof(a1));
      std::memcpy(out + 32, &a2, sizeof(a2));
      std::memcpy(out + 48, &a3, sizeof(a3));
    }
  }
  if (t0 == T) return;
  // Ragged last tile (the (K, T) layout only): 16-token vectors in registers, then scalars.
  const int64_t tn = T - t0, nv = tn / 16, rest = tn - nv * 16;
  alignas(64) float acc[16];
  for (int64_t r = r0; r < r1; ++r) {
    const float init = bias ? bias[r] : 0.0f;
    float* out = yt + r * T + t0;
    switch (nv) {
      case 3: row_vectors<3>(xt + t0, rs, rp[r], rp[r + 1], col, v, init, out); break;
      case 2: row_vectors<2>(xt + t0, rs, rp[r], rp[r + 1], col, v, init, out); break;
      case 1: row_vectors<1>(xt + t0, rs, rp[r], rp[r + 1], col, v, init, out); break;
      default: break;
    }
    if (rest) {
      row_tile<float, float, 0>(xt + t0 + nv * 16, rs, rp[r], rp[r + 1], col, v, init, acc, rest);
      std::memcpy(out + nv * 16, acc, rest * sizeof(float));
    }
  }
}

template <typename scalar_t>
void rows_generic(const scalar_t* xt, int64_t T, int64_t rs, int64_t ts, const int64_t* rp,
                  const int64_t* col,
                  const scalar_t* v, const scalar_t* bias, scalar_t* yt, int64_t r0, int64_t r1) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t acc[kTile];
  for (int64_t t0 = 0; t0 < T; t0 += kTile) {
    const int64_t tn = std::min(kTile, T - t0);
    for (int64_t r = r0; r < r1; ++r) {
      const acc_t init = bias ? static_cast<acc_t>(bias[r]) : acc_t(0);
      const scalar_t* xtile = xt + (t0 / kTile) * ts;
      row_tile<acc_t, scalar_t, 0>(xtile, rs, rp[r], rp[r + 1], col, v, init, acc, tn);
      for (int64_t j = 0; j < tn; ++j) yt[r * T + t0 + j] = static_cast<scalar_t>(acc[j]);
    }
  }
}

MORPHO_CLONES float dot_f32(const float* __restrict a, const float* __restrict b, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += a[j] * b[j];
  return s;
}

template <typename scalar_t>
at::opmath_type<scalar_t> dot_generic(const scalar_t* a, const scalar_t* b, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += static_cast<acc_t>(a[j]) * static_cast<acc_t>(b[j]);
  return s;
}

template <typename scalar_t>
void forward_rows(const scalar_t* xp, int64_t T, int64_t rs, int64_t ts, const int64_t* rp,
                  const int64_t* cp,
                  const scalar_t* vp, const scalar_t* bp, scalar_t* yp, int64_t r0, int64_t r1) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    rows_f32(xp, T, rs, ts, rp, cp, vp, bp, yp, r0, r1);
  } else {
    rows_generic<scalar_t>(xp, T, rs, ts, rp, cp, vp, bp, yp, r0, r1);
  }
}

template <typename scalar_t>
void dvalues_rows(const scalar_t* gp, const scalar_t* xp, int64_t T, const int64_t* rp,
                  const int64_t* cp, scalar_t* dp, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t e = rp[r]; e < rp[r + 1]; ++e) {
      if constexpr (std::is_same_v<scalar_t, float>) {
        dp[e] = dot_f32(gp + r * T, xp + cp[e] * T, T);
      } else {
        dp[e] = static_cast<scalar_t>(dot_generic(gp + r * T, xp + cp[e] * T, T));
      }
    }
  }
}

int64_t row_grain(int64_t n_rows, int64_t nnz, int64_t T) {
  // ~64k multiply-adds per task at least, so thread start-up is amortised.
  const int64_t per_row = std::max<int64_t>(1, (nnz / std::max<int64_t>(n_rows, 1)) * T);
  return std::max<int64_t>(1, 65536 / per_row);
}

}  // namespace

at::Tensor sparse_linear_t_cpu(const at::Tensor& xt_in, const at::Tensor& row_ptr_in,
                               const at::Tensor& col_in, const at::Tensor& values_in,
                               const c10::optional<at::Tensor>& bias_in) {
  check_sparse_linear_args(xt_in, row_ptr_in, col_in, values_in, bias_in, at::kCPU);
  auto xt = xt_in.contiguous(), row_ptr = row_ptr_in.contiguous(), col = col_in.contiguous();
  auto values = values_in.contiguous();
  at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  const int64_t N = row_ptr.numel() - 1;
  const bool tiled = xt.dim() == 3;
  const int64_t T = tiled ? xt.size(0) * kTile : xt.size(1);
  const int64_t rs = tiled ? kTile : T, ts = tiled ? xt.size(1) * kTile : kTile;
  auto yt = at::empty({N, T}, xt.options());
  if (N == 0 || T == 0) return yt;
  const int64_t* rp = row_ptr.const_data_ptr<int64_t>();
  const int64_t* cp = col.const_data_ptr<int64_t>();
  MORPHO_CHECK(rp[0] == 0 && rp[N] <= col.numel(), "morpho: row_ptr must run from 0 to nnz <= ",
              col.numel());
  const int64_t grain = row_grain(N, rp[N], T);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xt.scalar_type(), "sparse_linear", [&] {
    const scalar_t* xp = xt.const_data_ptr<scalar_t>();
    const scalar_t* vp = values.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = yt.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N, grain, [&](int64_t r0, int64_t r1) {
      forward_rows<scalar_t>(xp, T, rs, ts, rp, cp, vp, bp, yp, r0, r1);
    });
  });
  return yt;
}

at::Tensor sparse_linear_dvalues_cpu(const at::Tensor& dyt_in, const at::Tensor& xt_in,
                                     const at::Tensor& row_ptr_in, const at::Tensor& col_in) {
  MORPHO_CHECK(dyt_in.dim() == 2 && xt_in.dim() == 2 && dyt_in.size(1) == xt_in.size(1),
              "morpho: dyt (N, T) and xt (K, T) must be 2-D with the same token count");
  MORPHO_CHECK(dyt_in.scalar_type() == xt_in.scalar_type(), "morpho: dyt and xt dtypes differ");
  MORPHO_CHECK(dyt_in.device().is_cpu() && xt_in.device().is_cpu() && row_ptr_in.device().is_cpu() &&
              col_in.device().is_cpu(), "morpho: sparse_linear_dvalues tensors must be on CPU");
  MORPHO_CHECK(row_ptr_in.numel() == dyt_in.size(0) + 1 && row_ptr_in.scalar_type() == at::kLong &&
              col_in.scalar_type() == at::kLong, "morpho: row_ptr must be int64 with N + 1 "
              "entries and col int64");
  auto dyt = dyt_in.contiguous(), xt = xt_in.contiguous();
  auto row_ptr = row_ptr_in.contiguous(), col = col_in.contiguous();
  const int64_t N = dyt.size(0), T = dyt.size(1);
  auto dv = at::zeros({col.numel()}, dyt.options());
  if (N == 0) return dv;
  const int64_t* rp = row_ptr.const_data_ptr<int64_t>();
  const int64_t* cp = col.const_data_ptr<int64_t>();
  MORPHO_CHECK(rp[0] == 0 && rp[N] <= col.numel(), "morpho: row_ptr must run from 0 to nnz <= ",
              col.numel());
  const int64_t grain = row_grain(N, rp[N], T);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dyt.scalar_type(),
                                  "sparse_linear_dvalues", [&] {
    const scalar_t* gp = dyt.const_data_ptr<scalar_t>();
    const scalar_t* xp = xt.const_data_ptr<scalar_t>();
    scalar_t* dp = dv.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N, grain, [&](int64_t r0, int64_t r1) {
      dvalues_rows<scalar_t>(gp, xp, T, rp, cp, dp, r0, r1);
    });
  });
  return dv;
}

}  // namespace morpho
