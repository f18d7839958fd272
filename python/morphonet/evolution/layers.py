"""The evolution system's layers, on the first generation's edge lists
(`morpho_kernels.nn.SparseLinear`: work ∝ live connections, the dense gradient at absent
connections available as RigL needs it).

* `StandardSparseLayer(in_features, out_features, sparsity)`: the seed's layer; ``sparsity``
  is the connected fraction; weights N(0, gain² / fan_in) with each neuron's actual in-degree.
* `ExtremaAwareSparseLayer`: denser incoming edges into dead neurons and outgoing edges from
  saturated ones; tracks statistics of its post-activation output |act(y)|
  (`morpho_kernels.extrema_stats`).
* `ResidualBlock`: ``h + W2 act(W1 h + b1) + b2`` with W2 = 0 at creation (exact).
* `TemporaryPatchLayer`: a small patch network on chosen neurons, exact at insertion,
  removable or mergeable (a restricted residual block without b2: it writes only to its
  targets).

Helpers: `resized` (more sources / destinations, the same edges, optimizer state carried),
`grow_edges` (`SparseLinear.grow` with the optimizer when it holds the layer),
`random_edges`, `init_scaled`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor, nn

from morpho_kernels import ExtremaStats, extrema_stats
from morpho_kernels.formats import EdgeList
from morpho_kernels.nn import SparseLinear

from ..checks import check_fraction, check_int, check_real
from ..growth.network import GAIN
from .optim import replace_parameter

__all__ = ["ExtremaAwareSparseLayer", "ResidualBlock", "StandardSparseLayer",
           "TemporaryPatchLayer", "act", "grow_edges", "init_scaled", "random_edges",
           "resized"]


def act(name: Optional[str], z: Tensor) -> Tensor:
    """``relu`` / ``tanh`` of ``z``; ``z`` itself for None (the logits)."""
    if name is None:
        return z
    return torch.relu(z) if name == "relu" else torch.tanh(z)


class StandardSparseLayer(SparseLinear):
    """The seed's ``StandardSparseLayer(in_features, out_features, sparsity)``: a
    `morpho_kernels.nn.SparseLinear` whose ``sparsity`` is the *connected* fraction (as in
    Structure Net's first generation), at least one edge. Weights start N(0, gain² / fan_in)
    with each neuron's actual in-degree (`init_scaled`), biases 0.

    Args:
        in_features, out_features: sizes. sparsity: connected fraction at start.
        activation: the activation that follows (sets the init gain; None for logits).
        edges: an explicit EdgeList (then ``sparsity`` is ignored). generator: for the
            structure and the weights.
    """

    def __init__(self, in_features: int, out_features: int, sparsity: float = 0.1,
                 bias: bool = True, activation: Optional[str] = "relu",
                 edges: Optional[EdgeList] = None, generator: Optional[torch.Generator] = None):
        sparsity = check_fraction("sparsity", sparsity)
        in_features = check_int("in_features", in_features, 1)
        out_features = check_int("out_features", out_features, 1)
        if edges is None:
            n = max(1, round(sparsity * in_features * out_features))
            keys = torch.randperm(in_features * out_features, generator=generator)[:n]
            edges = EdgeList.from_coo(keys % in_features, keys // in_features, in_features,
                                      out_features)
        super().__init__(in_features, out_features, bias, edges=edges)
        self.sparsity = sparsity
        init_scaled(self, GAIN.get(activation or "tanh", 1.0), generator)


def init_scaled(layer: SparseLinear, gain: float, generator=None) -> None:
    """Every live edge into neuron d gets N(0, gain² / fan_in(d)); bias 0.

    The rule of the first generation's `MinimalNetwork.reset_parameters`
    (`morphonet.growth.network`), which is not reused because it is a method of that
    network, not of a layer: it sums each destination's in-degree over all of the network's
    edge lists (skip connections included) and draws every list in one pass. Here there is
    one edge list per layer, so fan_in is that list's in-degree; on one list the two draw
    the same distribution."""
    nnz = layer.nnz
    d = layer.edges.dst_index()[:nnz]
    std = gain / layer.edges.fan_in().float().clamp(min=1.0).sqrt()
    with torch.no_grad():
        layer.values.zero_()
        layer.values[:nnz] = torch.randn(nnz, generator=generator) * std[d]
        if layer.bias is not None:
            layer.bias.zero_()


def resized(layer: SparseLinear, in_features: int, out_features: int,
            optimizer: Optional[torch.optim.Optimizer] = None) -> SparseLinear:
    """A copy of ``layer`` with more sources and / or destinations (new ones without edges),
    the same edges in the same slots, values and bias copied; the optimizer's state moves to
    the new Parameters (new bias rows with zero moments)."""
    e = layer.edges
    if in_features < e.in_features or out_features < e.out_features:
        raise ValueError("resized only adds sources / destinations")
    pad = out_features - e.out_features
    row_ptr = torch.cat([e.row_ptr, e.row_ptr[-1:].expand(pad)])
    edges = EdgeList(row_ptr, e.col.clone(), in_features, validate=False)
    new = SparseLinear(in_features, out_features, layer.bias is not None, edges=edges,
                       device=e.device, dtype=layer.values.dtype)
    new.__class__ = type(layer)  # keep the subclass and its settings
    for k in ("sparsity", "growth_factor", "keep_for_growth"):
        if hasattr(layer, k):
            setattr(new, k, getattr(layer, k))
    with torch.no_grad():
        new.values.copy_(layer.values.detach())
        if layer.bias is not None:
            new.bias.zero_()
            new.bias[:e.out_features] = layer.bias.detach()
    if optimizer is not None:
        replace_parameter(optimizer, layer.values, new.values)
        if layer.bias is not None:
            replace_parameter(optimizer, layer.bias, new.bias)
    return new


def grow_edges(layer: SparseLinear, src: Tensor, dst: Tensor, values, optimizer):
    """``layer.grow`` with the optimizer when it holds the layer's values; otherwise (before
    any training built one, or a layer made in this change) without, and without the
    layer's warning about an optimizer holding old values: `sync_optimizer` then adds the
    live parameters."""
    if optimizer is not None and any(p is layer.values for g in optimizer.param_groups
                                     for p in g["params"]):
        return layer.grow(src, dst, values, optimizer=optimizer)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="SparseLinear outgrew its capacity")
        return layer.grow(src, dst, values)


def random_edges(n_in: int, n_out: int, density: float, gen, rows: Optional[Tensor] = None,
                  cols: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """(src, dst) of about ``density`` of the pairs rows × cols (default: all), at least one
    edge per destination row."""
    rows = torch.arange(n_out) if rows is None else rows
    cols = torch.arange(n_in) if cols is None else cols
    k = max(1, math.ceil(density * cols.numel()))
    scores = torch.rand(rows.numel(), cols.numel(), generator=gen)
    pick = scores.topk(min(k, cols.numel()), dim=1).indices  # (R, k)
    return cols[pick].flatten(), rows[:, None].expand_as(pick).flatten()


class ResidualBlock(nn.Module):
    """``h + W2 act(W1 h + b1) + b2`` with W2 and b2 zero at creation (the block adds exactly
    0), W1 random sparse; W2 has edges (value 0) so it receives gradient at once.

    ``sources`` / ``targets`` restrict W1 to read, and W2 to write, those neurons of the
    stage (default: all); ``second_bias=False`` leaves out b2 (a patch: b2 is full-width, so
    it would write to every neuron). ``uid`` names its optimizer group; ``birth`` is the
    epoch it was made."""

    temporary = False

    def __init__(self, width: int, hidden: int, density: float, activation: str, uid: int,
                 birth: int = 0, generator: Optional[torch.Generator] = None,
                 sources: Optional[Tensor] = None, targets: Optional[Tensor] = None,
                 second_bias: bool = True):
        super().__init__()
        self.uid, self.birth, self.activation = uid, birth, activation
        src, dst = random_edges(width, hidden, density, generator, cols=_index(sources, width))
        self.first = StandardSparseLayer(width, hidden, edges=EdgeList.from_coo(
            src, dst, width, hidden), activation=activation, generator=generator)
        src, dst = random_edges(hidden, width, density, generator, rows=_index(targets, width))
        self.second = StandardSparseLayer(
            hidden, width, edges=EdgeList.from_coo(src, dst, hidden, width), activation=None,
            bias=second_bias)
        with torch.no_grad():
            self.second.values.zero_()
            if self.second.bias is not None:
                self.second.bias.zero_()

    def forward(self, h: Tensor) -> Tensor:
        """The block's branch only (the stage adds it to h)."""
        return self.second(act(self.activation, self.first(h)))


def _index(t: Optional[Tensor], bound: int) -> Optional[Tensor]:
    if t is None:
        return None
    t = torch.as_tensor(t, dtype=torch.long).flatten().unique()
    if t.numel() == 0 or int(t.min()) < 0 or int(t.max()) >= bound:
        raise ValueError(f"neuron indices must be a non-empty list in [0, {bound})")
    return t


class TemporaryPatchLayer(ResidualBlock):
    """A small patch network on chosen neurons of a stage: ``h[targets] += W2 act(W1
    h[sources] + b1)`` with ``patch_size`` hidden neurons, W1 dense on the sources, W2 dense
    to the targets and zero at insertion (exact), and no second bias, so training changes
    only the targets (W2 has edges to the targets only; `RigLRewiring` leaves blocks and
    patches alone). It lives among the stage's residual blocks (so it trains, widens and is
    counted like one) until `EvolvableNetwork.remove_patch`
    takes it out (the output changes by what it had learnt) or
    `EvolvableNetwork.merge_patch` makes it a permanent block (exact)."""

    temporary = True

    def __init__(self, width: int, sources: Tensor, targets: Tensor, patch_size: int,
                 activation: str, uid: int, birth: int = 0,
                 generator: Optional[torch.Generator] = None):
        super().__init__(width, check_int("patch_size", patch_size, 1), 1.0, activation, uid,
                         birth, generator, sources=sources, targets=targets, second_bias=False)
        self.sources, self.targets = _index(sources, width), _index(targets, width)


class ExtremaAwareSparseLayer(StandardSparseLayer):
    """A `StandardSparseLayer` with denser incoming edges into chosen (dead) output neurons
    and denser outgoing edges from chosen (saturated) input neurons: ``base_sparsity``
    everywhere, ``extrema_sparsity`` for the rows of ``dead_outputs`` and the columns of
    ``saturated_inputs``. Its forward returns the pre-activation y = W x + b (the activation
    follows outside, as for every layer here). With ``track = True`` it accumulates
    per-output statistics of |act(y)|, the *post-activation* output with its
    ``activation`` (`morpho_kernels.extrema_stats`: mean, max, count) in ``extrema``, the
    counts below ``dead_threshold`` included, so a dead ReLU neuron (y ≪ 0, output 0) counts
    as dead (the rule of `StandardExtremaAnalyzer` and the first generation);
    `reset_extrema` forgets them."""

    def __init__(self, in_features: int, out_features: int, base_sparsity: float = 0.05,
                 extrema_sparsity: float = 0.5, dead_outputs: Sequence[int] = (),
                 saturated_inputs: Sequence[int] = (), activation: Optional[str] = "relu",
                 dead_threshold: float = 0.01, generator: Optional[torch.Generator] = None):
        in_features = check_int("in_features", in_features, 1)
        out_features = check_int("out_features", out_features, 1)
        base = check_fraction("base_sparsity", base_sparsity)
        dense = check_fraction("extrema_sparsity", extrema_sparsity)
        n = max(1, round(base * in_features * out_features))
        keys = torch.randperm(in_features * out_features, generator=generator)[:n]
        src, dst = [keys % in_features], [keys // in_features]
        if len(dead_outputs):
            s, d = random_edges(in_features, out_features, dense, generator,
                                rows=_index(dead_outputs, out_features))
            src.append(s)
            dst.append(d)
        if len(saturated_inputs):
            d, s = random_edges(out_features, in_features, dense, generator,
                                rows=_index(saturated_inputs, in_features))
            src.append(s)
            dst.append(d)
        edges = EdgeList.from_coo(torch.cat(src), torch.cat(dst), in_features, out_features)
        super().__init__(in_features, out_features, base, activation=activation, edges=edges,
                         generator=generator)
        self.dead_threshold = check_real("dead_threshold", dead_threshold, 0)
        self.activation = activation
        self.track = False
        self.extrema: Optional[ExtremaStats] = None

    def forward(self, x: Tensor) -> Tensor:
        """As `SparseLinear`, and the statistics of |act(y)| when tracking."""
        y = super().forward(x)
        if self.track:
            out = act(self.activation, y.detach())
            self.extrema = extrema_stats(out.abs().float(), self.dead_threshold,
                                         math.inf, state=self.extrema)
        return y

    def reset_extrema(self) -> None:
        """Forget the tracked statistics."""
        self.extrema = None
