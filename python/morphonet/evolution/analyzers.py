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
  (the input for the first stage) *and* more than ``tolerance`` (1e-9) bits below it, so
  equal estimates that differ only by float rounding are never bottlenecks; bottlenecks are
  listed worst first. **Saturation**: once a layer's codes are distinct on every analysis
  sample (likely when bins^width ≫ samples: 2^160 against 320 samples), the estimate is
  exactly H(Y) for that layer (reported as ``saturated``), and a stage after a saturated
  layer can only be a bottleneck if it is itself not saturated. With the experiment's widths
  (64 / 40 inputs, 160 / 80 hidden, 320 analysis samples) input and hidden layers all
  saturate, so the analyzer reports no bottlenecks there: the estimator cannot see
  information loss between wide layers. ``bins`` does not change this for D ≫ log2(samples).
  The option ``components=k`` does not saturate: each layer's activations (centred on the
  analysis samples) are projected on their top k principal directions (SVD) before binning,
  so a code has at most bins^k values (k = 3, 2 bins: 8 codes, below H(Y) = log2 10 bits);
  it then estimates what the layer's k main directions carry about Y, a different and
  coarser quantity (not bounded by the data processing inequality: a later layer can score
  higher). The default (None) bins every neuron. The pipeline uses the default, so with its
  widths the information-flow strategy never fires.
* `GraphAnalyzer`: networkx on the connection graph (neurons as nodes, live connections
  with |w| above ``weight_threshold`` as edges): degrees, clustering, components,
  input → output reachability and path lengths, dead ends, betweenness centrality.
* `NetworkStatsAnalyzer`: the network's `get_network_stats` (connections, parameters,
  architecture, depth, connectivity, residual blocks).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from morpho_kernels import extrema_stats

from ..checks import check_int, check_real
from .interfaces import Analyzer, NetworkContext

__all__ = ["GraphAnalyzer", "NetworkStatsAnalyzer", "SimpleInformationFlowAnalyzer",
           "StandardExtremaAnalyzer", "connection_graph", "layer_codes",
           "plugin_mutual_information", "principal_projection", "stage_activations"]


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


def principal_projection(h: Tensor, k: int) -> Tensor:
    """(N, min(k, D, N)) coordinates of the centred rows of ``h`` on its top ``k`` principal
    directions (SVD; signs as torch returns them, which binning does not care about)."""
    c = h - h.mean(0, keepdim=True)
    u, sv, _ = torch.linalg.svd(c, full_matrices=False)
    k = min(k, sv.numel())
    return u[:, :k] * sv[:k]


class SimpleInformationFlowAnalyzer(Analyzer):
    """Per-layer information about the labels and the bottlenecks (module docstring).

    Returns ``information_flow`` (bits per layer: input, hidden stages, logits),
    ``label_entropy`` (H(Y), bits), ``layer_information`` (per hidden stage: ``layer``,
    ``stage``, ``width``, ``information``, ``loss``: bits below the layer before,
    ``saturated``: the estimate equals H(Y) within ``tolerance``), ``bottlenecks`` (stage
    uids, worst first), ``saturated_layers`` (how many of the hidden stages are saturated)
    and ``information_batches``.
    """

    def __init__(self, max_batches: int = 10, bins: int = 2, min_loss: float = 0.05,
                 tolerance: float = 1e-9, components: Optional[int] = None):
        self.max_batches = check_int("max_batches", max_batches, 1)
        self.bins = check_int("bins", bins, 1)
        self.min_loss = check_real("min_loss", min_loss, 0)
        self.tolerance = check_real("tolerance", tolerance, 0)
        self.components = check_int("components", components, 1, optional=True)

    def _codes(self, h: Tensor) -> Tensor:
        if self.components is not None:
            h = principal_projection(h, self.components)
        return layer_codes(h, self.bins)

    def analyze(self, context: NetworkContext) -> dict:
        """The information estimates of ``context.network`` on the analysis batches."""
        net = context.network
        batches = context.analysis_batches(self.max_batches)
        acts = stage_activations(net, batches)
        y = torch.cat([b[1] for b in batches]).cpu()
        flow = [plugin_mutual_information(
            self._codes(torch.cat([a[l] for a in acts]).float().cpu()), y)
            for l in range(len(acts[0]))]
        h_y = plugin_mutual_information(y, y)
        per, bottle = [], []
        for s in net.hidden():
            loss = flow[s] - flow[s + 1]
            uid = int(net.stages[s].uid)
            per.append({"layer": s, "stage": uid, "width": net.stages[s].out_features,
                        "information": flow[s + 1], "loss": loss,
                        "saturated": abs(flow[s + 1] - h_y) <= self.tolerance})
            if loss >= self.min_loss and loss > self.tolerance:
                bottle.append((loss, uid))
        return {"information_flow": flow, "label_entropy": h_y, "layer_information": per,
                "saturated_layers": sum(p["saturated"] for p in per),
                "bottlenecks": [u for _, u in sorted(bottle, reverse=True)],
                "information_batches": len(batches)}


def connection_graph(net, weight_threshold: float = 0.0):
    """The network's connection graph as a ``networkx.DiGraph``: a node ``(l, i)`` per neuron
    i of layer l (0 = input, l = output of stage l − 1; a residual block's inner neuron j of
    stage s is ``(l, "b<uid>", j)``), an edge per live connection with |w| > ``weight_threshold``
    (attribute ``weight``), and the identity path of residual stages (weight 1)."""
    import networkx as nx

    g = nx.DiGraph()
    arch = net.architecture()
    for l, w in enumerate(arch):
        g.add_nodes_from((l, i) for i in range(w))

    def add(lay, src_node, dst_node):
        src, dst = lay.edges.to_coo()
        vals = lay.values.detach()[:src.numel()].abs()
        keep = vals > weight_threshold
        g.add_weighted_edges_from((src_node(int(a)), dst_node(int(b)), float(v)) for a, b, v
                                  in zip(src[keep], dst[keep], vals[keep]))

    for s, st in enumerate(net.stages):
        add(st.layer, lambda a, s=s: (s, a), lambda b, s=s: (s + 1, b))
        if st.residual:
            g.add_weighted_edges_from(((s, i), (s + 1, i), 1.0) for i in range(arch[s]))
        for b in st.blocks:
            tag = f"b{b.uid}"
            add(b.first, lambda a, s=s: (s + 1, a), lambda j, s=s, t=tag: (s + 1, t, j))
            add(b.second, lambda j, s=s, t=tag: (s + 1, t, j), lambda i, s=s: (s + 1, i))
    return g


class GraphAnalyzer(Analyzer):
    """Graph metrics of the connection graph (`connection_graph`, networkx).

    Args:
        weight_threshold: connections with |w| at or below it are left out.
        centrality_samples: sources sampled for betweenness centrality (None: exact).
        top_k: how many most central neurons to name.
        seed: the sampling seed.

    Returns ``graph_nodes``, ``graph_edges``, ``mean_degree`` (edges per node, in + out),
    ``max_in_degree``, ``max_out_degree``, ``isolated_neurons`` (degree 0),
    ``average_clustering`` (undirected), ``components`` (weakly connected),
    ``largest_component_fraction``, ``reachable_outputs`` (share of outputs with a path from
    some input), ``mean_path_length`` (mean shortest input → output path over connected pairs;
    None when none), ``dead_end_neurons`` (hidden neurons with input but no path to an
    output), ``max_betweenness`` and ``central_neurons`` (the ``top_k`` nodes by betweenness,
    as [layer, neuron] lists).
    """

    def __init__(self, weight_threshold: float = 0.0, centrality_samples: Optional[int] = None,
                 top_k: int = 5, seed: int = 0):
        self.weight_threshold = check_real("weight_threshold", weight_threshold, 0)
        self.centrality_samples = check_int("centrality_samples", centrality_samples, 1,
                                            optional=True)
        self.top_k = check_int("top_k", top_k, 0)
        self.seed = check_int("seed", seed, 0)

    def analyze(self, context: NetworkContext) -> dict:
        """The graph metrics of ``context.network``."""
        import networkx as nx

        net = context.network
        g = connection_graph(net, self.weight_threshold)
        arch = net.architecture()
        inputs = [(0, i) for i in range(arch[0])]
        outputs = [(len(arch) - 1, i) for i in range(arch[-1])]
        u = g.to_undirected()
        comps = list(nx.connected_components(u))
        from_in = set().union(*(nx.descendants(g, x) for x in inputs))
        to_out = set().union(*(nx.ancestors(g, y) for y in outputs))
        lengths = [d for x in inputs for y, d in
                   nx.single_source_shortest_path_length(g, x).items() if y in set(outputs)]
        hidden = [n for n in g if n[0] not in (0, len(arch) - 1) or len(n) == 3]
        k = None if self.centrality_samples is None else min(self.centrality_samples, len(g))
        bc = nx.betweenness_centrality(g, k=k, seed=self.seed)
        top = sorted(bc, key=lambda n: (-bc[n], str(n)))[:self.top_k]
        n_nodes = g.number_of_nodes()
        return {
            "graph_nodes": n_nodes, "graph_edges": g.number_of_edges(),
            "mean_degree": 2 * g.number_of_edges() / max(1, n_nodes),
            "max_in_degree": max((d for _, d in g.in_degree()), default=0),
            "max_out_degree": max((d for _, d in g.out_degree()), default=0),
            "isolated_neurons": sum(1 for _, d in u.degree() if d == 0),
            "average_clustering": nx.average_clustering(u) if n_nodes else 0.0,
            "components": len(comps),
            "largest_component_fraction": max(map(len, comps)) / n_nodes if comps else 0.0,
            "reachable_outputs": sum(y in from_in for y in outputs) / len(outputs),
            "mean_path_length": sum(lengths) / len(lengths) if lengths else None,
            "dead_end_neurons": sum(1 for n in hidden if g.in_degree(n) and n not in to_out),
            "max_betweenness": max(bc.values(), default=0.0),
            "central_neurons": [[n[0], n[-1]] for n in top],
        }
