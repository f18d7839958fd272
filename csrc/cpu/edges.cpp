// CPU kernel of insert_connections: merge sorted candidates into a CSR-by-destination edge list.
//
// Cost O(E + C log C) for E existing edges and C candidates: only the candidates are sorted
// (by (dst, src, order)); existing rows are already sorted, so duplicates against them are a
// binary search and the new list is a per-row two-pointer merge, parallel over rows. The
// reference (morpho_kernels/reference_graph.py) sorts all E + C keys instead.
//
// Cap policy (identical on every backend): candidates keep the order given. (1) A candidate equal
// to an existing edge or to an earlier candidate is a duplicate. (2) Fan-in: per dst, the
// remaining candidates are accepted in order while the dst's in-degree stays <= max_fan_in.
// (3) Fan-out: of those, per src, accepted in order while the src's out-degree stays
// <= max_fan_out. A candidate rejected at (3) still used its fan-in slot in (2).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "../graph.h"

namespace morpho {
namespace {

// Sorted positions of the candidates by (dst, src, original index): keys packed in one int64
// when they fit, so the sort compares single integers.
std::vector<int64_t> sort_candidates(const int64_t* src, const int64_t* dst, int64_t C,
                                     int64_t n_src, int64_t n_dst, std::vector<int64_t>& keys) {
  keys.resize(C);
  for (int64_t i = 0; i < C; ++i) keys[i] = dst[i] * n_src + src[i];
  std::vector<int64_t> order(C);
  const int64_t n_keys = std::max<int64_t>(1, n_dst * n_src);
  if (C > 0 && n_keys <= INT64_MAX / C) {
    // (key, index) packed into one int64: a plain integer sort, 3-4x faster than an indirect
    // comparator (100k candidates: ~5 ms instead of ~17 ms on 2 cores).
    for (int64_t i = 0; i < C; ++i) order[i] = keys[i] * C + i;
    std::sort(order.begin(), order.end());
    for (int64_t i = 0; i < C; ++i) order[i] %= C;
    return order;
  }
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return keys[a] < keys[b] || (keys[a] == keys[b] && a < b);
  });
  return order;
}

void mark_duplicates(const int64_t* rp, const int64_t* col, const int64_t* src,
                     const int64_t* dst, const std::vector<int64_t>& keys,
                     const std::vector<int64_t>& order, int8_t* status) {
  const int64_t C = static_cast<int64_t>(order.size());
  at::parallel_for(0, C, 4096, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      const int64_t i = order[p];
      if (p > 0 && keys[order[p - 1]] == keys[i]) {
        status[i] = kDuplicate;  // an earlier candidate (smaller index) has the same key
        continue;
      }
      const int64_t* row = col + rp[dst[i]];
      const int64_t* end = col + rp[dst[i] + 1];
      if (std::binary_search(row, end, src[i])) status[i] = kDuplicate;
    }
  });
}

// Fan-in then fan-out, each in candidate order (sequential by definition of the policy; O(C)).
void apply_caps(const int64_t* rp, const int64_t* col, const int64_t* src, const int64_t* dst,
                int64_t C, int64_t N, int64_t K, int64_t E, int64_t max_in, int64_t max_out,
                int8_t* status) {
  if (max_in >= 0) {
    std::vector<int64_t> deg(N);
    for (int64_t d = 0; d < N; ++d) deg[d] = rp[d + 1] - rp[d];
    for (int64_t i = 0; i < C; ++i) {
      if (status[i] != kInserted) continue;
      if (deg[dst[i]] >= max_in) status[i] = kFanIn;
      else ++deg[dst[i]];
    }
  }
  if (max_out >= 0) {
    std::vector<int64_t> deg(K, 0);
    for (int64_t e = 0; e < E; ++e) ++deg[col[e]];
    for (int64_t i = 0; i < C; ++i) {
      if (status[i] != kInserted) continue;
      if (deg[src[i]] >= max_out) status[i] = kFanOut;
      else ++deg[src[i]];
    }
  }
}

}  // namespace

InsertOut insert_connections_cpu(const at::Tensor& row_ptr_in, const at::Tensor& col_in,
                                 const at::Tensor& src_in, const at::Tensor& dst_in,
                                 int64_t n_src, int64_t max_fan_in, int64_t max_fan_out) {
  check_edges_args(row_ptr_in, col_in, src_in, dst_in, n_src, at::kCPU);
  auto row_ptr = row_ptr_in.contiguous(), col = col_in.contiguous();
  auto src_t = src_in.contiguous(), dst_t = dst_in.contiguous();
  const int64_t N = row_ptr.numel() - 1, C = src_t.numel(), cap = col.numel();
  const int64_t* rp = row_ptr.const_data_ptr<int64_t>();
  const int64_t* cp = col.const_data_ptr<int64_t>();
  const int64_t* src = src_t.const_data_ptr<int64_t>();
  const int64_t* dst = dst_t.const_data_ptr<int64_t>();
  const int64_t E = rp[N];
  TORCH_CHECK(rp[0] == 0 && E >= 0 && E <= cap, "morpho: row_ptr must start at 0 and end at nnz <= ",
              "capacity (", cap, "), got ", rp[0], " .. ", E);
  TORCH_CHECK(N == 0 || n_src == 0 || N <= (int64_t(1) << 62) / n_src,
              "morpho: n_dst * n_src overflows int64");
  for (int64_t i = 0; i < C; ++i) {
    TORCH_CHECK(src[i] >= 0 && src[i] < n_src, "morpho: src[", i, "] = ", src[i],
                " out of range [0, ", n_src, ")");
    TORCH_CHECK(dst[i] >= 0 && dst[i] < N, "morpho: dst[", i, "] = ", dst[i], " out of range [0, ",
                N, ")");
  }
  auto status_t = at::zeros({C}, at::TensorOptions().dtype(at::kChar));
  int8_t* status = status_t.mutable_data_ptr<int8_t>();
  std::vector<int64_t> keys;
  const std::vector<int64_t> order = sort_candidates(src, dst, C, n_src, N, keys);
  mark_duplicates(rp, cp, src, dst, keys, order, status);
  apply_caps(rp, cp, src, dst, C, N, n_src, E, max_fan_in, max_fan_out, status);

  // Accepted candidates in (dst, src) order, grouped per row by acc_ptr.
  std::vector<int64_t> acc;
  acc.reserve(C);
  std::vector<int64_t> acc_ptr(N + 1, 0);
  for (int64_t p = 0; p < C; ++p) {
    const int64_t i = order[p];
    if (status[i] == kInserted) {
      acc.push_back(i);
      ++acc_ptr[dst[i] + 1];
    }
  }
  for (int64_t d = 0; d < N; ++d) acc_ptr[d + 1] += acc_ptr[d];
  const int64_t A = static_cast<int64_t>(acc.size()), newE = E + A;
  auto opt = row_ptr.options();
  auto new_rp_t = at::empty({N + 1}, opt);
  auto new_col_t = at::empty({std::max(cap, newE)}, opt);
  auto old_to_new_t = at::empty({E}, opt);
  auto cand_pos_t = at::full({C}, -1, opt);
  int64_t* nrp = new_rp_t.mutable_data_ptr<int64_t>();
  int64_t* ncol = new_col_t.mutable_data_ptr<int64_t>();
  int64_t* o2n = old_to_new_t.mutable_data_ptr<int64_t>();
  int64_t* cpos = cand_pos_t.mutable_data_ptr<int64_t>();
  for (int64_t d = 0; d <= N; ++d) nrp[d] = rp[d] + acc_ptr[d];
  std::fill(ncol + newE, ncol + std::max(cap, newE), int64_t(0));
  at::parallel_for(0, N, 256, [&](int64_t b, int64_t e) {
    for (int64_t d = b; d < e; ++d) {
      int64_t a = rp[d], a1 = rp[d + 1], c = acc_ptr[d], c1 = acc_ptr[d + 1], o = nrp[d];
      while (a < a1 || c < c1) {
        if (c == c1 || (a < a1 && cp[a] < src[acc[c]])) {
          ncol[o] = cp[a];
          o2n[a++] = o++;
        } else {
          ncol[o] = src[acc[c]];
          cpos[acc[c++]] = o++;
        }
      }
    }
  });
  return {new_rp_t, new_col_t, old_to_new_t, cand_pos_t, status_t};
}

}  // namespace morpho
