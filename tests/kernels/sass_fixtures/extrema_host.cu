// Host run of the extrema kernels' per-thread code (csrc/cuda/extrema_kernels.cuh), compiled by
// nvcc and run on the CPU: the packed bf16×2 / fp16×2 compares, min / max, the 16-bit lane
// counters and their flush, the fp32 sums and the exact thresholds are the device code's own
// (__host__ __device__, with cuda_bf16.h's host versions of the intrinsics). The grid is walked
// block by block and thread by thread as the kernel splits it (plan() with a given number of
// resident blocks); the warp and block merges are replaced by Stats::merge in index order (the
// kernel merges in a tree: counts and min / max are order-free, sums differ by fp64 rounding).
//
// usage: extrema_host DTYPE OUTER C INNER LOW HIGH RESIDENT FLUSH IN OUT
//   DTYPE bf16 | f16 | f32 | f64; FLUSH: steps between flushes of the lane counters (0: the
//   kernel's); IN: x as raw bytes; OUT: below, above (int64 C), mean, min, max (fp32 C), count.
// Prints "vec=V tiles=T splits=S spans=K" (the path taken) on stdout.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../../../csrc/cuda/extrema_launch.cuh"

using namespace morpho::extrema;

template <typename T, int VEC, int FLUSH>
void run_columns(const Params<T>& p, const Plan& pl, std::vector<Stats>& total) {
  using L = ColLayout<T, VEC>;
  for (long long tile = 0; tile < pl.tiles; ++tile) {
    for (long long split = 0; split < pl.S; ++split) {
      std::vector<Stats> block(L::kTileCols, Stats::identity());
      for (int warp = 0; warp < kWarps; ++warp) {
        for (int lane = 0; lane < 32; ++lane) {
          ColumnAcc<T, VEC> acc;
          thread_columns<T, VEC, FLUSH>(p, tile, split, warp, lane, acc);
          for (int j = 0; j < VEC; ++j) block[(lane % L::kColThreads) * VEC + j].merge(acc.get(j));
        }
      }
      for (int k = 0; k < L::kTileCols; ++k) {
        const long long c = tile * L::kTileCols + k;
        if (c < p.C) total[c].merge(block[k]);  // the last block: partials in split order
      }
    }
  }
}

template <typename T, int FLUSH>
void run(const Params<T>& p, const Plan& pl, std::vector<Stats>& total) {
  constexpr int kMaxVec = 16 / sizeof(T);
  if (p.inner > 1) {
    for (long long c = 0; c < p.C; ++c) {
      for (long long split = 0; split < pl.S; ++split) {
        Stats block = Stats::identity();
        for (int tid = 0; tid < kThreads; ++tid) {
          ColumnAcc<T, 1> acc;
          thread_channel(p, c, split, tid, acc);
          block.merge(acc.get(0));
        }
        total[c].merge(block);
      }
    }
  } else if (pl.vec == kMaxVec) {
    run_columns<T, kMaxVec, FLUSH>(p, pl, total);
  } else if (pl.vec == 1) {
    run_columns<T, 1, FLUSH>(p, pl, total);
  } else {
    if constexpr (Traits<T>::kPacked) run_columns<T, 2, FLUSH>(p, pl, total);
  }
}

template <typename T>
int main_t(char** argv) {
  const long long outer = atoll(argv[2]), C = atoll(argv[3]), inner = atoll(argv[4]);
  const double low = atof(argv[5]), high = atof(argv[6]);
  const long long resident = atoll(argv[7]);
  const int flush = atoi(argv[8]);
  const size_t n = static_cast<size_t>(outer * C * inner);
  // 16-byte aligned, like a CUDA allocation (the vector path needs it)
  std::vector<double> storage((n * sizeof(T) + 15) / 8 + 2);
  T* x = reinterpret_cast<T*>(storage.data());
  FILE* f = fopen(argv[9], "rb");
  if (!f || fread(x, sizeof(T), n, f) != n) return fprintf(stderr, "cannot read %s\n", argv[9]), 2;
  fclose(f);
  const Plan pl = plan<T>(x, outer, C, inner, resident);
  if (pl.error) return fprintf(stderr, "plan: %s\n", pl.error), 2;
  printf("vec=%d tiles=%lld splits=%lld spans=%lld\n", pl.vec, pl.tiles, pl.S, pl.splits_per_row);
  std::vector<long long> below(C), above(C);
  std::vector<float> mean(C), mn(C), mx(C);
  Params<T> p = make_params(pl, x, outer, C, inner, low, high);
  p.below = below.data(), p.above = above.data(), p.mean = mean.data(), p.mn = mn.data();
  p.mx = mx.data();
  std::vector<Stats> total(C, Stats::identity());
  if (flush > 0) {
    if (flush != 3) return fprintf(stderr, "FLUSH must be 0 or 3\n"), 2;
    run<T, 3>(p, pl, total);
  } else {
    run<T, kFlushSteps>(p, pl, total);
  }
  for (long long c = 0; c < C; ++c) write_outputs(p, c, total[c]);
  const long long count = outer * inner;
  FILE* o = fopen(argv[10], "wb");
  fwrite(below.data(), 8, C, o);
  fwrite(above.data(), 8, C, o);
  fwrite(mean.data(), 4, C, o);
  fwrite(mn.data(), 4, C, o);
  fwrite(mx.data(), 4, C, o);
  fwrite(&count, 8, 1, o);
  fclose(o);
  return 0;
}

int main(int argc, char** argv) {
  if (argc != 11) return fprintf(stderr, "usage: see the header of this file\n"), 2;
  const char* d = argv[1];
  if (!strcmp(d, "bf16")) return main_t<__nv_bfloat16>(argv);
  if (!strcmp(d, "f16")) return main_t<__half>(argv);
  if (!strcmp(d, "f32")) return main_t<float>(argv);
  if (!strcmp(d, "f64")) return main_t<double>(argv);
  return fprintf(stderr, "unknown dtype %s\n", d), 2;
}
