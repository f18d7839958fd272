// CPU kernels of block_sparse_linear: register-blocked micro-kernels over live blocks only.
//
// bs_dsd: each task owns one output block (B columns of C) and a range of rows; a TM × NB
// accumulator (256 floats: 16 AVX-512 registers; NB = B, or panels of 32 columns for B = 128)
// sums A-row × vmat-block products over the block's slots, reading A in place (no gather
// copies). Tasks run row-range-major, so a thread's rows of A stay in its L2 across the output
// blocks. bs_sdd: each task owns slots; a TI × NB accumulator sums dYᵀ-column × X-row products
// over all tokens. Threads: at::parallel_for, which needs the extension compiled with -fopenmp
// (setup.py); without it every loop here runs on one thread. fp32 bodies are compiled for
// AVX-512, AVX2 and baseline x86-64 (function multi-versioning, as in masked_weight.cpp);
// double runs the same template without clones. fp16/bf16 are upcast by the Python caller.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../block_sparse.h"
#include "../morpho.h"

namespace morpho {
namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MORPHO_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MORPHO_CLONES
#endif
#define MORPHO_INLINE inline __attribute__((always_inline))

// Rows per tile so that the accumulator holds 256 values whatever the block size.
template <int B>
constexpr int tile_rows() {
  return 256 / B;
}

struct DsdArgs {
  const void* a;
  int64_t lda;
  const void* vmat;
  const int32_t* ptr;
  const int32_t* order;
  const int32_t* idx;
  const void* bias;  // nullptr when absent
  void* c;
  int64_t ldc;
};

// C[m0 : m0+TM, pb·B + o0 : +NB]: one panel of NB output columns of output block pb.
template <typename T, int B, int NB, int TM>
MORPHO_INLINE void dsd_tile(const DsdArgs& p, int64_t pb, int64_t m0, int o0) {
  const T* a = static_cast<const T*>(p.a);
  const T* vmat = static_cast<const T*>(p.vmat);
  T acc[TM][NB];
  const T* bias = static_cast<const T*>(p.bias);
  for (int t = 0; t < TM; ++t)
    for (int o = 0; o < NB; ++o) acc[t][o] = bias ? bias[pb * B + o0 + o] : T(0);
  const int32_t start = p.ptr[pb], end = p.ptr[pb + 1];
  for (int32_t j = start; j < end; ++j) {
    const int64_t s = p.order[j];
    const T* v = vmat + s * B * B + o0;
    const T* ap = a + m0 * p.lda + static_cast<int64_t>(p.idx[s]) * B;
    for (int r = 0; r < B; ++r) {
      const T* vr = v + r * B;
#pragma GCC unroll 16
      for (int t = 0; t < TM; ++t) {
        const T av = ap[t * p.lda + r];
#pragma omp simd
        for (int o = 0; o < NB; ++o) acc[t][o] += av * vr[o];
      }
    }
  }
  T* c = static_cast<T*>(p.c) + m0 * p.ldc + pb * B + o0;
  for (int t = 0; t < TM; ++t)
    for (int o = 0; o < NB; ++o) c[t * p.ldc + o] = acc[t][o];
}

// Output columns per panel: whole blocks up to 64; 128-blocks in panels of 32, so that the
// panel of vmat a tile streams (B × NB) stays in L1 across the row tiles.
template <int B>
constexpr int panel_cols() {
  return B > 64 ? 32 : B;
}

// Rows [m_begin, m_end) of output block pb: per panel, full tiles, then single rows.
template <typename T, int B>
MORPHO_INLINE void dsd_rows(const DsdArgs& p, int64_t pb, int64_t m_begin, int64_t m_end) {
  constexpr int NB = panel_cols<B>();
  constexpr int TM = tile_rows<NB>();
  for (int o0 = 0; o0 < B; o0 += NB) {
    int64_t m = m_begin;
    for (; m + TM <= m_end; m += TM) dsd_tile<T, B, NB, TM>(p, pb, m, o0);
    for (; m < m_end; ++m) dsd_tile<T, B, NB, 1>(p, pb, m, o0);
  }
}

struct SddArgs {
  const void* dy;
  int64_t lddy;
  const void* x;
  int64_t ldx;
  const int32_t* rows;
  const int32_t* cols;
  void* dv;
  int64_t m;
};

// dV[s][i0 : i0+TI][j0 : j0+NB] = Σ_m dY[m, r·B + i] X[m, c·B + j]
template <typename T, int B, int TI, int NB>
MORPHO_INLINE void sdd_tile(const SddArgs& p, int64_t s, int i0, int j0) {
  const T* dy = static_cast<const T*>(p.dy) + static_cast<int64_t>(p.rows[s]) * B + i0;
  const T* x = static_cast<const T*>(p.x) + static_cast<int64_t>(p.cols[s]) * B + j0;
  T acc[TI][NB] = {};
  for (int64_t m = 0; m < p.m; ++m) {
    const T* dym = dy + m * p.lddy;
    const T* xm = x + m * p.ldx;
#pragma GCC unroll 16
    for (int t = 0; t < TI; ++t) {
      const T d = dym[t];
#pragma omp simd
      for (int j = 0; j < NB; ++j) acc[t][j] += d * xm[j];
    }
  }
  T* out = static_cast<T*>(p.dv) + s * B * B + static_cast<int64_t>(i0) * B + j0;
  for (int t = 0; t < TI; ++t)
    for (int j = 0; j < NB; ++j) out[t * B + j] = acc[t][j];
}

template <typename T, int B>
MORPHO_INLINE void sdd_slots(const SddArgs& p, int64_t s_begin, int64_t s_end) {
  constexpr int NB = panel_cols<B>();
  constexpr int TI = tile_rows<NB>() < B ? tile_rows<NB>() : B;
  for (int64_t s = s_begin; s < s_end; ++s)
    for (int j0 = 0; j0 < B; j0 += NB)
      for (int i0 = 0; i0 < B; i0 += TI) sdd_tile<T, B, TI, NB>(p, s, i0, j0);
}

// fp32 entry points, one per block size, each multi-versioned for the host CPU.
#define MORPHO_BS_F32(B)                                                                   \
  MORPHO_CLONES void dsd_rows_f32_##B(const DsdArgs& p, int64_t pb, int64_t m0,            \
                                      int64_t m1) {                                        \
    dsd_rows<float, B>(p, pb, m0, m1);                                                     \
  }                                                                                        \
  MORPHO_CLONES void sdd_slots_f32_##B(const SddArgs& p, int64_t s0, int64_t s1) {         \
    sdd_slots<float, B>(p, s0, s1);                                                        \
  }
MORPHO_BS_F32(16)
MORPHO_BS_F32(32)
MORPHO_BS_F32(64)
MORPHO_BS_F32(128)
#undef MORPHO_BS_F32

template <typename T>
void dsd_dispatch(int64_t block, const DsdArgs& p, int64_t pb, int64_t m0, int64_t m1) {
  if constexpr (std::is_same_v<T, float>) {
    switch (block) {
      case 16: return dsd_rows_f32_16(p, pb, m0, m1);
      case 32: return dsd_rows_f32_32(p, pb, m0, m1);
      case 64: return dsd_rows_f32_64(p, pb, m0, m1);
      default: return dsd_rows_f32_128(p, pb, m0, m1);
    }
  } else {
    switch (block) {
      case 16: return dsd_rows<T, 16>(p, pb, m0, m1);
      case 32: return dsd_rows<T, 32>(p, pb, m0, m1);
      case 64: return dsd_rows<T, 64>(p, pb, m0, m1);
      default: return dsd_rows<T, 128>(p, pb, m0, m1);
    }
  }
}

template <typename T>
void sdd_dispatch(int64_t block, const SddArgs& p, int64_t s0, int64_t s1) {
  if constexpr (std::is_same_v<T, float>) {
    switch (block) {
      case 16: return sdd_slots_f32_16(p, s0, s1);
      case 32: return sdd_slots_f32_32(p, s0, s1);
      case 64: return sdd_slots_f32_64(p, s0, s1);
      default: return sdd_slots_f32_128(p, s0, s1);
    }
  } else {
    switch (block) {
      case 16: return sdd_slots<T, 16>(p, s0, s1);
      case 32: return sdd_slots<T, 32>(p, s0, s1);
      case 64: return sdd_slots<T, 64>(p, s0, s1);
      default: return sdd_slots<T, 128>(p, s0, s1);
    }
  }
}

void check_index(const at::Tensor& t, const char* name) {
  MORPHO_CHECK(t.device().is_cpu() && t.scalar_type() == at::kInt && t.dim() == 1 &&
                  t.is_contiguous(),
              "morpho: ", name, " must be a contiguous 1-D int32 CPU tensor");
}

void check_block(int64_t block) {
  MORPHO_CHECK(block == 16 || block == 32 || block == 64 || block == 128,
              "morpho: block size must be 16, 32, 64 or 128, got ", block);
}

}  // namespace

at::Tensor bs_dsd_cpu(const at::Tensor& a, const at::Tensor& vmat, const at::Tensor& ptr,
                      const at::Tensor& order, const at::Tensor& idx, int64_t n_out_blocks,
                      const std::optional<at::Tensor>& bias) {
  MORPHO_CHECK(a.device().is_cpu() && a.dim() == 2, "morpho: a must be a 2-D CPU tensor");
  MORPHO_CHECK(vmat.dim() == 3 && vmat.size(1) == vmat.size(2) && vmat.is_contiguous(),
              "morpho: vmat must be a contiguous (C, B, B) tensor, got ", shape_str(vmat));
  MORPHO_CHECK(a.scalar_type() == vmat.scalar_type() &&
                  (a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble),
              "morpho: bs_dsd takes float32 or float64 a and vmat of one dtype");
  check_index(ptr, "ptr");
  check_index(order, "order");
  check_index(idx, "idx");
  const int64_t block = vmat.size(1);
  check_block(block);
  MORPHO_CHECK(ptr.numel() == n_out_blocks + 1, "morpho: ptr must have n_out_blocks + 1 = ",
              n_out_blocks + 1, " entries, got ", ptr.numel());
  MORPHO_CHECK(order.numel() == vmat.size(0) && idx.numel() == vmat.size(0),
              "morpho: order and idx must have one entry per slot (", vmat.size(0), ")");
  MORPHO_CHECK(a.size(1) % block == 0, "morpho: a's columns (", a.size(1),
              ") must be a multiple of the block size ", block);
  const at::Tensor ac = a.stride(1) == 1 ? a : a.contiguous();
  at::Tensor bc;
  if (bias.has_value()) {
    MORPHO_CHECK(bias->numel() == n_out_blocks * block && bias->scalar_type() == a.scalar_type(),
                "morpho: bias must have n_out_blocks·B elements of a's dtype");
    bc = bias->contiguous();
  }
  const int64_t m = a.size(0);
  at::Tensor c = at::empty({m, n_out_blocks * block}, a.options());
  if (m == 0 || n_out_blocks == 0) return c;
  // Tasks: (output block, row chunk); row chunks keep a few hundred tasks for load balance.
  const int64_t chunk = 64;
  const int64_t n_chunks = (m + chunk - 1) / chunk;
  const auto launch = [&](auto tag) {
    using T = decltype(tag);
    DsdArgs p{ac.data_ptr<T>(), ac.stride(0), vmat.data_ptr<T>(), ptr.data_ptr<int32_t>(),
              order.data_ptr<int32_t>(), idx.data_ptr<int32_t>(),
              bias.has_value() ? bc.data_ptr<T>() : nullptr, c.data_ptr<T>(), c.stride(0)};
    at::parallel_for(0, n_out_blocks * n_chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t pb = task % n_out_blocks, m0 = (task / n_out_blocks) * chunk;
        dsd_dispatch<T>(block, p, pb, m0, std::min(m, m0 + chunk));
      }
    });
  };
  if (a.scalar_type() == at::kFloat) launch(float{}); else launch(double{});
  return c;
}

at::Tensor bs_sdd_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& rows,
                      const at::Tensor& cols, int64_t block) {
  check_block(block);
  MORPHO_CHECK(grad_out.device().is_cpu() && x.device().is_cpu() && grad_out.dim() == 2 &&
                  x.dim() == 2 && grad_out.size(0) == x.size(0),
              "morpho: grad_out (M, N) and x (M, K) must be 2-D CPU tensors with equal M");
  MORPHO_CHECK(grad_out.scalar_type() == x.scalar_type() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
              "morpho: bs_sdd takes float32 or float64 grad_out and x of one dtype");
  check_index(rows, "rows");
  check_index(cols, "cols");
  MORPHO_CHECK(rows.numel() == cols.numel(), "morpho: rows and cols must have equal length");
  const at::Tensor gc = grad_out.stride(1) == 1 ? grad_out : grad_out.contiguous();
  const at::Tensor xc = x.stride(1) == 1 ? x : x.contiguous();
  const int64_t cap = rows.numel();
  at::Tensor dv = at::empty({cap, block, block}, x.options());
  if (cap == 0) return dv;
  const auto launch = [&](auto tag) {
    using T = decltype(tag);
    SddArgs p{gc.data_ptr<T>(), gc.stride(0), xc.data_ptr<T>(), xc.stride(0),
              rows.data_ptr<int32_t>(), cols.data_ptr<int32_t>(), dv.data_ptr<T>(), x.size(0)};
    at::parallel_for(0, cap, 1, [&](int64_t begin, int64_t end) {
      sdd_dispatch<T>(block, p, begin, end);
    });
  };
  if (x.scalar_type() == at::kFloat) launch(float{}); else launch(double{});
  return dv;
}

}  // namespace morpho
