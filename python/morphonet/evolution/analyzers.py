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
* `SimpleInformationFlowAnalyzer(max_batches, bins, min_loss)`: a plug-in estimate, in bits, of
  the mutual information I(T_l; Y) between each layer's code T_l and the labels Y on the
  analysis batches. A layer's code is the tuple of its neurons' bins (``bins`` equal-width bins
  per neuron over the batches' range; a constant neuron falls in one bin), so
  I(T_l; Y) = H(Y) − H(Y | T_l) with the empirical distributions (`plugin_mutual_information`).
  It is the binning estimator of the information-plane literature: an upper-biased estimate
  for wide layers (distinct codes per sample give H(Y)), exact on small discrete cases (tested:
  a code equal to the label gives H(Y), an independent code 0). A hidden stage is a
  **bottleneck** when its estimate is at least ``min_loss`` bits below the layer before it
  (the input for the first stage); bottlenecks are listed worst first.
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

__all__ = ["NetworkStatsAnalyzer", "SimpleInformationFlowAnalyzer", "StandardExtremaAnalyzer",
           "layer_codes", "plugin_mutual_information", "stage_activations"]


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



def plugin_mutual_information(codes: Tensor, labels: Tensor) -> float:
    """I(C; Y) in bits from paired samples of discrete codes (``codes`` (N,) or (N, D): a row
    is one symbol) and labels (N,), with empirical probabilities: H(Y) − H(Y | C)."""
    if codes.dim() == 1:
        codes = codes[:, None]
    if codes.shape[0] != labels.shape[0] or codes.shape[0] == 0:
        raise ValueError(f"codes ({codes.shape[0]} rows) and labels ({labels.shape[0]}) must "
                         f"pair up, at least one")
    _, c = torch.unique(codes, dim=0, return_inverse=True)
    _, y = torch.unique(labels, return_inverse=True)
    joint = torch.zeros(int(c.max()) + 1, int(y.max()) + 1, dtype=torch.float64)
    joint.index_put_((c, y), torch.ones(c.numel(), dtype=torch.float64), accumulate=True)
    joint /= joint.sum()
    pc, py = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    nz = joint > 0
    return float((joint[nz] * (joint[nz] / (pc @ py)[nz]).log2()).sum())


def layer_codes(h: Tensor, bins: int) -> Tensor:
    """(N, D) int64 bin of every neuron: ``bins`` equal-width bins over each neuron's range
    on these samples (a constant neuron is all in bin 0)."""
    lo, hi = h.amin(0, keepdim=True), h.amax(0, keepdim=True)
    width = (hi - lo).clamp(min=1e-12)
    return ((h - lo) / width * bins).floor().clamp(0, bins - 1).long()


class SimpleInformationFlowAnalyzer(Analyzer):
    """Per-layer information about the labels and the bottlenecks (module docstring).

    Returns ``information_flow`` (bits per layer: input, hidden stages, logits),
    ``label_entropy`` (H(Y), bits), ``layer_information`` (per hidden stage: ``layer``,
    ``stage``, ``width``, ``information``, ``loss``: bits below the layer before),
    ``bottlenecks`` (stage uids, worst first) and ``information_batches``.
    """

    def __init__(self, max_batches: int = 10, bins: int = 2, min_loss: float = 0.05):
        self.max_batches = check_int("max_batches", max_batches, 1)
        self.bins = check_int("bins", bins, 1)
        self.min_loss = check_real("min_loss", min_loss, 0)

    def analyze(self, context: NetworkContext) -> dict:
        """The information estimates of ``context.network`` on the analysis batches."""
        net = context.network
        batches = context.analysis_batches(self.max_batches)
        acts = stage_activations(net, batches)
        y = torch.cat([b[1] for b in batches]).cpu()
        flow = [plugin_mutual_information(
            layer_codes(torch.cat([a[l] for a in acts]).float().cpu(), self.bins), y)
            for l in range(len(acts[0]))]
        per, bottle = [], []
        for s in net.hidden():
            loss = flow[s] - flow[s + 1]
            uid = int(net.stages[s].uid)
            per.append({"layer": s, "stage": uid, "width": net.stages[s].out_features,
                        "information": flow[s + 1], "loss": loss})
            if loss >= self.min_loss and loss > 0:
                bottle.append((loss, uid))
        return {"information_flow": flow, "label_entropy": plugin_mutual_information(y, y),
                "layer_information": per,
                "bottlenecks": [u for _, u in sorted(bottle, reverse=True)],
                "information_batches": len(batches)}
