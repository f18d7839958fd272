"""EdgeList and morpho::insert_connections / remove_connections: a layer's connections as CSR by
destination with spare capacity, and the two structural edits growth and pruning make.

Order (DESIGN.md convention 1): the format → backends and checks → custom op with fake kernel →
public functions. Kernels: csrc/cpu/edges.cpp (merge of sorted candidates, O(E + C log C)),
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

# ----------------------------------------------------------------------------- the format


class EdgeList:
    """Connections src → dst of a layer with ``in_features`` sources and ``out_features``
    destinations, as CSR by destination.

    Attributes:
        row_ptr: (out_features + 1,) int64; the edges into dst d are slots
            ``row_ptr[d]:row_ptr[d + 1]``.
        col: (capacity,) int64 source of every slot, strictly increasing within a row; slots
            from ``nnz = row_ptr[-1]`` on are spare capacity (value 0, ignored by every op).
        in_features: number of sources.

    Values (weights) live beside it, one per slot (``SparseLinear.values``). An EdgeList is
    never edited in place: insert / remove return a new one, so a cached transpose stays valid.
    """

    def __init__(self, row_ptr: Tensor, col: Tensor, in_features: int, validate: bool = True):
        if not isinstance(row_ptr, Tensor) or not isinstance(col, Tensor):
            raise TypeError("row_ptr and col must be torch.Tensors")
        if row_ptr.dtype != torch.int64 or col.dtype != torch.int64:
            raise TypeError(f"row_ptr and col must be int64, got {row_ptr.dtype} / {col.dtype}")
        if row_ptr.dim() != 1 or row_ptr.numel() < 1 or col.dim() != 1:
            raise ValueError("row_ptr must be 1-D with out_features + 1 entries and col 1-D")
        if row_ptr.device != col.device:
            raise ValueError(f"row_ptr is on {row_ptr.device} but col is on {col.device}")
        if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 0:
            raise ValueError(f"in_features must be a non-negative int, got {in_features!r}")
        self.row_ptr, self.col, self.in_features = row_ptr, col, in_features
        self._transpose: Optional[tuple[Tensor, Tensor, Tensor]] = None
        if validate and row_ptr.device.type == "cpu":  # data checks would synchronise a GPU
            self._validate()

    def _validate(self) -> None:
        rp, nnz = self.row_ptr, int(self.row_ptr[-1])
        if int(rp[0]) != 0 or bool((rp[1:] < rp[:-1]).any()) or nnz > self.capacity:
            raise ValueError("row_ptr must start at 0, be non-decreasing and end at nnz <= "
                             f"capacity ({self.capacity})")
        c = self.col[:nnz]
        if nnz and (int(c.min()) < 0 or int(c.max()) >= self.in_features):
            raise ValueError(f"col entries must be in [0, in_features={self.in_features})")
        d = reference_graph.dst_index(rp, nnz)
        if nnz > 1 and bool(((d[1:] == d[:-1]) & (c[1:] <= c[:-1])).any()):
            raise ValueError("col must be strictly increasing within each row (sorted, no "
                             "duplicate edges)")

    # -- sizes
    @property
    def out_features(self) -> int:
        return self.row_ptr.numel() - 1

    @property
    def capacity(self) -> int:
        return self.col.numel()

    @property
    def nnz(self) -> int:
        """Number of edges (reads row_ptr[-1]: synchronises a GPU)."""
        return int(self.row_ptr[-1])

    @property
    def device(self) -> torch.device:
        return self.row_ptr.device

    @property
    def density(self) -> float:
        return self.nnz / max(1, self.in_features * self.out_features)

    def __repr__(self) -> str:
        return (f"EdgeList(in_features={self.in_features}, out_features={self.out_features}, "
                f"nnz={self.nnz}, capacity={self.capacity}, device={self.device})")

    # -- construction
    @classmethod
    def empty(cls, in_features: int, out_features: int, capacity: int = 0,
              device=None) -> EdgeList:
        return cls(torch.zeros(out_features + 1, dtype=torch.int64, device=device),
                   torch.zeros(capacity, dtype=torch.int64, device=device), in_features)

    @classmethod
    def from_coo(cls, src: Tensor, dst: Tensor, in_features: int, out_features: int,
                 capacity: Optional[int] = None) -> EdgeList:
        """From edge lists (any order; duplicates are merged)."""
        src, dst = _check_index("src", src, in_features), _check_index("dst", dst, out_features)
        if src.shape != dst.shape:
            raise ValueError(f"src {tuple(src.shape)} and dst {tuple(dst.shape)} must match")
        keys = torch.unique(dst * max(in_features, 1) + src)  # sorted
        nnz = keys.numel()
        cap = max(nnz, capacity or 0)
        col = torch.zeros(cap, dtype=torch.int64, device=src.device)
        col[:nnz] = keys % max(in_features, 1)
        row_ptr = torch.zeros(out_features + 1, dtype=torch.int64, device=src.device)
        row_ptr[1:] = torch.cumsum(torch.bincount(keys // max(in_features, 1),
                                                  minlength=out_features), 0)
        return cls(row_ptr, col, in_features, validate=False)

    @classmethod
    def from_dense(cls, mask: Tensor, capacity: Optional[int] = None) -> EdgeList:
        """From a (out_features, in_features) mask or weight: an edge where it is nonzero."""
        if not isinstance(mask, Tensor) or mask.dim() != 2:
            raise ValueError("mask must be a 2-D tensor (out_features, in_features)")
        dst, src = mask.nonzero(as_tuple=True)  # row-major: already sorted by (dst, src)
        return cls.from_coo(src, dst, mask.shape[1], mask.shape[0], capacity)

    # -- views
    def dst_index(self) -> Tensor:
        """(capacity,) destination of every slot; spare slots get out_features."""
        return reference_graph.dst_index(self.row_ptr, self.capacity)

    def to_coo(self) -> tuple[Tensor, Tensor]:
        """(src, dst) of the nnz edges, in slot order."""
        nnz = self.nnz
        return self.col[:nnz].clone(), self.dst_index()[:nnz]

    def to_dense(self, values: Optional[Tensor] = None) -> Tensor:
        """(out_features, in_features) weight (values per slot) or 0/1 mask (values None)."""
        if values is None:
            values = torch.ones(self.capacity, device=self.device)
        return reference_graph.dense_weight(self.row_ptr, self.col, values, self.in_features)

    def fan_in(self) -> Tensor:
        return self.row_ptr[1:] - self.row_ptr[:-1]

    def fan_out(self) -> Tensor:
        return torch.bincount(self.col[:self.nnz], minlength=self.in_features)

    def to(self, device) -> EdgeList:
        return EdgeList(self.row_ptr.to(device), self.col.to(device), self.in_features,
                        validate=False)

    def transpose(self) -> tuple[Tensor, Tensor, Tensor]:
        """CSR by source, cached: (t_ptr (in_features + 1,), t_dst (capacity,), t_perm
        (capacity,)): the edges out of source s are slots t_perm[t_ptr[s]:t_ptr[s + 1]] with
        destinations t_dst[...]. Device-side sorts only (no host synchronisation)."""
        if self._transpose is None:
            k = self.in_features
            d = self.dst_index()
            key = torch.where(d < self.out_features, self.col, k)  # spare slots sort last
            sorted_key, perm = torch.sort(key, stable=True)
            t_ptr = torch.searchsorted(sorted_key, torch.arange(k + 1, device=self.device))
            self._transpose = (t_ptr, d[perm].contiguous(), perm)
        return self._transpose


def _check_index(name: str, t, bound: int) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"{name} must be an integer tensor, got {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    t = t.long()
    if t.numel() and bool(((t < 0) | (t >= bound)).any()):
        raise ValueError(f"{name} entries must be in [0, {bound})")
    return t


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
    if v is None:
        return -1
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{name} must be None or a non-negative int, got {v!r}")
    return v


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
    src = _check_index("src", src, edges.in_features).to(edges.device)
    dst = _check_index("dst", dst, edges.out_features).to(edges.device)
    if src.shape != dst.shape:
        raise ValueError(f"src {tuple(src.shape)} and dst {tuple(dst.shape)} must match")
    if values is not None:
        _check_values(values, edges)
    if isinstance(init_values, Tensor):
        if init_values.shape not in ((src.numel(),), ()):
            raise ValueError(f"init_values shape {tuple(init_values.shape)} must be "
                             f"({src.numel()},) or a scalar")
    elif isinstance(init_values, bool) or not isinstance(init_values, (int, float)):
        raise TypeError("init_values must be a float or a tensor, got "
                        f"{type(init_values).__name__}")
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
        idx = _check_index("mask_or_indices", m, nnz)
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
