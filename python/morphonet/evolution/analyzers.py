"""Analyzers: metrics of the network that the strategies read. Each honours its arguments
(the seed's ignored its thresholds).

* `StandardExtremaAnalyzer(max_batches, dead_threshold, saturated_multiplier)`: over the
  first ``max_batches`` training batches of the iteration, per hidden stage and neuron the
  mean and max of |activation| (counted by `morpho_kernels.extrema_stats`, the first
  generation's kernel): a neuron is **dead** when its mean |activation| is below
  ``dead_threshold``, **saturated** when it is above ``saturated_multiplier`` × the layer's
  average of those means, **zero** when it was exactly 0 on every sample (a dead ReLU).
  Patterns name their stage by index (``layer``) and by uid (``stage``, stable when layers
  are inserted).
* `NetworkStatsAnalyzer`: the network's `get_network_stats` (connections, parameters,
  architecture, depth, connectivity, residual blocks).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from morpho_kernels import extrema_stats

from ..checks import check_int, check_real
from .interfaces import Analyzer, NetworkContext

__all__ = ["NetworkStatsAnalyzer", "StandardExtremaAnalyzer", "stage_activations"]


@torch.no_grad()
def stage_activations(net, batches: list[tuple[Tensor, Tensor]]) -> list[list[Tensor]]:
    """Every stage's output per batch (``[input, hidden..., logits]`` each), in eval mode."""
    was, tracked = net.training, net.track
    net.eval()
    net.track = True
    try:
        out = []
        for x, _ in batches:
            net(x)
            out.append(net.activations)
        return out
    finally:
        net.train(was)
        net.track = tracked
        net.activations = []


class StandardExtremaAnalyzer(Analyzer):
    """Dead and saturated neurons (module docstring).

    Returns ``extrema_patterns`` (per hidden stage: ``layer``, ``stage``, ``width``,
    ``dead``, ``saturated``, ``zero`` as lists of neuron indices, ``mean_abs`` of the layer),
    ``dead_neurons``, ``saturated_neurons``, ``hidden_neurons``, ``extrema_ratio`` ((dead +
    saturated) / hidden neurons) and ``extrema_batches`` (batches used).
    """

    def __init__(self, max_batches: int = 10, dead_threshold: float = 0.01,
                 saturated_multiplier: float = 2.5):
        self.max_batches = check_int("max_batches", max_batches, 1)
        self.dead_threshold = check_real("dead_threshold", dead_threshold, 0)
        self.saturated_multiplier = check_real("saturated_multiplier", saturated_multiplier,
                                               1)

    def analyze(self, context: NetworkContext) -> dict:
        """The extrema of ``context.network`` on the iteration's analysis batches."""
        net = context.network
        batches = context.analysis_batches(self.max_batches)
        acts = stage_activations(net, batches)
        patterns, dead_n, sat_n, hidden_n = [], 0, 0, 0
        for s in net.hidden():
            st = None
            for per_batch in acts:
                st = extrema_stats(per_batch[s + 1].abs().float(), self.dead_threshold,
                                   math.inf, state=st)
            patterns.append(self._pattern(net, s, st.mean, st.max))
            dead_n += len(patterns[-1]["dead"])
            sat_n += len(patterns[-1]["saturated"])
            hidden_n += int(st.mean.numel())
        return {"extrema_patterns": patterns, "dead_neurons": dead_n,
                "saturated_neurons": sat_n, "hidden_neurons": hidden_n,
                "extrema_ratio": (dead_n + sat_n) / max(1, hidden_n),
                "extrema_batches": len(batches)}

    def _pattern(self, net, s: int, mean_abs: Tensor, max_abs: Tensor) -> dict:
        layer_mean = float(mean_abs.mean())
        dead = mean_abs < self.dead_threshold
        sat = (mean_abs > self.saturated_multiplier * layer_mean) & ~dead if layer_mean > 0 \
            else torch.zeros_like(dead)
        return {"layer": s, "stage": int(net.stages[s].uid), "width": int(mean_abs.numel()),
                "dead": dead.nonzero().flatten().tolist(),
                "saturated": sat.nonzero().flatten().tolist(),
                "zero": (max_abs == 0).nonzero().flatten().tolist(), "mean_abs": layer_mean}


class NetworkStatsAnalyzer(Analyzer):
    """The network's statistics (`EvolvableNetwork.get_network_stats`; for another module,
    its parameter count as ``total_parameters``)."""

    def analyze(self, context: NetworkContext) -> dict:
        """``total_connections``, ``total_parameters``, ``architecture``, ``depth``,
        ``connectivity``, ``residual_blocks``, ``layers``."""
        net = context.network
        if hasattr(net, "get_network_stats"):
            return dict(net.get_network_stats())
        return {"total_parameters": sum(p.numel() for p in net.parameters())}

