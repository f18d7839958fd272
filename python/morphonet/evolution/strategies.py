"""Growth strategies: each really changes the network and keeps its function at the moment of
change (the network's edits, `morphonet.evolution.network`), with the optimizer passed along so
surviving moments move with their parameters.

* `ExtremaGrowthStrategy(extrema_threshold, patch_size, add_layer_on_extrema)`: for up to
  ``patch_size`` dead and ``patch_size`` saturated neurons per hidden stage (from
  `StandardExtremaAnalyzer`): **revival** edges into dead neurons (a ReLU neuron that was
  exactly 0 gets ``edges_per_neuron`` random incoming edges and its outgoing weights set to 0,
  `EvolvableNetwork.revive`, not when the next stage is residual: its identity path would
  carry the change); any other dead neuron gets zero-valued incoming edges, which
  receive gradient since its activation is near its linear range), **relief** edges out of
  saturated neurons (zero-valued edges to neurons of the next stage they do not reach); with
  ``add_layer_on_extrema``, a new layer (identity / zero residual,
  `EvolvableNetwork.insert_layer`) after the stage whose share of extrema neurons is largest
  and above ``extrema_threshold`` (neurons compared with neurons: the seed compared neuron
  counts with weight counts, so its trigger never fired).
* `ResidualBlockGrowthStrategy`: a zero-output residual block (W2 = 0) on the hidden stage with
  the most extrema (or the deepest with the fewest blocks).
* `PruningGrowthStrategy`: removes edges that carry nothing: value exactly 0 (or ≤
  ``weight_threshold``) and edges out of neurons that were exactly 0 on every analysed sample.
* `InformationFlowGrowthStrategy`: widens the worst bottleneck of
  `SimpleInformationFlowAnalyzer` (new neurons with random incoming and zero-valued outgoing
  edges: every weight kept, the function exact everywhere), or inserts a layer after it.
* `HybridGrowthStrategy`: several strategies in turn, each where it wants to grow.

Where a choice among absent connections is made, candidates are ranked by the dense gradient
|∂L/∂W| of the last training batch (`SparseLinear.dense_grad_at`, as RigL; available after a
`StandardNetworkTrainer` call), at random before any training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor

from morpho_kernels.nn import SparseLinear

from ..checks import check_bool, check_choice, check_fraction, check_instance, check_int, check_real
from .interfaces import GrowthStrategy, NetworkContext
from .network import EvolvableNetwork
from .optim import sync_optimizer

__all__ = ["ExtremaGrowthStrategy", "HybridGrowthStrategy", "InformationFlowGrowthStrategy",
           "PruningGrowthStrategy",
           "ResidualBlockGrowthStrategy", "rank_candidates"]


def _network(context: NetworkContext) -> EvolvableNetwork:
    return check_instance("context.network", context.network, EvolvableNetwork)


def rank_candidates(layer: SparseLinear, src: Tensor, dst: Tensor, k: int,
                    generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """The ``k`` candidate pairs (src[i] → dst[i]) of largest dense gradient |∂L/∂W| on the
    layer's last training batch (random order where no gradient is kept, and for ties)."""
    if src.numel() <= k:
        return src, dst
    noise = torch.rand(src.numel(), generator=generator) * 1e-12
    try:
        score = layer.dense_grad_at(src, dst).abs().float().cpu() + noise
    except (RuntimeError, ValueError):  # no gradient kept (or from another width)
        score = noise
    top = torch.topk(score, k).indices
    return src[top], dst[top]


def _absent(layer: SparseLinear) -> Tensor:
    """(out, in) bool: True where the layer has no edge."""
    return layer.edges.to_dense() == 0


def _patterns(net: EvolvableNetwork, analysis: dict) -> list[tuple[int, dict]]:
    """(current stage index, pattern) of the analysis' extrema patterns still present."""
    out = []
    for p in analysis.get("extrema_patterns", []):
        s = net.stage_index(p["stage"])
        if s is not None and s < len(net.stages) - 1:
            out.append((s, p))
    return out


class ExtremaGrowthStrategy(GrowthStrategy):
    """Revival, relief and (optionally) a new layer where the extrema are (module docstring).

    Args:
        extrema_threshold: share of a stage's neurons that are dead or saturated above which
            a layer is added after it (with ``add_layer_on_extrema``).
        patch_size: at most this many dead and this many saturated neurons treated per stage
            and event.
        add_layer_on_extrema: allow adding a layer (one per event at most).
        edges_per_neuron: new edges per treated neuron.
        seed: random choices (ties, revival sources).
    """

    def __init__(self, extrema_threshold: float = 0.3, patch_size: int = 20,
                 add_layer_on_extrema: bool = False, edges_per_neuron: int = 4,
                 seed: int = 0):
        self.extrema_threshold = check_fraction("extrema_threshold", extrema_threshold)
        self.patch_size = check_int("patch_size", patch_size, 1)
        self.add_layer_on_extrema = check_bool("add_layer_on_extrema", add_layer_on_extrema)
        self.edges_per_neuron = check_int("edges_per_neuron", edges_per_neuron, 1)
        self.gen = torch.Generator().manual_seed(check_int("seed", seed, 0))
        self.last: dict = {}

    def should_grow(self, context: NetworkContext, analysis: dict) -> bool:
        """True when the analysis found a dead or saturated neuron."""
        return analysis.get("dead_neurons", 0) + analysis.get("saturated_neurons", 0) > 0

    def grow(self, context: NetworkContext, analysis: dict) -> NetworkContext:
        """Revival and relief edges, then possibly a new layer; ``self.last`` says how many
        of each."""
        net, opt = _network(context), context.optimizer
        revived = relief = incoming = 0
        worst, worst_ratio = None, self.extrema_threshold
        for s, p in _patterns(net, analysis):
            dead = p["dead"][:self.patch_size]
            zero = set(p["zero"])
            exact = [n for n in dead if n in zero] \
                if net.activation == "relu" and not net.stages[s + 1].residual else []
            if exact:
                revived += net.revive(s, torch.tensor(exact), self.edges_per_neuron, opt)
            rest = [n for n in dead if n not in set(exact)]
            incoming += self._incoming(net, s, rest, opt)
            relief += self._relief(net, s, p["saturated"][:self.patch_size], opt)
            ratio = (len(p["dead"]) + len(p["saturated"])) / max(1, p["width"])
            if ratio > worst_ratio:
                worst, worst_ratio = s, ratio
        added_layer = None
        if self.add_layer_on_extrema and worst is not None:
            if net.activation == "relu" and net.stages[worst].blocks:
                added_layer = None  # an identity ReLU layer is exact only on h ≥ 0
            else:
                added_layer = net.insert_layer(worst, opt)
        self.last = {"revival_edges": revived + incoming, "relief_edges": relief,
                     "added_layer": added_layer}
        return context

    def _incoming(self, net: EvolvableNetwork, s: int, neurons: Sequence[int], opt) -> int:
        """Zero-valued incoming edges into ``neurons`` of stage s, by dense gradient."""
        if not neurons:
            return 0
        lay = net.stages[s].layer
        absent = _absent(lay)
        srcs, dsts = [], []
        for n in neurons:
            cand = absent[n].nonzero().flatten()
            a, b = rank_candidates(lay, cand, torch.full_like(cand, n), self.edges_per_neuron,
                                   self.gen)
            srcs.append(a)
            dsts.append(b)
        return net.add_connections(s, torch.cat(srcs), torch.cat(dsts), 0.0, opt)

    def _relief(self, net: EvolvableNetwork, s: int, neurons: Sequence[int], opt) -> int:
        """Zero-valued edges out of saturated ``neurons`` of stage s into the next stage."""
        if not neurons:
            return 0
        lay = net.stages[s + 1].layer
        absent = _absent(lay)
        srcs, dsts = [], []
        for n in neurons:
            cand = absent[:, n].nonzero().flatten()
            a, b = rank_candidates(lay, torch.full_like(cand, n), cand, self.edges_per_neuron,
                                   self.gen)
            srcs.append(a)
            dsts.append(b)
        return net.add_connections(s + 1, torch.cat(srcs), torch.cat(dsts), 0.0, opt)


class ResidualBlockGrowthStrategy(GrowthStrategy):
    """Adds a zero-output residual block (module docstring).

    Args:
        max_blocks: the most residual blocks the whole network may hold.
        hidden_size: the block's inner width (default: the stage's width).
        density: connected fraction of the block's layers (default: the network's).
        min_extrema_ratio: grow only when the analysis' ``extrema_ratio`` is at least this
            (0: whenever the block budget allows).
    """

    def __init__(self, max_blocks: int = 2, hidden_size: Optional[int] = None,
                 density: Optional[float] = None, min_extrema_ratio: float = 0.0):
        self.max_blocks = check_int("max_blocks", max_blocks, 1)
        self.hidden_size = check_int("hidden_size", hidden_size, 1, optional=True)
        self.density = (None if density is None
                        else check_fraction("density", density, lo_open=True))
        self.min_extrema_ratio = check_fraction("min_extrema_ratio", min_extrema_ratio)
        self.last: dict = {}

    def should_grow(self, context: NetworkContext, analysis: dict) -> bool:
        """While the network has fewer than ``max_blocks`` blocks and the extrema ratio is at
        least ``min_extrema_ratio``."""
        net = _network(context)
        blocks = sum(len(st.blocks) for st in net.stages)
        return (blocks < self.max_blocks and len(net.stages) > 1
                and analysis.get("extrema_ratio", 1.0) >= self.min_extrema_ratio)

    def grow(self, context: NetworkContext, analysis: dict) -> NetworkContext:
        """One block, on the stage chosen by ``choose_stage``."""
        net = _network(context)
        s = self.choose_stage(net, analysis)
        net.add_residual_block(s, self.hidden_size, self.density)
        self.last = {"stage": s}
        return context

    @staticmethod
    def choose_stage(net: EvolvableNetwork, analysis: dict) -> int:
        """The hidden stage with the largest extrema share (ties: fewer blocks, deeper), or
        without extrema patterns the deepest with the fewest blocks."""
        share = {s: (len(p["dead"]) + len(p["saturated"])) / max(1, p["width"])
                 for s, p in _patterns(net, analysis)}
        return max(net.hidden(), key=lambda s: (share.get(s, 0.0), -len(net.stages[s].blocks),
                                                s))


class PruningGrowthStrategy(GrowthStrategy):
    """Removes edges that carry nothing (module docstring): |value| ≤ ``weight_threshold``
    (default 0: exact zeros), and with ``prune_dead`` every edge out of a neuron that was
    exactly 0 on the analysed batches (`StandardExtremaAnalyzer`'s ``zero``).
    ``max_fraction`` caps the share of a layer's edges removed per event (a layer keeps at
    least one edge); ``min_epochs``: prune only once ``context.history`` holds this many
    epochs (before any training, fresh zero-valued edges would go). Put it before growing
    strategies in a `HybridGrowthStrategy`: after them, it would remove the zero-valued
    edges they just added.
    """

    def __init__(self, weight_threshold: float = 0.0, prune_dead: bool = True,
                 max_fraction: float = 0.5, min_epochs: int = 1):
        self.weight_threshold = check_real("weight_threshold", weight_threshold, 0)
        self.prune_dead = check_bool("prune_dead", prune_dead)
        self.max_fraction = check_fraction("max_fraction", max_fraction)
        self.min_epochs = check_int("min_epochs", min_epochs, 0)
        self.last: dict = {}

    def _plan(self, net: EvolvableNetwork, analysis: dict) -> dict[int, Tensor]:
        """Slots to remove per stage."""
        zero = {s: p["zero"] for s, p in _patterns(net, analysis)} if self.prune_dead else {}
        plan = {}
        for s, st in enumerate(net.stages):
            lay = st.layer
            nnz = lay.nnz
            if nnz <= 1:
                continue
            src, _ = lay.edges.to_coo()
            drop = lay.values.detach()[:nnz].abs() <= self.weight_threshold
            if zero.get(s - 1):
                drop |= torch.isin(src, torch.tensor(zero[s - 1]))
            idx = drop.nonzero().flatten()
            cap = min(int(self.max_fraction * nnz), nnz - 1)  # a layer keeps one edge
            if idx.numel() and cap > 0:
                plan[s] = idx[:cap]
        return plan

    def should_grow(self, context: NetworkContext, analysis: dict) -> bool:
        """When the network has trained ``min_epochs`` epochs and something can go."""
        if len(context.history) < self.min_epochs:
            return False
        return bool(self._plan(_network(context), analysis))

    def grow(self, context: NetworkContext, analysis: dict) -> NetworkContext:
        """Remove the planned edges; ``self.last["pruned"]`` counts them."""
        net = _network(context)
        pruned = 0
        for s, slots in self._plan(net, analysis).items():
            pruned += net.prune_connections(s, slots, context.optimizer)
        self.last = {"pruned": pruned}
        return context


class InformationFlowGrowthStrategy(GrowthStrategy):
    """Grows at the worst information bottleneck (module docstring).

    Args:
        widen_fraction: new neurons as a fraction of the stage's width (at least one).
        max_width: a stage is not widened beyond this.
        mode: ``"widen"`` the bottleneck stage, or ``"insert"`` a layer after it.
        init: how new neurons start (`EvolvableNetwork.widen`): ``"random"``, or
            ``"gradmax"`` (tanh networks after training; falls back to random otherwise).
    """

    def __init__(self, widen_fraction: float = 0.25, max_width: int = 1024,
                 mode: str = "widen", init: str = "random"):
        self.widen_fraction = check_fraction("widen_fraction", widen_fraction, lo_open=True)
        self.max_width = check_int("max_width", max_width, 1)
        self.mode = check_choice("mode", mode, ("widen", "insert"))
        self.init = check_choice("init", init, ("random", "gradmax"))
        self.last: dict = {}

    def _target(self, net: EvolvableNetwork, analysis: dict) -> Optional[int]:
        for uid in analysis.get("bottlenecks", []):
            s = net.stage_index(uid)
            if s is None or s >= len(net.stages) - 1:
                continue
            if self.mode == "insert":
                if not (net.activation == "relu" and net.stages[s].blocks):
                    return s
            elif not net.stages[s].residual and net.stages[s].out_features < self.max_width:
                return s
        return None

    def should_grow(self, context: NetworkContext, analysis: dict) -> bool:
        """When the analysis names a bottleneck this strategy can grow."""
        return self._target(_network(context), analysis) is not None

    def grow(self, context: NetworkContext, analysis: dict) -> NetworkContext:
        """Widen (or insert after) the worst bottleneck; ``self.last`` says which."""
        net = _network(context)
        s = self._target(net, analysis)
        if s is None:
            return context
        if self.mode == "insert":
            self.last = {"stage": s, "inserted": net.insert_layer(s, context.optimizer)}
        else:
            w = net.stages[s].out_features
            k = min(max(1, math.ceil(self.widen_fraction * w)), self.max_width - w)
            init = self.init
            if init == "gradmax" and not _gradmax_ready(net, s, k):
                init = "random"
            self.last = {"stage": s, "init": init,
                         "added": net.widen(s, k, context.optimizer, init=init)}
        return context


def _gradmax_ready(net: EvolvableNetwork, s: int, k: int) -> bool:
    """Whether GradMax can widen stage s by k (tanh, a plain next stage, kept gradients of
    matching widths, enough rank)."""
    st, nxt = net.stages[s], net.stages[s + 1]
    x, dy = st.layer._x, nxt.layer._dy
    return (net.activation == "tanh" and not nxt.residual and x is not None and dy is not None
            and x.shape[-1] == st.in_features and dy.shape[-1] == nxt.out_features
            and min(x.shape[-1], dy.shape[-1], x.reshape(-1, x.shape[-1]).shape[0]) >= k)


class HybridGrowthStrategy(GrowthStrategy):
    """Several strategies in turn: each grows when its own ``should_grow`` says so (asked
    again after the ones before it changed the network)."""

    def __init__(self, strategies: Sequence[GrowthStrategy]):
        if not isinstance(strategies, (list, tuple)) or not strategies:
            raise ValueError("strategies must be a non-empty list of GrowthStrategy")
        for i, s in enumerate(strategies):
            check_instance(f"strategies[{i}]", s, GrowthStrategy)
        self.strategies = list(strategies)
        self.last: dict = {}

    def should_grow(self, context: NetworkContext, analysis: dict) -> bool:
        """When any of its strategies wants to grow."""
        return any(s.should_grow(context, analysis) for s in self.strategies)

    def grow(self, context: NetworkContext, analysis: dict) -> NetworkContext:
        """Each strategy that wants to, in order; ``self.last["grown"]`` names them."""
        grown = []
        for s in self.strategies:
            if s.should_grow(context, analysis):
                context = s.grow(context, analysis)
                grown.append(s.name)
                if context.optimizer is not None:  # the next one may edit what this one made
                    sync_optimizer(context.optimizer, context.network.parameter_groups())
        self.last = {"grown": grown}
        return context
