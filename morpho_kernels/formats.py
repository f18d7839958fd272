"""Run-time formats of learned sparse structure, and their validators.

`BlockSparseLayout`: which b×b blocks of an (out, in) weight are live, as a fixed-capacity block
list. Each live block owns a slot s (0 ≤ s < capacity) of a values tensor (capacity, b, b)
and never moves while it lives: regrowing a block reuses the slot of a dropped one, so the values
tensor, its optimizer moments and any captured graph keep their shape and storage.

Index tensors (int32, on the layout's device):
  rows, cols   (C,)        block coordinates of slot s
  row_order    (C,)        slots sorted by (row, col): the forward walks a block row
  row_ptr      (R + 1,)    row_order[row_ptr[r]:row_ptr[r+1]] are the slots of block row r
  col_order    (C,)        slots sorted by (col, row): the transpose, for dX
  col_ptr      (Kb + 1,)   likewise per block column
`rebuild()` recomputes the four derived tensors on the device, in place, without a host
synchronisation (sort + searchsorted), so a layout change inside a training step costs a few
small kernels and no sync. `BLOCK_SIZES` is the one list of legal block sizes (checked by
`check_block_size`).

`EdgeList`: a layer's connections as CSR by destination (int64 ``row_ptr`` (out + 1,), ``col``
(capacity,)) with spare capacity, one value per slot beside it; the format of `sparse_linear`
and of the structural edits in morpho_kernels/ops/edges.py (`insert_connections`,
`remove_connections`), which also re-exports it. `check_index` validates the 1-D integer index
tensors (sources, destinations, slots) those ops take.

This module imports no op module (the ops import it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import torch
from torch import Tensor

from . import reference_graph
from .checks import check_choice, check_fraction, check_int

BLOCK_SIZES = (16, 32, 64, 128)


def check_block_size(block_size: int) -> int:
    """``block_size`` as an int from `BLOCK_SIZES`: TypeError for a non-int (``16.0``, ``True``),
    ValueError for another size."""
    return check_choice("block_size", check_int("block_size", block_size), BLOCK_SIZES)


def _check_shape(shape, block_size: int) -> tuple[int, int]:
    if len(shape) != 2 or any(int(s) < 0 for s in shape):
        raise ValueError(f"shape must be (out_features, in_features), got {tuple(shape)}")
    n, k = int(shape[0]), int(shape[1])
    if n % block_size or k % block_size:
        raise ValueError(f"shape {(n, k)} is not a multiple of block_size {block_size} in both "
                         "dims (pad the layer, or choose a smaller block)")
    return n, k


class BlockSparseLayout:
    """Fixed-capacity list of the live b×b blocks of an (out_features, in_features) weight.

    Build with `from_mask`, `from_block_mask` or `from_dense`, or directly from block
    coordinates. `to_dense(values)` / `gather(dense)` convert between a values tensor
    (capacity, b, b) and a dense weight; `regrow` changes the structure at constant capacity.
    """

    def __init__(self, rows: Tensor, cols: Tensor, shape: tuple[int, int], block_size: int,
                 *, validate: bool = True):
        self.block_size = check_block_size(block_size)
        self.shape = _check_shape(shape, self.block_size)
        for name, t in (("rows", rows), ("cols", cols)):
            if not isinstance(t, Tensor) or t.dim() != 1 or t.dtype.is_floating_point:
                raise TypeError(f"{name} must be a 1-D integer tensor")
        if rows.shape != cols.shape or rows.device != cols.device:
            raise ValueError("rows and cols must have the same length and device, got "
                             f"{tuple(rows.shape)} on {rows.device}, {tuple(cols.shape)} on "
                             f"{cols.device}")
        nbr, nbc = self.grid
        if validate and rows.numel():  # host sync: construction only, never in rebuild()
            if int(rows.min()) < 0 or int(rows.max()) >= nbr:
                raise ValueError(f"rows must lie in [0, {nbr}) (block rows of {self.shape})")
            if int(cols.min()) < 0 or int(cols.max()) >= nbc:
                raise ValueError(f"cols must lie in [0, {nbc}) (block columns of {self.shape})")
            keys = rows.long() * nbc + cols.long()
            if torch.unique(keys).numel() != keys.numel():
                raise ValueError("duplicate block coordinates: each live block must appear once")
        dev = rows.device
        self.rows = rows.to(torch.int32).contiguous()
        self.cols = cols.to(torch.int32).contiguous()
        cap = self.rows.numel()
        self.row_order = torch.empty(cap, dtype=torch.int32, device=dev)
        self.col_order = torch.empty(cap, dtype=torch.int32, device=dev)
        self.row_ptr = torch.empty(nbr + 1, dtype=torch.int32, device=dev)
        self.col_ptr = torch.empty(nbc + 1, dtype=torch.int32, device=dev)
        self.rebuild()

    @classmethod
    def wrap(cls, rows: Tensor, cols: Tensor, row_ptr: Tensor, row_order: Tensor,
             col_ptr: Tensor, col_order: Tensor, shape: tuple[int, int],
             block_size: int) -> BlockSparseLayout:
        """A layout over existing index tensors (e.g. a module's buffers), without copying or
        rebuilding: in-place changes (`regrow`) write into those tensors."""
        self = cls.__new__(cls)
        self.block_size = check_block_size(block_size)
        self.shape = _check_shape(shape, self.block_size)
        self.rows, self.cols, self.row_ptr, self.row_order = rows, cols, row_ptr, row_order
        self.col_ptr, self.col_order = col_ptr, col_order
        return self

    # ------------------------------------------------------------------ properties

    @property
    def grid(self) -> tuple[int, int]:
        """(block rows, block columns)."""
        return self.shape[0] // self.block_size, self.shape[1] // self.block_size

    @property
    def capacity(self) -> int:
        """Number of slots (= live blocks); constant for the layout's lifetime."""
        return self.rows.numel()

    @property
    def device(self) -> torch.device:
        return self.rows.device

    def density(self) -> float:
        """Fraction of the weight's blocks that are live."""
        nbr, nbc = self.grid
        return self.capacity / max(nbr * nbc, 1)

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(rows, cols, row_ptr, row_order, col_ptr, col_order): what the op takes."""
        return self.rows, self.cols, self.row_ptr, self.row_order, self.col_ptr, self.col_order

    def __repr__(self) -> str:
        return (f"BlockSparseLayout(shape={self.shape}, block_size={self.block_size}, "
                f"capacity={self.capacity}, density={self.density():.3f}, device={self.device})")

    # ------------------------------------------------------------------ derived indices

    def rebuild(self) -> None:
        """Recompute row/col orders and pointers from rows/cols, in place, no host sync."""
        nbr, nbc = self.grid
        r, c = self.rows.long(), self.cols.long()
        for key, order, ptr, minor_n in ((r * nbc + c, self.row_order, self.row_ptr, nbc),
                                         (c * nbr + r, self.col_order, self.col_ptr, nbr)):
            sorted_key, idx = torch.sort(key)  # keys are unique: no stability needed
            order.copy_(idx)
            # ptr[i] = number of live blocks whose major index (row, or column) is < i
            bounds = torch.arange(ptr.numel(), dtype=torch.int64, device=self.device)
            ptr.copy_(torch.searchsorted(sorted_key // minor_n, bounds))

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_block_mask(cls, block_mask: Tensor, block_size: int) -> BlockSparseLayout:
        """Layout of the nonzero entries of a (out/b, in/b) block mask."""
        if not isinstance(block_mask, Tensor) or block_mask.dim() != 2:
            raise ValueError("block_mask must be a 2-D tensor (out/b, in/b)")
        b = check_block_size(block_size)
        rows, cols = torch.nonzero(block_mask, as_tuple=True)  # row-major: already row-sorted
        shape = (block_mask.shape[0] * b, block_mask.shape[1] * b)
        return cls(rows, cols, shape, b, validate=False)

    @classmethod
    def from_mask(cls, mask: Tensor, block_size: int) -> BlockSparseLayout:
        """Layout from an element mask of the weight's shape: a block is live when any of its
        elements is nonzero."""
        b = check_block_size(block_size)
        if not isinstance(mask, Tensor) or mask.dim() != 2:
            raise ValueError("mask must be a 2-D tensor (out_features, in_features)")
        n, k = _check_shape(mask.shape, b)
        live = (mask != 0).reshape(n // b, b, k // b, b).any(dim=3).any(dim=1)
        return cls.from_block_mask(live, b)

    @classmethod
    def from_dense(cls, weight: Tensor, block_size: int,
                   density: Optional[float] = None) -> tuple[BlockSparseLayout, Tensor]:
        """(layout, values) from a dense weight: the blocks with any nonzero entry, or, with
        `density`, the fraction of blocks of largest L2 norm (at least one block)."""
        b = check_block_size(block_size)
        if not isinstance(weight, Tensor) or weight.dim() != 2:
            raise ValueError("weight must be a 2-D tensor (out_features, in_features)")
        n, k = _check_shape(weight.shape, b)
        w = weight.detach()
        if density is None:
            layout = cls.from_mask(w, b)
        else:
            density = check_fraction("density", density, lo_open=True)
            norms = w.float().reshape(n // b, b, k // b, b).square().sum(dim=(1, 3))
            keep = max(1, round(density * norms.numel()))
            idx = torch.topk(norms.flatten(), keep).indices
            live = torch.zeros(norms.numel(), dtype=torch.bool, device=w.device)
            live[idx] = True
            layout = cls.from_block_mask(live.reshape(norms.shape), b)
        return layout, layout.gather(w)

    # ------------------------------------------------------------------ conversions

    def block_mask(self) -> Tensor:
        """(out/b, in/b) bool tensor of live blocks."""
        nbr, nbc = self.grid
        m = torch.zeros(nbr * nbc, dtype=torch.bool, device=self.device)
        m[self.rows.long() * nbc + self.cols.long()] = True
        return m.reshape(nbr, nbc)

    def _check_values(self, values: Tensor) -> None:
        b = self.block_size
        if not isinstance(values, Tensor) or values.shape != (self.capacity, b, b):
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(f"values must have shape {(self.capacity, b, b)}, got {got}")
        if values.device != self.device:
            raise ValueError(f"values are on {values.device} but the layout is on {self.device}")

    def to_dense(self, values: Tensor) -> Tensor:
        """Dense (out_features, in_features) weight with `values` at the live blocks."""
        self._check_values(values)
        nbr, nbc = self.grid
        b = self.block_size
        dense = values.new_zeros(nbr, nbc, b, b)
        dense[self.rows.long(), self.cols.long()] = values
        return dense.permute(0, 2, 1, 3).reshape(self.shape)

    def gather(self, dense: Tensor) -> Tensor:
        """values (capacity, b, b) read from a dense weight at the live blocks."""
        if not isinstance(dense, Tensor) or tuple(dense.shape) != self.shape:
            raise ValueError(f"dense must have shape {self.shape}")
        nbr, nbc = self.grid
        b = self.block_size
        blocks = dense.reshape(nbr, b, nbc, b).permute(0, 2, 1, 3)
        return blocks[self.rows.long(), self.cols.long()].contiguous()

    # ------------------------------------------------------------------ structure change

    def regrow(self, values: Tensor, drop: int, grow_scores: Tensor,
               drop_scores: Optional[Tensor] = None, *,
               also_zero: Sequence[Tensor] = ()) -> Tensor:
        """Drop `drop` live blocks and grow as many dead ones, in place, at constant capacity.

        Dropped: the live blocks of smallest `drop_scores` (default: L2 norm of their values).
        Grown: the dead blocks (before this call) of highest `grow_scores` (out/b, in/b); their
        slots are the dropped ones, in rank order (the i-th dropped slot takes the i-th grown
        block), and their values are set to zero, as are those of every tensor in `also_zero`
        (optimizer moments shaped like `values`). NaN scores rank lowest; equal scores go to the
        lower slot / lower block index (row-major). No host synchronisation. Returns the
        (drop,) int64 slots that changed.

        Backends (`morpho_kernels.ops.regrow.DISPATCH`): on CUDA three Triton kernels (slot
        norms; both selections and the index rebuild in one program; the zeroing), on CPU the
        ATen reference (`_regrow_reference`); both give the same result bit for bit.
        """
        drop = self.check_regrow(values, drop, grow_scores, drop_scores, also_zero)
        if drop == 0:
            return torch.empty(0, dtype=torch.int64, device=self.device)
        from .ops.regrow import regrow_layout  # the dispatcher (ops import formats, not back)

        return regrow_layout(self, values, drop, grow_scores, drop_scores, tuple(also_zero))

    def _regrow_reference(self, values: Tensor, drop: int, grow_scores: Tensor,
                          drop_scores: Optional[Tensor], also_zero: Sequence[Tensor]) -> Tensor:
        """`regrow` in ATen ops (the CPU path and the oracle of the Triton one); arguments
        already checked, drop > 0."""
        nbr, nbc = self.grid
        with torch.no_grad():
            if drop_scores is None:  # one reduction kernel, fp32 (fp64) accumulation
                drop_scores = self.block_norms(values)
            # stable sorts, not topk: topk orders equal scores arbitrarily (on CPU it picks
            # neither the lowest nor the highest index), so ties would differ by backend
            slots = torch.sort(_finite(drop_scores.float()), stable=True).indices[:drop]
            keys = self.rows.long() * nbc + self.cols.long()
            scores = _finite(grow_scores.detach().float().flatten().to(self.device))
            scores.index_fill_(0, keys, float("-inf"))  # live blocks never win over dead ones
            grown = torch.sort(scores, descending=True, stable=True).indices[:drop]
            self.rows.index_copy_(0, slots, (grown // nbc).to(torch.int32))
            self.cols.index_copy_(0, slots, (grown % nbc).to(torch.int32))
            for t in (values, *also_zero):
                t.index_fill_(0, slots, 0)
            self.rebuild()
        return slots

    def block_norms(self, values: Tensor) -> Tensor:
        """(capacity,) L2 norm of each slot's block, accumulated in fp32 (fp64 for fp64): the
        default drop scores of `regrow`."""
        self._check_values(values)
        acc = torch.float64 if values.dtype == torch.float64 else torch.float32
        with torch.no_grad():
            return torch.linalg.vector_norm(values, dim=(1, 2), dtype=acc)

    def check_regrow(self, values: Tensor, drop: int, grow_scores: Tensor,
                     drop_scores: Optional[Tensor] = None,
                     also_zero: Sequence[Tensor] = ()) -> int:
        """Raise the error `regrow` would raise for these arguments, changing nothing (callers
        that must fail before a collective, e.g. a distributed regrow, check first); returns
        ``drop`` as an int."""
        self._check_values(values)
        nbr, nbc = self.grid
        drop = check_int("drop", drop, 0)
        if drop > self.capacity:
            raise ValueError(f"drop={drop} exceeds the {self.capacity} live blocks")
        if drop > nbr * nbc - self.capacity:
            raise ValueError(f"drop={drop} exceeds the {nbr * nbc - self.capacity} dead blocks "
                             "that could grow")
        if not isinstance(grow_scores, Tensor) or grow_scores.shape != (nbr, nbc):
            raise ValueError(f"grow_scores must be a tensor of shape {(nbr, nbc)} (out/b, in/b)")
        if drop_scores is not None and (not isinstance(drop_scores, Tensor)
                                        or drop_scores.shape != (self.capacity,)):
            raise ValueError(f"drop_scores must be a tensor of shape ({self.capacity},)")
        for i, t in enumerate(also_zero):
            if (not isinstance(t, Tensor) or t.shape != values.shape
                    or t.device != values.device):
                raise ValueError(f"also_zero[{i}] must be a tensor shaped like values "
                                 f"{tuple(values.shape)} on {values.device}")
        return drop


def _finite(s: Tensor) -> Tensor:
    """Scores with ±inf clamped into the finite range, NaN lowest (dropped first, grown last)
    and -0.0 as +0.0 (a radix sort would order the two zeros; the Triton regrow does not)."""
    fi = torch.finfo(s.dtype)
    return torch.nan_to_num(s, nan=fi.min, posinf=fi.max, neginf=fi.min).add_(0.0)


def as_layout(obj: Union[BlockSparseLayout, object]) -> BlockSparseLayout:
    if not isinstance(obj, BlockSparseLayout):
        raise TypeError(f"layout must be a BlockSparseLayout, got {type(obj).__name__}")
    return obj


# ----------------------------------------------------------------------------- EdgeList


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
        in_features = check_int("in_features", in_features, 0)
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
        """No edges, ``capacity`` spare slots."""
        out_features = check_int("out_features", out_features, 0)
        capacity = check_int("capacity", capacity, 0)
        return cls(torch.zeros(out_features + 1, dtype=torch.int64, device=device),
                   torch.zeros(capacity, dtype=torch.int64, device=device), in_features)

    @classmethod
    def from_coo(cls, src: Tensor, dst: Tensor, in_features: int, out_features: int,
                 capacity: Optional[int] = None) -> EdgeList:
        """From edge lists (any order; duplicates are merged)."""
        in_features = check_int("in_features", in_features, 0)
        out_features = check_int("out_features", out_features, 0)
        capacity = check_int("capacity", capacity, 0, optional=True)
        src, dst = check_index("src", src, in_features), check_index("dst", dst, out_features)
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


def check_index(name: str, t, bound: int) -> Tensor:
    """``t`` as a 1-D int64 tensor with every entry in ``[0, bound)``; TypeError for a
    non-tensor or a non-integer dtype, ValueError for another shape or an entry out of range."""
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
