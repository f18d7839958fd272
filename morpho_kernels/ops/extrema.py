"""morpho::extrema_stats: per-neuron counts below / above thresholds, mean, min and max in one
pass, with a running state that accumulates across batches.

Order (DESIGN.md convention 1): backends and checks → custom op with fake kernel → public
function. Kernels: csrc/cpu/extrema.cpp (one pass, per-thread partials),
csrc/cuda/extrema_kernels.cuh (one kernel per call: packed bf16x2 / fp16x2 arithmetic, the last
block merges the partials; grid and launch in extrema_launch.cuh, called from graph.cu); reference:
morpho_kernels/reference_graph.py (five passes).

Backends, chosen per call (MORPHO_BACKEND forces one):
* ext       C++ (CPU) / CUDA (when built with CUDA), fp16 / bf16 / fp32 / fp64.
* reference pure PyTorch, five passes (any device and float dtype).
No Triton backend: MORPHO_BACKEND=triton raises for this op.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .. import _ext, reference_graph
from .._dispatch import FLOAT_DTYPES, Backend, CallSpec, Dispatcher, check_ext, check_reference
from ..checks import check_int, check_real


class ExtremaStats(NamedTuple):
    """Per-neuron statistics; pass it back as ``state`` to accumulate over batches.

    below, above: int64 (C,) counts of values < low and > high. mean, min, max: fp32 (C,).
    count: int64 0-dim, values seen per neuron. NaN inputs make mean / min / max NaN and are
    counted in neither below nor above. With count 0: mean NaN, min +inf, max −inf."""

    below: Tensor
    above: Tensor
    mean: Tensor
    min: Tensor
    max: Tensor
    count: Tensor


# ----------------------------------------------------------------------------- backends

@functools.cache
def _register_ext_fakes() -> None:
    """Fake kernel of the C++ op (traced under torch.compile); registered once, when loaded."""

    @torch.library.register_fake("morpho::extrema_reduce")
    def _fake(x, low, high):
        c = x.shape[1]
        i64 = dict(dtype=torch.int64, device=x.device)
        f32 = dict(dtype=torch.float32, device=x.device)
        return (x.new_empty(c, **i64), x.new_empty(c, **i64), x.new_empty(c, **f32),
                x.new_empty(c, **f32), x.new_empty(c, **f32), x.new_empty((), **i64))


def _check_ext(spec: CallSpec) -> Optional[str]:
    return check_ext(spec, dtypes=FLOAT_DTYPES, on_ready=_register_ext_fakes)


DISPATCH = Dispatcher("extrema_stats",
                      [Backend("ext", _check_ext), Backend("reference", check_reference)])


# ----------------------------------------------------------------------------- custom op


@torch.library.custom_op("morpho::extrema_stats", mutates_args=())
def _extrema_op(x: Tensor, low: float, high: float) -> tuple[Tensor, Tensor, Tensor, Tensor,
                                                             Tensor, Tensor]:
    """x: (outer, C, inner) → (below, above, mean, min, max, count) over outer·inner."""
    outer, c, inner = x.shape
    spec = CallSpec(x.device, x.dtype, (("rows", outer * inner), ("n", c)))
    if DISPATCH.choose(spec) == "ext":
        return tuple(_ext.ops().extrema_reduce(x, low, high))
    return reference_graph.extrema_stats(x, low, high)


@_extrema_op.register_fake
def _extrema_fake(x, low, high):
    c = x.shape[1]
    i64 = dict(dtype=torch.int64, device=x.device)
    f32 = dict(dtype=torch.float32, device=x.device)
    return (x.new_empty(c, **i64), x.new_empty(c, **i64), x.new_empty(c, **f32),
            x.new_empty(c, **f32), x.new_empty(c, **f32), x.new_empty((), **i64))


# ----------------------------------------------------------------------------- public function


def _as_channels(x: Tensor, channel_dim: Optional[int]) -> Tensor:
    """View x as (outer, C, inner) with the channel dimension in the middle."""
    if channel_dim is None:
        channel_dim = 1 if x.dim() == 4 else -1
    d = check_int("channel_dim", channel_dim, -x.dim(), x.dim() - 1) % x.dim()
    outer = math.prod(x.shape[:d])
    inner = math.prod(x.shape[d + 1:])
    return x.reshape(outer, x.shape[d], inner)


def _check_state(state, c: int, device: torch.device) -> ExtremaStats:
    if not isinstance(state, tuple) or len(state) != 6:
        raise TypeError("state must be the ExtremaStats returned by a previous call, got "
                        f"{type(state).__name__}")
    state = ExtremaStats(*state)
    if state.below.shape != (c,):
        raise ValueError(f"state has width {tuple(state.below.shape)} but the activations have "
                         f"{c} neurons/channels (a state from another layer?)")
    if state.below.device != device:
        raise ValueError(f"state is on {state.below.device} but activations are on {device}")
    return state


def combine(a: ExtremaStats, b: ExtremaStats) -> ExtremaStats:
    """Statistics of the union of two batches (no host synchronisation)."""
    n = a.count + b.count

    def weighted(st: ExtremaStats) -> Tensor:  # Σ x per neuron, 0 for an empty side
        return torch.where(st.count > 0, st.mean.double() * st.count.double(), 0.0)

    mean = torch.where(n > 0, (weighted(a) + weighted(b)) / n.clamp(min=1).double(),
                       float("nan"))
    nan_min = lambda u, v: torch.where(u.isnan() | v.isnan(), float("nan"), torch.minimum(u, v))  # noqa: E731
    nan_max = lambda u, v: torch.where(u.isnan() | v.isnan(), float("nan"), torch.maximum(u, v))  # noqa: E731
    return ExtremaStats(a.below + b.below, a.above + b.above, mean.float(), nan_min(a.min, b.min),
                        nan_max(a.max, b.max), n)


def extrema_stats(activations: Tensor, low: float, high: float,
                  state: Optional[ExtremaStats] = None,
                  channel_dim: Optional[int] = None) -> ExtremaStats:
    """Per-neuron extrema statistics of a batch of activations, in one pass.

    Args:
        activations: fp16 / bf16 / fp32 / fp64 tensor; statistics per neuron of the last dim, or
            per channel (dim 1) of a 4-D N×C×H×W tensor, or per ``channel_dim`` if given.
        low, high: thresholds, ``low <= high`` (±inf allowed, NaN not); a value counts as
            below when ``< low`` and as above when ``> high``.
        state: the result of a previous call on the same layer: the returned statistics then
            cover every batch seen (counts add, the mean is the count-weighted mean).
        channel_dim: override of the statistics dimension.

    Returns:
        ExtremaStats(below, above, mean, min, max, count).

    Raises:
        TypeError / ValueError naming the argument (low > high, a state of another width, ...);
        BackendUnavailableError when MORPHO_BACKEND forces a backend that cannot serve the call.
    """
    if not isinstance(activations, Tensor):
        raise TypeError(f"activations must be a torch.Tensor, got {type(activations).__name__}")
    if not activations.dtype.is_floating_point:
        raise TypeError(f"activations must be floating point, got {activations.dtype}")
    if activations.dim() == 0:
        raise ValueError("activations must have at least one dimension")
    low = check_real("low", low, allow_inf=True)  # ±inf: a threshold nothing crosses
    high = check_real("high", high, allow_inf=True)
    if low > high:
        raise ValueError(f"low ({low}) must be <= high ({high})")
    x3 = _as_channels(activations.detach(), channel_dim)
    if state is not None:
        state = _check_state(state, x3.shape[1], activations.device)
    out = ExtremaStats(*_extrema_op(x3, low, high))
    return out if state is None else combine(state, out)
