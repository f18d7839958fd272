"""MinimalNetwork: a feed-forward net of SparseLinear edge lists between every pair of layers up
to ``max_skip`` apart, with fixed-capacity neuron slots so that neurons can be added (cloned)
without changing any parameter's shape.

Layers are numbered 0 (input) … L (output). Layer j receives

    z_j = Σ_{i = max(0, j − max_skip)}^{j − 1} SparseLinear_{i→j}(h_i)        (bias on i = j − 1)
    h_j = act(z_j) ⊙ active_j   (hidden)      h_L = z_L   (logits)

so an edge i → j with j − i > 1 is a real skip connection: it carries signal forward and its
weight receives gradient like any other. Hidden layers own ``capacity`` neuron slots of which
``active`` ones are in use; inactive slots have no edges and output exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from morpho_kernels.formats import EdgeList
from morpho_kernels.nn import SparseLinear

from ..checks import check_fraction
from ..config import Config, fraction, int_list, ints, one_of, reals, setting
from .extrema import EXTREMA_ACTIVATIONS

# init gain per activation: N(0, GAIN² / in-degree) per edge
GAIN = {"tanh": 1.0, "sigmoid": 1.0, "relu": math.sqrt(2.0)}


@dataclass
class NetworkConfig(Config):
    """A MinimalNetwork's construction settings (what a snapshot needs to rebuild it; see
    `MinimalNetwork` for their meaning)."""

    layer_sizes: list[int] = setting(check=int_list(1), factory=lambda: [2, 2])
    sparsity: float = setting(1e-4, fraction())
    activation: str = setting("tanh", one_of(*EXTREMA_ACTIVATIONS))
    max_skip: int = setting(3, ints(1))
    neuron_capacity: float = setting(0.5, reals(0))
    min_edges_per_layer: int = setting(1, ints(0))

    def check(self) -> None:
        if len(self.layer_sizes) < 2:
            raise ValueError(f"layer_sizes must be a list of at least 2 sizes (input, ..., "
                             f"output), got {self.layer_sizes!r}")


def _act(name: str, z: Tensor) -> Tensor:
    if name == "tanh":
        return torch.tanh(z)
    if name == "sigmoid":
        return torch.sigmoid(z)
    return torch.relu(z)


class MinimalNetwork(nn.Module):
    """A sparse network that starts nearly empty and can gain connections and neurons.

    Args:
        layer_sizes: ``[input, hidden..., output]`` widths (the initial active widths).
        sparsity: the **connected fraction** at start, as in the seed (1e-4 = 0.01% of the
            dense layer graph's connections are present; not the fraction removed). At least
            ``min_edges_per_layer`` random edges are placed in every adjacent layer pair.
        activation: ``"tanh"``, ``"sigmoid"`` or ``"relu"`` for the hidden layers.
        max_skip: furthest layer an edge may reach (1 = plain MLP, 3 = up to 3 layers ahead).
        neuron_capacity: extra neuron slots per hidden layer as a fraction of its width (0.5:
            a 64-wide layer can grow to 96 neurons by cloning).
        layer_densities: optional connected fraction per adjacent layer pair (overrides
            ``sparsity``; used by the RigL / SET / static peers with ERK allocation).
        min_edges_per_layer: lower bound on the random edges of each adjacent pair at start.
        seed: seed of the initial structure and weights (None: torch's global generator).

    Initial weights are scaled for sparsity: every edge into neuron d gets
    N(0, gain² / fan_in(d)) with the *actual* in-degree fan_in(d), not the layer width (gain 1
    for tanh / sigmoid, √2 for ReLU), so a neuron with 2 inputs is not 100× too quiet. Biases 0.

    **Connectivity** (``get_connectivity_stats``): active connections (all edges, skips
    included) divided by the connections of the dense layer graph at the current active widths,
    Σ_l n_l · n_{l+1} over adjacent layers. Skip edges are counted in the numerator only, so the
    ratio is never flattered by the extra skip positions.
    """

    def __init__(self, layer_sizes: Sequence[int], sparsity: float = 1e-4,
                 activation: str = "tanh", max_skip: int = 3, neuron_capacity: float = 0.5,
                 layer_densities: Optional[Sequence[float]] = None, min_edges_per_layer: int = 1,
                 seed: Optional[int] = None):
        super().__init__()
        self.config = NetworkConfig(layer_sizes=layer_sizes, sparsity=sparsity,
                                    activation=activation, max_skip=max_skip,
                                    neuron_capacity=neuron_capacity,
                                    min_edges_per_layer=min_edges_per_layer)
        sizes = self.config.layer_sizes
        if layer_densities is not None:
            if len(layer_densities) != len(sizes) - 1:
                raise ValueError(f"layer_densities needs {len(sizes) - 1} entries (one per "
                                 f"adjacent pair), got {len(layer_densities)}")
            layer_densities = [check_fraction(f"layer_densities[{i}]", d)
                               for i, d in enumerate(layer_densities)]
        self.activation, self.max_skip, self.n_layers = activation, max_skip, len(sizes) - 1
        L = self.n_layers
        self.capacity = [s if i in (0, L) else s + math.ceil(neuron_capacity * s)
                         for i, s in enumerate(sizes)]
        for j in range(1, L):
            m = torch.zeros(self.capacity[j], dtype=torch.bool)
            m[:sizes[j]] = True
            self.register_buffer(f"active_{j}", m)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.conn = nn.ModuleDict()
        for j in range(1, L + 1):
            for i in range(max(0, j - max_skip), j):
                if i == j - 1:
                    d = layer_densities[i] if layer_densities is not None else sparsity
                    n = max(min_edges_per_layer, round(d * sizes[i] * sizes[j]))
                    edges = self._random_edges(i, j, min(n, sizes[i] * sizes[j]), gen)
                else:
                    edges = EdgeList.empty(self.capacity[i], self.capacity[j])
                self.conn[self.key(i, j)] = SparseLinear(
                    self.capacity[i], self.capacity[j], bias=(i == j - 1), edges=edges)
        self.reset_parameters(gen)
        self.track = False  # keep activations (for extrema) on every forward
        self.record_grads = False  # keep ∂L/∂z_j (for dense-gradient scoring)
        self.activations: list[Tensor] = []
        self.pre_grads: dict[int, Tensor] = {}

    @staticmethod
    def key(i: int, j: int) -> str:
        """ModuleDict key of the edge list from layer i to layer j."""
        return f"{i}_{j}"

    def layer(self, i: int, j: int) -> SparseLinear:
        """The SparseLinear holding the edges from layer i to layer j (j − i ≤ max_skip)."""
        k = self.key(i, j)
        if k not in self.conn:
            raise ValueError(f"no edge list {i}->{j}: need 0 <= i < j <= {self.n_layers} and "
                             f"j - i <= max_skip ({self.max_skip})")
        return self.conn[k]

    def pairs(self) -> list[tuple[int, int]]:
        """All (i, j) layer pairs that may hold edges."""
        return [tuple(map(int, k.split("_"))) for k in self.conn]

    def _random_edges(self, i: int, j: int, n: int, gen) -> EdgeList:
        keys = torch.randperm(self.config.layer_sizes[i] * self.config.layer_sizes[j],
                              generator=gen)[:n]
        w_in = self.config.layer_sizes[i]
        return EdgeList.from_coo(keys % w_in, keys // w_in, self.capacity[i], self.capacity[j])

    def reset_parameters(self, gen=None) -> None:
        """Sparsity-scaled init: N(0, gain² / in-degree) per edge, biases 0."""
        gain = GAIN[self.activation]
        indeg = {j: torch.zeros(self.capacity[j]) for j in range(1, self.n_layers + 1)}
        for (_i, j), lay in zip(self.pairs(), self.conn.values()):
            indeg[j] += lay.edges.fan_in().float()
        with torch.no_grad():
            for (_i, j), lay in zip(self.pairs(), self.conn.values()):
                nnz = lay.nnz
                d = lay.edges.dst_index()[:nnz]
                std = gain / indeg[j].clamp(min=1.0).sqrt()
                lay.values.zero_()
                lay.values[:nnz] = torch.randn(nnz, generator=gen) * std[d]
                if lay.bias is not None:
                    lay.bias.zero_()

    # -- neurons
    def active(self, j: int) -> Tensor:
        """Bool mask of the active neuron slots of layer j (all True for input and output)."""
        if 0 < j < self.n_layers:
            return getattr(self, f"active_{j}")
        return torch.ones(self.capacity[j], dtype=torch.bool)

    def widths(self) -> list[int]:
        """Current active widths of every layer."""
        return [int(self.active(j).sum()) for j in range(self.n_layers + 1)]

    # -- forward
    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.capacity[0]:
            raise ValueError(f"x must be (batch, {self.capacity[0]}), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        h = [x]
        # only training forwards record (an evaluation under no_grad, e.g. a snapshot's
        # validation pass right before a growth event, keeps the scoring batch's records)
        record = torch.is_grad_enabled()
        if self.record_grads and record:
            self.pre_grads = {}  # a plain forward keeps the last scoring batch's gradients
        for j in range(1, self.n_layers + 1):
            z = self.layer(j - 1, j)(h[j - 1])
            for i in range(max(0, j - self.max_skip), j - 1):
                lay = self.layer(i, j)
                if lay.nnz:  # an empty skip list adds nothing; skip the call
                    z = z + lay(h[i])
            if self.record_grads and z.requires_grad:
                z.register_hook(self._keeper(j))
            if j < self.n_layers:
                z = _act(self.activation, z) * self.active(j).to(z.dtype)
            h.append(z)
        if (self.track or self.record_grads) and record:
            self.activations = [t.detach() for t in h]
        return h[-1]

    def _keeper(self, j: int):
        def keep(g: Tensor) -> None:
            self.pre_grads[j] = g.detach()
        return keep

    # -- statistics
    def get_connectivity_stats(self) -> dict:
        """Connection counts.

        Returns a dict with ``connectivity_ratio`` (active / dense-graph connections, see the
        class docstring), ``total_active_connections``, ``total_possible_connections`` (dense
        adjacent graph at the active widths), ``skip_connections`` (edges spanning > 1 layer),
        ``layer_sizes`` (active widths), ``neurons_added`` and ``per_layer``:
        ``{"i_j": {"active", "possible", "density"}}`` where ``possible`` is n_i · n_j.
        """
        w = self.widths()
        per, total, skip = {}, 0, 0
        for (i, j), lay in zip(self.pairs(), self.conn.values()):
            n = lay.nnz
            poss = w[i] * w[j]
            per[self.key(i, j)] = {"active": n, "possible": poss,
                                   "density": n / poss if poss else 0.0}
            total += n
            skip += n if j - i > 1 else 0
        possible = sum(a * b for a, b in zip(w[:-1], w[1:]))
        base = self.config.layer_sizes
        return {"connectivity_ratio": total / possible, "total_active_connections": total,
                "total_possible_connections": possible, "skip_connections": skip,
                "layer_sizes": w, "neurons_added": sum(w) - sum(base), "per_layer": per}

    def structure_state(self) -> dict[str, Tensor]:
        """Exact state (structure, values, biases, active masks) as plain tensors, trimmed to
        the live edges (what SnapshotManager stores)."""
        out: dict[str, Tensor] = {}
        for k, lay in self.conn.items():
            nnz = lay.nnz
            src, dst = lay.edges.to_coo()
            out[f"{k}.key"] = dst * lay.in_features + src  # sorted (CSR order)
            out[f"{k}.values"] = lay.values.detach()[:nnz].clone()
            if lay.bias is not None:
                out[f"{k}.bias"] = lay.bias.detach().clone()
        for j in range(1, self.n_layers):
            out[f"active_{j}"] = self.active(j).clone()
        return out

    def load_structure_state(self, state: dict[str, Tensor]) -> None:
        """Inverse of :meth:`structure_state`: rebuilds every edge list and value exactly."""
        for k, lay in self.conn.items():
            if f"{k}.key" not in state:
                raise ValueError(f"state lacks {k}.key (a state of another architecture?)")
            key = state[f"{k}.key"].long()
            el = EdgeList.from_coo(key % lay.in_features, key // lay.in_features,
                                   lay.in_features, lay.out_features)
            lay.row_ptr, lay.col = el.row_ptr, el.col
            lay._edges_cache = el
            with torch.no_grad():
                lay.values.data = state[f"{k}.values"].clone().to(lay.values.dtype)
                if lay.bias is not None:
                    lay.bias.copy_(state[f"{k}.bias"])
        for j in range(1, self.n_layers):
            getattr(self, f"active_{j}").copy_(state[f"active_{j}"])

    # -- structural edits (keep a live optimizer consistent: pass it)
    def add_connections(self, i: int, j: int, src: Tensor, dst: Tensor,
                        values: Tensor | float = 0.0,
                        optimizer: Optional[torch.optim.Optimizer] = None, *,
                        group: Any = "auto") -> int:
        """Insert edges src (layer i) → dst (layer j); returns how many were new. Values and the
        optimizer's per-edge state move with their edges (SparseLinear.grow, whose ``group``
        rule applies: data-parallel replicas pass their process group)."""
        lay = self.layer(i, j)
        for name, t, lim in (("src", src, i), ("dst", dst, j)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a tensor of neuron indices")
            if t.numel() and not bool(self.active(lim)[t.long()].all()):
                raise ValueError(f"{name} names an inactive neuron slot of layer {lim}")
        return lay.grow(src.long(), dst.long(), values, optimizer=optimizer,
                        group=group).inserted

    def clone_neuron(self, j: int, parent: int, scale: float = 0.7,
                     optimizer: Optional[torch.optim.Optimizer] = None, *,
                     group: Any = "auto") -> int:
        """Vertical cloning: activate a free slot of hidden layer j as a copy of neuron
        ``parent`` (same layer) that leaves the network's function unchanged.

        The clone gets the parent's incoming edges and bias exactly (so the same activation),
        and ``scale`` (0.7) of each outgoing weight while the parent keeps ``1 − scale``:
        Σ out = w, so every downstream pre-activation is unchanged (up to one rounding). The
        optimizer's state of the parent's bias slot is not copied: the clone starts with zero
        moments, which (with its different outgoing weights) breaks the symmetry. Returns the
        new neuron's index; raises ValueError when the layer has no free slot. ``group``: as
        `SparseLinear.grow` (data-parallel replicas pass their process group).
        """
        if not 0 < j < self.n_layers:
            raise ValueError(f"j must name a hidden layer (1..{self.n_layers - 1}), got {j}")
        act = self.active(j)
        if not 0 <= parent < act.numel() or not bool(act[parent]):
            raise ValueError(f"parent {parent} is not an active neuron of layer {j}")
        if not 0.0 < scale < 1.0:
            raise ValueError(f"scale must be in (0, 1), got {scale}")
        free = (~act).nonzero().flatten()
        if free.numel() == 0:
            raise ValueError(f"layer {j} has no free neuron slot (capacity {act.numel()})")
        k = int(free[0])
        for i in range(max(0, j - self.max_skip), j):  # incoming: exact copies
            lay = self.layer(i, j)
            a, b = int(lay.row_ptr[parent]), int(lay.row_ptr[parent + 1])
            if b > a:
                src = lay.col[a:b].clone()
                lay.grow(src, torch.full_like(src, k), lay.values.detach()[a:b].clone(),
                         optimizer=optimizer, group=group)
        with torch.no_grad():
            bias = self.layer(j - 1, j).bias
            bias[k] = bias[parent]
            st = optimizer.state.get(bias) if optimizer is not None else None
            for t in (st or {}).values():
                if isinstance(t, Tensor) and t.shape == bias.shape:
                    t[k] = 0
        for m in range(j + 1, min(self.n_layers, j + self.max_skip) + 1):  # outgoing: split
            lay = self.layer(j, m)
            src, dst = lay.edges.to_coo()
            sel = (src == parent).nonzero().flatten()
            if sel.numel():
                w = lay.values.detach()[sel].clone()
                lay.grow(torch.full_like(sel, k), dst[sel], w * scale, optimizer=optimizer,
                         group=group)
                src2, dst2 = lay.edges.to_coo()
                slots = (src2 == parent).nonzero().flatten()  # same dst order as before
                with torch.no_grad():
                    lay.values[slots] = w * (1.0 - scale)
        act[k] = True
        return k
