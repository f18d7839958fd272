"""Regrow of a `BlockSparseLayout` (drop k live blocks, grow k dead ones at constant capacity):
the backend choice behind `BlockSparseLayout.regrow` and `BlockSparseLinear.regrow`.

Backends, chosen per call (MORPHO_BACKEND forces one):
* triton    CUDA tensors (CPU only under TRITON_INTERPRET=1 with MORPHO_BACKEND=triton, for
            tests), drop ≤ `MAX_DROP`: three kernels (morpho_kernels/triton/regrow.py) — slot
            norms (skipped when drop scores are given), both selections and the index rebuild
            in one program, the zeroing of values and optimizer moments.
* reference the ATen ops of `BlockSparseLayout._regrow_reference` (stable sorts, index fills,
            `rebuild`): any device, ~40 launches on a GPU.
Both give the same rows, cols, orders, pointers, slots and zeroed tensors, bit for bit
(tests/kernels/test_regrow.py). Not a torch custom op: a regrow is an in-place structure
change between steps, outside autograd and torch.compile (a CUDA graph captures it instead,
`GraphedRegrow`).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._dispatch import FLOAT_DTYPES, Backend, CallSpec, Dispatcher, check_reference, forced_backend
from ..formats import BlockSparseLayout

_triton_import_error: Optional[str] = None
try:
    from ..triton import regrow as _tk
except Exception as exc:  # ImportError, or triton failing to initialise
    _tk = None
    _triton_import_error = f"triton unavailable ({type(exc).__name__}: {exc})"

MAX_DROP = _tk.MAX_DROP if _tk is not None else 0


def _check_triton(spec: CallSpec) -> Optional[str]:
    if _tk is None:
        return _triton_import_error
    if spec.device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available"
    elif spec.device.type == "cpu":
        if not _tk.INTERPRET or forced_backend() != "triton":
            return ("CPU tensors run Triton only under TRITON_INTERPRET=1 with "
                    "MORPHO_BACKEND=triton (a test mode)")
    else:
        return f"device type {spec.device.type} is not supported"
    if spec.dtype not in FLOAT_DTYPES:
        return f"dtype {spec.dtype} is not floating"
    if spec.size("drop") > MAX_DROP:
        return (f"drop={spec.size('drop')} exceeds {MAX_DROP}, the most the one-program "
                "selection keeps in registers")
    if spec.size("blocks") >= 2**31:
        return "the block grid has 2^31 blocks or more (int32 keys)"
    return None


DISPATCH = Dispatcher("regrow", [Backend("triton", _check_triton),
                                 Backend("reference", check_reference)])


def _contiguous_scores(t: Tensor, device: torch.device) -> Tensor:
    t = t.detach().to(device)
    if not t.dtype.is_floating_point:
        t = t.float()
    return t.reshape(-1).contiguous()  # a copy only for non-contiguous scores


def regrow_layout(layout: BlockSparseLayout, values: Tensor, drop: int, grow_scores: Tensor,
                  drop_scores: Optional[Tensor], also_zero: tuple) -> Tensor:
    """`BlockSparseLayout.regrow` after its checks (drop > 0): the chosen backend's regrow,
    in place; returns the (drop,) int64 slots that changed."""
    nbr, nbc = layout.grid
    spec = CallSpec(layout.device, values.dtype,
                    (("drop", drop), ("blocks", nbr * nbc), ("capacity", layout.capacity)))
    if DISPATCH.choose(spec) == "reference":
        return layout._regrow_reference(values, drop, grow_scores, drop_scores, also_zero)
    index = layout.tensors()
    with torch.no_grad():
        if drop_scores is None:
            drop_scores = _tk.slot_norms(values.contiguous())
        slots = _tk.select_rebuild(index, layout.grid, drop,
                                   _contiguous_scores(drop_scores, layout.device),
                                   _contiguous_scores(grow_scores, layout.device))
        dense = [t for t in (values, *also_zero) if t.is_contiguous()]
        _tk.zero_slots(slots, dense)
        for t in (values, *also_zero):
            if not t.is_contiguous():  # the kernel writes whole contiguous blocks
                t.index_fill_(0, slots, 0)
    # the kernels wrote behind autograd's back: bump the version counters as the ATen path's
    # in-place ops do, so a graph that saved one of these tensors refuses to use it
    torch.autograd.graph.increment_version([*index, *dense])
    return slots
