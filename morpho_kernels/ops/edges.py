"""morpho::insert_connections / remove_connections: the two structural edits growth and pruning
make to an `EdgeList` (a layer's connections as CSR by destination with spare capacity; the
format lives in morpho_kernels/formats.py and is importable from here too).

Order (DESIGN.md convention 1): backends and checks → custom op with fake kernel → public
functions. Kernels: csrc/cpu/edges.cpp (merge of sorted candidates, O(E + C log C)),
csrc/cuda/edges.cu (sorts and searches of the candidates only, via ATen); reference:
morpho_kernels/reference_graph.py (sorts all E + C keys).

Cap policy of insert_connections (deterministic, identical on every backend):
candidates keep the order given.
1. A candidate equal to an existing edge, or to an earlier candidate, is ``rejected_duplicate``.
2. Fan-in (per dst): the remaining candidates are accepted in order while the destination's
   in-degree stays <= ``max_fan_in``; the others are ``rejected_fan_in``.
3. Fan-out (per src): of those, accepted in order while the source's out-degree stays
   <= ``max_fan_out``; the others are ``rejected_fan_out``. A candidate rejected here still used
   its fan-in slot in step 2 (so the steps stay independent and parallel on a GPU).
Existing edges are never removed by a cap, even where a degree already exceeds it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from .. import _ext, reference_graph
from .._dispatch import Backend, CallSpec, Dispatcher, check_ext
from ..checks import check_int, check_real
from ..formats import EdgeList, check_index  # also morpho_kernels.ops.edges.EdgeList (old home)

# ----------------------------------------------------------------------------- backends

@functools.cache
def _register_ext_fakes() -> None:
    torch.library.register_fake("morpho::edges_insert")(_insert_fake)


def _check_ext(spec: CallSpec) -> Optional[str]:
    return check_ext(spec, dtypes=None, on_ready=_register_ext_fakes)


DISPATCH = Dispatcher("insert_connections",
                      [Backend("ext", _check_ext), Backend("reference", lambda spec: None)])


# ----------------------------------------------------------------------------- custom op


@torch.library.custom_op("morpho::insert_connections", mutates_args=())
def _insert_op(row_ptr: Tensor, col: Tensor, src: Tensor, dst: Tensor, n_src: int,
               max_fan_in: int, max_fan_out: int) -> tuple[Tensor, Tensor, Tensor, Tensor,
                                                            Tensor]:
    """(row_ptr, col, old_to_new, cand_pos, status); a cap of −1 means none."""
    spec = CallSpec(row_ptr.device, torch.int64,
                    (("edges", col.numel()), ("candidates", src.numel())))
    if DISPATCH.choose(spec) == "ext":
        return tuple(_ext.ops().edges_insert(row_ptr, col, src, dst, n_src, max_fan_in,
                                             max_fan_out))
    return reference_graph.insert_connections(row_ptr, col, src, dst, n_src,
                                              None if max_fan_in < 0 else max_fan_in,
                                              None if max_fan_out < 0 else max_fan_out)


def _insert_fake(row_ptr, col, src, dst, n_src, max_fan_in, max_fan_out):
    ctx = torch.library.get_ctx()
    new_cap, nnz = ctx.new_dynamic_size(), ctx.new_dynamic_size()
    return (row_ptr.new_empty(row_ptr.shape), col.new_empty(new_cap), col.new_empty(nnz),
            src.new_empty(src.shape), src.new_empty(src.shape, dtype=torch.int8))


_insert_op.register_fake(_insert_fake)


# ----------------------------------------------------------------------------- public functions


@dataclass(frozen=True)
class InsertReport:
    """What happened to the candidates of one insert_connections call."""

    inserted: int
    rejected_duplicate: int
    rejected_fan_in: int
    rejected_fan_out: int
    status: Tensor  # (C,) int8 per candidate: 0 inserted, 1 duplicate, 2 fan-in, 3 fan-out

    @property
    def rejected(self) -> int:
        return self.rejected_duplicate + self.rejected_fan_in + self.rejected_fan_out


@dataclass(frozen=True)
class EdgeUpdate:
    """Result of insert_connections / remove_connections.

    edges: the new EdgeList. values: (new capacity,) values aligned with its slots.
    old_to_new: (old nnz,) new slot of every old edge, −1 where removed. positions: (C,) slot of
    every inserted candidate, −1 where rejected (insert only). report: InsertReport (insert) or
    None. removed: number of edges removed (remove only)."""

    edges: EdgeList
    values: Tensor
    old_to_new: Tensor
    positions: Optional[Tensor] = None
    report: Optional[InsertReport] = None
    removed: int = 0

    def remap(self, old: Tensor, fill: float = 0.0) -> Tensor:
        """Move a per-slot tensor of the old list (e.g. an optimizer moment) to the new slots;
        new and spare slots get ``fill``."""
        out = old.new_full((self.edges.capacity, *old.shape[1:]), fill)
        keep = self.old_to_new >= 0
        out[self.old_to_new[keep]] = old[:self.old_to_new.numel()][keep]
        return out


def _cap_arg(name: str, v) -> int:
    """A fan cap as the op takes it: −1 for None (no cap)."""
    v = check_int(name, v, 0, optional=True)
    return -1 if v is None else v


def _check_values(values, edges: EdgeList) -> None:
    if not isinstance(values, Tensor):
        raise TypeError(f"values must be a torch.Tensor or None, got {type(values).__name__}")
    if values.shape != (edges.capacity,):
        raise ValueError(f"values shape {tuple(values.shape)} must be (capacity,) = "
                         f"({edges.capacity},)")
    if values.device != edges.device:
        raise ValueError(f"values are on {values.device} but edges on {edges.device}")


def insert_connections(edges: EdgeList, src: Tensor, dst: Tensor,
                       init_values: Union[Tensor, float] = 0.0,
                       max_fan_in: Optional[int] = None, max_fan_out: Optional[int] = None, *,
                       values: Optional[Tensor] = None) -> EdgeUpdate:
    """Insert candidate connections src[i] → dst[i], keeping every row sorted.

    Duplicates (of existing edges or within the batch) are dropped, and the fan-in / fan-out
    caps are applied in candidate order (policy in this module's docstring).

    Args:
        edges: the layer's EdgeList.
        src, dst: (C,) integer source / destination indices of the candidates.
        init_values: value of each inserted connection: a float or a (C,) tensor.
        max_fan_in: cap on edges into any destination (None: no cap).
        max_fan_out: cap on edges out of any source (None: no cap).
        values: (capacity,) current values of ``edges``; moved to the new slots.

    Returns:
        EdgeUpdate(edges, values, old_to_new, positions, report). The capacity is kept when the
        new edges fit, else grows to exactly the new nnz. ``values`` has the dtype of
        ``values`` (or of a tensor ``init_values``, else fp32); use ``remap`` to move
        optimizer state. On a GPU the report's counts synchronise once.
    """
    if not isinstance(edges, EdgeList):
        raise TypeError(f"edges must be an EdgeList, got {type(edges).__name__}")
    src = check_index("src", src, edges.in_features).to(edges.device)
    dst = check_index("dst", dst, edges.out_features).to(edges.device)
    if src.shape != dst.shape:
        raise ValueError(f"src {tuple(src.shape)} and dst {tuple(dst.shape)} must match")
    if values is not None:
        _check_values(values, edges)
    if isinstance(init_values, Tensor):
        if init_values.shape not in ((src.numel(),), ()):
            raise ValueError(f"init_values shape {tuple(init_values.shape)} must be "
                             f"({src.numel()},) or a scalar")
    else:
        init_values = check_real("init_values", init_values)
    dtype = (values.dtype if values is not None else
             init_values.dtype if isinstance(init_values, Tensor) else torch.float32)
    rp, col, o2n, pos, status = _insert_op(edges.row_ptr, edges.col, src, dst,
                                           edges.in_features, _cap_arg("max_fan_in", max_fan_in),
                                           _cap_arg("max_fan_out", max_fan_out))
    new = EdgeList(rp, col, edges.in_features, validate=False)
    new_values = torch.zeros(col.numel(), dtype=dtype, device=edges.device)
    if values is not None:
        new_values[o2n] = values[:o2n.numel()]
    ok = pos >= 0
    init = (init_values.to(device=edges.device, dtype=dtype).expand(src.shape)
            if isinstance(init_values, Tensor) else torch.full_like(new_values[:1], init_values)
            .expand(src.shape))
    new_values[pos[ok]] = init[ok]
    counts = torch.bincount(status.long(), minlength=4).tolist()
    report = InsertReport(counts[0], counts[1], counts[2], counts[3], status)
    return EdgeUpdate(new, new_values, o2n, pos, report)


def remove_connections(edges: EdgeList, mask_or_indices: Tensor, *,
                       values: Optional[Tensor] = None) -> EdgeUpdate:
    """Remove connections by slot: a bool mask over the nnz (or capacity) slots, True = remove,
    or a 1-D integer tensor of slot indices < nnz. Rows stay sorted; the capacity is kept.

    Returns EdgeUpdate(edges, values, old_to_new (−1 for removed), removed=count)."""
    if not isinstance(edges, EdgeList):
        raise TypeError(f"edges must be an EdgeList, got {type(edges).__name__}")
    if values is not None:
        _check_values(values, edges)
    nnz = edges.nnz
    m = mask_or_indices
    if not isinstance(m, Tensor):
        raise TypeError(f"mask_or_indices must be a torch.Tensor, got {type(m).__name__}")
    m = m.to(edges.device)
    if m.dtype == torch.bool:
        if m.shape not in ((nnz,), (edges.capacity,)):
            raise ValueError(f"mask_or_indices as a mask must have shape ({nnz},) (nnz) or "
                             f"({edges.capacity},) (capacity), got {tuple(m.shape)}")
        drop = m[:nnz]
    else:
        idx = check_index("mask_or_indices", m, nnz)
        drop = torch.zeros(nnz, dtype=torch.bool, device=edges.device)
        drop[idx] = True
    keep = ~drop
    o2n = torch.where(keep, torch.cumsum(keep, 0) - 1, -1)
    d = edges.dst_index()[:nnz]
    counts = torch.bincount(d[keep], minlength=edges.out_features)
    rp = torch.zeros_like(edges.row_ptr)
    rp[1:] = torch.cumsum(counts, 0)
    kept = edges.col[:nnz][keep]
    col = torch.zeros_like(edges.col)
    col[:kept.numel()] = kept
    new = EdgeList(rp, col, edges.in_features, validate=False)
    upd = EdgeUpdate(new, torch.zeros(0), o2n, removed=nnz - kept.numel())
    new_values = upd.remap(values) if values is not None else torch.zeros(
        edges.capacity, device=edges.device)
    return EdgeUpdate(new, new_values, o2n, removed=upd.removed)
