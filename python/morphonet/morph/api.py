"""Morph.py's API made real: `once`, `widen`, `resize_layers`, and MorphNet's `expand`.

- ``once(model, example_inputs)``: one regularise → shrink step on a copy of the model: the
  channels a MorphNet regulariser finds dead (batch-norm γ, or filter norms when the model has
  no batch norm, below a threshold) are removed, their constants folded into the next layers,
  and the smaller model is returned (the argument is left as it was). On a model trained with a
  `NetworkRegularizer` it returns the learned, smaller network; on a model whose channels are
  all alive it returns an equal copy, and says so in ``report``.
- ``widen(model, example_inputs, factor=1.4)``: Net2Net widening that keeps the function.
- ``resize_layers(model, example_inputs, width_factor=1.4)``: every free width × a factor, a
  new model with a forward, weights kept where the sizes overlap.
- ``expand(model, example_inputs, flops)``: MorphNet's expand step: one uniform multiplier on
  the (learned) widths, the largest whose model fits ``flops`` per example.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Optional

from torch import nn

from ..checks import check_instance, check_real
from .graph import ChannelGraph, trace
from .regularize import NetworkRegularizer
from .surgery import resize, shrink, widen

__all__ = ["expand", "expand_widths", "once", "resize_layers", "widen"]


def once(model: nn.Module, example_inputs: Any, *, kind: Optional[str] = None,
         threshold: Optional[float] = None, report: Optional[dict] = None) -> nn.Module:
    """A smaller copy of ``model`` without the channels that MorphNet's regulariser of
    ``kind`` (default ``"gamma"`` when the model has batch norms on a free channel group, else
    ``"group_lasso"``) finds below ``threshold``: they are made dead (`NetworkRegularizer.prune`)
    and removed exactly (`shrink`). The new model needs a new optimizer. ``report`` (a dict)
    receives the widths before and after and the FLOPs per example before and after."""
    check_instance("model", model, nn.Module)
    work = copy.deepcopy(model)
    graph = trace(work, example_inputs)
    if kind is None:
        has_bn = any(g.norms for g in graph.free_groups())
        kind = "gamma" if has_bn else "group_lasso"
    if kind == "gates":
        raise ValueError("once() cannot learn gates; train with a NetworkRegularizer of "
                         "kind='gates', call its prune(), then shrink")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # groups without batch norm simply keep their width
        reg = NetworkRegularizer(work, example_inputs, kind, threshold=threshold, graph=graph)
    widths = reg.prune()
    small = shrink(work, example_inputs, graph=graph)
    if report is not None:
        report.update(kind=kind, widths_before=graph.widths(), widths_after=widths,
                      flops_before=graph.flops(), flops_after=graph.flops(widths),
                      changed=widths != graph.widths())
    return small


def resize_layers(model: nn.Module, example_inputs: Any, width_factor: float = 1.4,
                  seed: Optional[int] = None) -> nn.Module:
    """Morph.py's ``resize_layers``: `resize` with one factor for every free width."""
    return resize(model, example_inputs, width_factor, seed=seed)


def expand_widths(graph: ChannelGraph, flops: float,
                  widths: Optional[dict[int, int]] = None) -> tuple[float, dict[int, int]]:
    """(factor, widths): the largest uniform factor f (to 1e-4) such that every free group at
    ``max(1, round(f · width))`` channels (``widths``: the starting widths per group, default
    the graph's) costs at most ``flops`` per example."""
    flops = check_real("flops", flops, 0, lo_open=True)
    start = graph.widths() | dict(widths or {})
    free = [g.id for g in graph.free_groups()]

    def at(f: float) -> dict[int, int]:
        return start | {gid: max(1, round(f * start[gid])) for gid in free}

    if graph.flops(at(0.0)) > flops:
        raise ValueError(f"{flops:.4g} FLOPs per example is below the smallest model of this "
                         f"structure ({graph.flops(at(0.0)):.4g}: one channel per free group)")
    lo, hi = 0.0, 1.0
    while graph.flops(at(hi)) <= flops:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise ValueError("the FLOPs do not grow with the widths: nothing to expand")
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if graph.flops(at(mid)) <= flops else (lo, mid)
    return lo, at(lo)


def expand(model: nn.Module, example_inputs: Any, flops: float,
           seed: Optional[int] = None) -> nn.Module:
    """MorphNet's expand step: ``model``'s free widths × one factor, the largest whose FLOPs per
    example are at most ``flops`` (`expand_widths`); weights kept where the sizes overlap, new
    channels initialised as their layers initialise (retrain the result)."""
    graph = trace(model, example_inputs)
    _, widths = expand_widths(graph, flops)
    return resize(model, example_inputs, widths=widths, seed=seed)


widen = widen  # re-exported: Morph.py's name
