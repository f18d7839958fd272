// CUDA implementation of edges_insert (same schema and cap policy as csrc/cpu/edges.cpp),
// written with ATen's device sorts and binary searches: only the C candidates are sorted
// (twice more for the caps when given), the E existing edges are only searched and scattered:
// O(E log C + C log E + C log C) work, all on the device. Host synchronisations: nnz, the range
// check of the candidates, and the number accepted (output sizes depend on them).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../graph.h"

namespace morpho {
namespace {

// Rank of each element among the elements with the same key, in index order.
at::Tensor ranks_in_groups(const at::Tensor& keys) {
  const int64_t n = keys.numel();
  if (n == 0) return keys.clone();
  auto sorted = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor& sk = std::get<0>(sorted);
  const at::Tensor& perm = std::get<1>(sorted);
  auto idx = at::arange(n, keys.options());
  auto start = at::ones({n}, keys.options().dtype(at::kBool));
  if (n > 1) start.slice(0, 1).copy_(sk.slice(0, 1) != sk.slice(0, 0, n - 1));
  auto group_start = std::get<0>(at::cummax(at::where(start, idx, at::zeros_like(idx)), 0));
  auto ranks = at::empty_like(idx);
  ranks.index_put_({perm}, idx - group_start);
  return ranks;
}

// Candidates still at kInserted whose group (dst or src) is full get `code`.
void apply_cap(at::Tensor& status, const at::Tensor& group, const at::Tensor& degree,
               int64_t n_groups, int64_t cap, int8_t code) {
  if (cap < 0) return;
  auto live = status == kInserted;
  // Non-live candidates go to a sentinel group so they take no slot.
  auto g = at::where(live, group, at::full_like(group, n_groups));
  auto ranks = ranks_in_groups(g);
  auto deg = at::cat({degree, at::zeros({1}, degree.options())}).index_select(0, g);
  auto over = live & (deg + ranks >= cap);
  status.masked_fill_(over, code);
}

}  // namespace

InsertOut insert_connections_cuda(const at::Tensor& row_ptr_in, const at::Tensor& col_in,
                                  const at::Tensor& src_in, const at::Tensor& dst_in,
                                  int64_t n_src, int64_t max_fan_in, int64_t max_fan_out) {
  check_edges_args(row_ptr_in, col_in, src_in, dst_in, n_src, at::kCUDA);
  const c10::cuda::CUDAGuard guard(row_ptr_in.device());
  auto row_ptr = row_ptr_in.contiguous(), col = col_in.contiguous();
  auto src = src_in.contiguous(), dst = dst_in.contiguous();
  const int64_t N = row_ptr.numel() - 1, C = src.numel(), cap = col.numel();
  MORPHO_CHECK(N == 0 || n_src == 0 || N <= (int64_t(1) << 62) / n_src,
              "morpho: n_dst * n_src overflows int64");
  const int64_t E = row_ptr[N].item<int64_t>();  // sync: output sizes depend on it
  MORPHO_CHECK(E >= 0 && E <= cap, "morpho: row_ptr must end at nnz <= capacity (", cap, "), got ",
              E);
  if (C > 0) {
    const bool bad = ((src < 0) | (src >= n_src) | (dst < 0) | (dst >= N)).any().item<bool>();
    MORPHO_CHECK(!bad, "morpho: src must be in [0, ", n_src, ") and dst in [0, ", N, ")");
  }
  auto opt = row_ptr.options();
  auto slots = at::arange(E, opt);
  auto e_dst = at::searchsorted(row_ptr, slots, /*out_int32=*/false, /*right=*/true) - 1;
  auto e_col = col.slice(0, 0, E);
  auto ekeys = e_dst * n_src + e_col;  // sorted: rows ascending, columns ascending in a row
  auto ckeys = dst * n_src + src;
  auto status = at::zeros({C}, opt.dtype(at::kChar));
  if (C > 0) {
    auto dup = ranks_in_groups(ckeys) > 0;  // a repeat of an earlier candidate
    if (E > 0) {
      auto pos = at::searchsorted(ekeys, ckeys).clamp_max(E - 1);
      dup = dup | (ekeys.index_select(0, pos) == ckeys);
    }
    status.masked_fill_(dup, kDuplicate);
    apply_cap(status, dst, row_ptr.slice(0, 1) - row_ptr.slice(0, 0, N), N, max_fan_in, kFanIn);
    if (max_fan_out >= 0) {
      apply_cap(status, src, at::bincount(e_col, {}, n_src), n_src, max_fan_out, kFanOut);
    }
  }
  auto accepted = at::nonzero(status == kInserted).squeeze(1);  // sync: A
  const int64_t A = accepted.numel(), newE = E + A;
  auto sorted = at::sort(ckeys.index_select(0, accepted));
  const at::Tensor& akeys = std::get<0>(sorted);  // unique: duplicates were rejected
  const at::Tensor& aperm = std::get<1>(sorted);
  // New slots: an accepted key lands after the existing keys below it and the accepted keys
  // before it; an old edge moves down by the number of accepted keys below it.
  auto a_pos = at::searchsorted(ekeys, akeys) + at::arange(A, opt);
  auto old_to_new = slots + at::searchsorted(akeys, ekeys);
  auto new_col = at::zeros({std::max(cap, newE)}, opt);
  new_col.index_put_({old_to_new}, e_col);
  new_col.index_put_({a_pos}, at::remainder(akeys, std::max<int64_t>(n_src, 1)));
  auto per_row = at::bincount(at::floor_divide(akeys, std::max<int64_t>(n_src, 1)), {}, N);
  auto new_row_ptr = row_ptr.clone();
  if (N > 0) new_row_ptr.slice(0, 1).add_(at::cumsum(per_row, 0));
  auto cand_pos = at::full({C}, -1, opt);
  cand_pos.index_put_({accepted.index_select(0, aperm)}, a_pos);
  return {new_row_ptr, new_col, old_to_new, cand_pos, status};
}

}  // namespace morpho

TORCH_LIBRARY_IMPL(morpho, CUDA, m) { m.impl("edges_insert", &morpho::insert_connections_cuda); }
