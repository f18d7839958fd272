"""Pure-PyTorch versions of the graph ops (issue 5): the CPU fallback, the test oracle and the
benchmark baseline of extrema_stats, insert_connections and sparse_linear (DESIGN.md,
convention 3). Written for clarity, not speed: each statistic is its own pass, insertion sorts
every key, and sparse_linear materialises the dense weight.

Edge lists are CSR by destination: ``row_ptr`` (out_features + 1,) int64 and ``col`` (capacity,)
int64 source indices; slots ``row_ptr[-1]:`` are spare capacity (ignored).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

# Status codes of insert_connections, per candidate (same values as csrc/graph.h).
INSERTED, DUPLICATE, FAN_IN, FAN_OUT = 0, 1, 2, 3


def extrema_stats(x: Tensor, low: float, high: float):
    """(below, above, mean, min, max, count) per channel of x viewed as (outer, C, inner).

    Five passes: counts below ``low`` and above ``high``, mean, min, max. An empty input gives
    counts 0, mean NaN, min +inf and max −inf (the identity of the running combination)."""
    outer, c, inner = x.shape
    dims = (0, 2)
    count = torch.tensor(outer * inner, dtype=torch.int64, device=x.device)
    xd = x.double()  # thresholds compared exactly (x < low in bf16 would round low to bf16)
    below = (xd < low).sum(dims)
    above = (xd > high).sum(dims)
    if outer * inner == 0:
        full = torch.full((c,), float("inf"), device=x.device)
        return below, above, torch.full_like(full, float("nan")), full, -full, count
    mean = x.float().mean(dims)
    return below, above, mean, x.amin(dims).float(), x.amax(dims).float(), count


def dst_index(row_ptr: Tensor, capacity: int) -> Tensor:
    """Destination of every edge slot (capacity,); spare slots get out_features."""
    slots = torch.arange(capacity, device=row_ptr.device)
    return torch.searchsorted(row_ptr, slots, right=True) - 1


def _ranks_in_groups(keys: Tensor) -> Tensor:
    """Rank of each element among equal keys, in index order (stable)."""
    if keys.numel() == 0:
        return keys.clone()
    sorted_keys, perm = torch.sort(keys, stable=True)
    idx = torch.arange(keys.numel(), device=keys.device)
    start = torch.ones_like(sorted_keys, dtype=torch.bool)
    start[1:] = sorted_keys[1:] != sorted_keys[:-1]
    group_start = torch.cummax(torch.where(start, idx, 0), 0).values
    ranks = torch.empty_like(idx)
    ranks[perm] = idx - group_start
    return ranks


def _cap(status: Tensor, group: Tensor, degree: Tensor, cap: Optional[int], code: int) -> None:
    if cap is None or cap < 0:
        return
    live = (status == INSERTED).nonzero().squeeze(1)
    ranks = _ranks_in_groups(group[live])
    over = degree[group[live]] + ranks >= cap
    status[live[over]] = code


def insert_connections(row_ptr: Tensor, col: Tensor, src: Tensor, dst: Tensor, n_src: int,
                       max_fan_in: Optional[int] = None, max_fan_out: Optional[int] = None):
    """Insert candidate edges (src → dst) into a CSR-by-destination edge list.

    Returns (row_ptr, col, old_to_new, cand_pos, status): the new list (capacity
    max(old capacity, new nnz)), the new slot of every old edge (nnz_old,), the slot of every
    inserted candidate or −1 (C,), and a status code per candidate. Cap policy: see
    morpho_kernels.ops.edges (duplicates, then fan-in in candidate order, then fan-out)."""
    n_dst = row_ptr.numel() - 1
    nnz = int(row_ptr[-1])
    edst = dst_index(row_ptr, nnz)
    ekeys = edst * n_src + col[:nnz]  # sorted: rows ascending, columns ascending within a row
    ckeys = dst * n_src + src
    status = torch.zeros(src.numel(), dtype=torch.int8, device=src.device)
    # duplicates: of an existing edge, or of an earlier candidate
    pos = torch.searchsorted(ekeys, ckeys).clamp(max=max(nnz - 1, 0))
    dup_existing = (ekeys[pos] == ckeys) if nnz else torch.zeros_like(ckeys, dtype=torch.bool)
    status[dup_existing | (_ranks_in_groups(ckeys) > 0)] = DUPLICATE
    _cap(status, dst, row_ptr[1:] - row_ptr[:-1], max_fan_in, FAN_IN)
    out_deg = torch.bincount(col[:nnz], minlength=n_src)
    _cap(status, src, out_deg, max_fan_out, FAN_OUT)
    accepted = (status == INSERTED).nonzero().squeeze(1)
    all_keys = torch.cat([ekeys, ckeys[accepted]])
    sorted_keys, perm = torch.sort(all_keys)
    new_nnz = sorted_keys.numel()
    slot_of = torch.empty_like(perm)
    slot_of[perm] = torch.arange(new_nnz, device=perm.device)
    new_col = torch.zeros(max(col.numel(), new_nnz), dtype=torch.int64, device=col.device)
    new_col[:new_nnz] = sorted_keys % max(n_src, 1)
    counts = torch.bincount(sorted_keys // max(n_src, 1), minlength=n_dst)
    new_row_ptr = torch.zeros_like(row_ptr)
    new_row_ptr[1:] = torch.cumsum(counts, 0)
    cand_pos = torch.full_like(src, -1)
    cand_pos[accepted] = slot_of[nnz:]
    return new_row_ptr, new_col, slot_of[:nnz], cand_pos, status


def dense_weight(row_ptr: Tensor, col: Tensor, values: Tensor, in_features: int) -> Tensor:
    """The (out_features, in_features) dense weight of an edge list (differentiable in values)."""
    n_dst = row_ptr.numel() - 1
    nnz = int(row_ptr[-1])
    w = values.new_zeros(n_dst * in_features)
    flat = dst_index(row_ptr, nnz) * in_features + col[:nnz]
    return w.index_put((flat,), values[:nnz], accumulate=True).view(n_dst, in_features)


def sparse_linear(x: Tensor, row_ptr: Tensor, col: Tensor, values: Tensor,
                  bias: Optional[Tensor] = None) -> Tensor:
    """y[..., d] = bias[d] + Σ_{edges s→d} values[e] · x[..., s], through the dense weight."""
    return F.linear(x, dense_weight(row_ptr, col, values, x.shape[-1]), bias)


def dense_grad_at(x: Tensor, grad_out: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """∂L/∂W at positions (dst, src): Σ_t grad_out[t, dst] · x[t, src], in x's dtype."""
    x2 = x.reshape(-1, x.shape[-1])
    g2 = grad_out.reshape(-1, grad_out.shape[-1])
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (g2.to(acc)[:, dst] * x2.to(acc)[:, src]).sum(0).to(x.dtype)
