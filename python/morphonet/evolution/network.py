"""Evolvable sparse networks on the edge-list layers: the network every evolution component
works on (`create_standard_network`), and its structural edits, each exact at the moment of
change.

A network is a list of `Stage` modules; stage ``s`` maps its input ``h`` to

    plain stage:     act(W h + b)                       (the last stage: W h + b, the logits)
    residual stage:  h + act(W h + b)                   (an inserted layer, act(0) = 0)
    then, for each residual block k of the stage:  h ← h + W2_k act(W1_k h + b1_k) + b2_k

with every W a `StandardSparseLayer` (a `morpho_kernels.nn.SparseLinear` edge list: work ∝
live connections, and the dense gradient at absent connections is available, as RigL needs).
Activations are ``relu`` or ``tanh``: both have act(0) = 0, which the exact edits rely on.

Edits (each keeps the output exactly, or up to one rounding, and moves optimizer state along
when given the optimizer; `morphonet.evolution.optim.sync_optimizer` then makes the optimizer
hold exactly the live parameters):

* `EvolvableNetwork.add_connections`: new edges with value 0 (exact everywhere).
* `EvolvableNetwork.widen`: k new neurons in a hidden stage, random incoming edges, outgoing
  edges at value 0 (exact everywhere; the outgoing edges get gradient at once).
* `EvolvableNetwork.insert_layer`: a new hidden stage of the same width after a hidden stage:
  identity weights with ReLU (relu(h) = h for h ≥ 0), a residual stage with zero weights with
  tanh (h + tanh(0) = h). Exact everywhere.
* `EvolvableNetwork.add_residual_block`: W2 = 0 (exact everywhere).
* `EvolvableNetwork.revive`: a neuron that was exactly 0 on the analysed data gets new
  incoming edges and its outgoing weights set to 0 (exact wherever it was 0).
* `EvolvableNetwork.prune_connections`: removal of given edges (exact when their contribution
  is 0 on the data, which is how the pruning strategy chooses them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from morpho_kernels.formats import EdgeList
from morpho_kernels.nn import SparseLinear

from ..checks import check_choice, check_fraction, check_instance, check_int
from ..config import Config, fraction, int_list, one_of, setting
from ..growth.network import GAIN
from ..growth.peers import erk_densities
from ..inputs import InputRules
from .layers import (
    ResidualBlock,
    StandardSparseLayer,
    TemporaryPatchLayer,
    act,
    grow_edges,
    random_edges,
    resized,
)

__all__ = ["ACTIVATIONS", "EvolvableNetwork", "NetworkSpec", "Stage", "create_standard_network",
           "sparse_layers"]

# the activations of an evolvable network: act(0) = 0 for both (the exact edits rely on it)
ACTIVATIONS = ("relu", "tanh")


class Stage(nn.Module):
    """One layer of an `EvolvableNetwork`: ``act(W h + b)`` (``residual``: ``h + act(W h +
    b)``), then its residual blocks; ``activation`` None for the logits. ``uid`` names it in
    the optimizer's parameter groups; ``birth`` is the training epoch at which it was made
    (the network's ``epoch`` then)."""

    def __init__(self, layer: SparseLinear, activation: Optional[str], uid: int,
                 residual: bool = False, birth: int = 0):
        super().__init__()
        self.layer, self.activation, self.residual = layer, activation, residual
        self.uid, self.birth = uid, birth
        self.blocks = nn.ModuleList()

    @property
    def in_features(self) -> int:
        """Width of the stage's input."""
        return self.layer.in_features

    @property
    def out_features(self) -> int:
        """Width of the stage's output."""
        return self.layer.out_features

    def forward(self, h: Tensor) -> Tensor:
        """The stage's output (see the class docstring)."""
        out = act(self.activation, self.layer(h))
        if self.residual:
            out = h + out
        for b in self.blocks:
            out = out + b(out)
        return out


def _size(layer: SparseLinear) -> int:
    return layer.nnz + (layer.bias.numel() if layer.bias is not None else 0)


def sparse_layers(module: nn.Module) -> list[SparseLinear]:
    """Every SparseLinear inside ``module`` (stages and residual blocks)."""
    return [m for m in module.modules() if isinstance(m, SparseLinear)]


@dataclass
class NetworkSpec(Config):
    """Construction settings of an `EvolvableNetwork` (see `create_standard_network`)."""

    architecture: list[int] = setting(check=int_list(1), factory=lambda: [2, 2])
    sparsity: float = setting(0.1, fraction(lo_open=True))
    activation: str = setting("relu", one_of(*ACTIVATIONS))
    allocation: str = setting("uniform", one_of("uniform", "erk"))

    def check(self) -> None:
        """At least an input and an output size."""
        if len(self.architecture) < 2:
            raise ValueError(f"architecture must list at least 2 sizes (input, ..., output), "
                             f"got {self.architecture!r}")


class EvolvableNetwork(nn.Module, InputRules):
    """A sparse feed-forward network that evolution components change in place (module
    docstring). Build it with `create_standard_network`.

    Args:
        architecture: ``[input, hidden..., output]`` widths.
        sparsity: connected fraction of every layer at start (at least one edge per layer).
        activation: ``"relu"`` or ``"tanh"`` for the hidden stages.
        seed: seed of the structure and weights (None: torch's global generator).
        allocation: ``"uniform"`` (every layer at ``sparsity``, the seed's) or ``"erk"``
            (the same total number of connections split by ERK, density ∝ (n_in + n_out) /
            (n_in · n_out), as the RigL / SET / static peers: a uniform 1% leaves a 80 → 10
            logit layer 8 connections).

    ``track = True`` keeps every stage's output of the next forward in ``activations``
    (input first, logits last), for the analyzers.
    """

    def __init__(self, architecture: Sequence[int], sparsity: float = 0.1,
                 activation: str = "relu", seed: Optional[int] = None,
                 allocation: str = "uniform"):
        super().__init__()
        self.spec = NetworkSpec(architecture=list(architecture), sparsity=sparsity,
                                activation=activation, allocation=allocation)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self._gen = gen
        sizes = self.spec.architecture
        self.stages = nn.ModuleList()
        self._next_uid = 0
        dens = [sparsity] * (len(sizes) - 1)
        if allocation == "erk":  # the first generation's ERK split of the same total
            total = max(1, round(sparsity * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))))
            dens = erk_densities(sizes, total)
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            last = i == len(sizes) - 2
            act = None if last else activation
            self.stages.append(Stage(StandardSparseLayer(a, b, dens[i], activation=act,
                                                         generator=gen), act, self._uid()))
        self.track = False
        self.activations: list[Tensor] = []
        self.iteration = 0  # the evolution iteration (set by the evolution system)
        self.epoch = 0  # epochs trained so far (set by the system; new layers' birth)

    def _uid(self) -> int:
        self._next_uid += 1
        return self._next_uid - 1

    # -- input rules
    def expected_input(self) -> str:
        """What one batch looks like."""
        return f"shape (batch, {self.stages[0].in_features})"

    def _fits(self, x: Tensor) -> bool:
        return x.dim() == 2 and x.shape[1] == self.stages[0].in_features

    def n_outputs(self) -> int:
        """Number of classes."""
        return self.stages[-1].out_features

    # -- forward
    def forward(self, x: Tensor) -> Tensor:
        """Logits of a (batch, input) tensor."""
        if not isinstance(x, Tensor) or not self._fits(x):
            raise ValueError(f"x must have {self.expected_input()}, got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        hs = [x]
        h = x
        for st in self.stages:
            h = st(h)
            hs.append(h)
        if self.track:
            self.activations = [t.detach() for t in hs]
        return h

    # -- description
    @property
    def activation(self) -> str:
        """The hidden stages' activation."""
        return self.spec.activation

    def architecture(self) -> list[int]:
        """Current widths, input first."""
        return [self.stages[0].in_features] + [s.out_features for s in self.stages]

    def stage_index(self, uid: int) -> Optional[int]:
        """Current index of the stage with ``uid`` (None when it is gone)."""
        for i, st in enumerate(self.stages):
            if st.uid == uid:
                return i
        return None

    def hidden(self) -> list[int]:
        """Indices of the hidden stages (all but the last)."""
        return list(range(len(self.stages) - 1))

    def parameter_groups(self) -> list[tuple[str, list[nn.Parameter]]]:
        """One (name, parameters) per stage and per residual block, named by uid (stable
        across insertions): what the optimizer's groups follow."""
        out = []
        for st in self.stages:
            out.append((f"stage{st.uid}", list(st.layer.parameters())))
            for b in st.blocks:
                out.append((f"block{b.uid}", list(b.parameters())))
        return out

    def units(self) -> dict[str, dict]:
        """Per optimizer group name: ``depth`` (stage index / (stages − 1), in [0, 1]) and
        ``birth`` (the epoch it was made at), ``index`` (its stage) and ``size`` (live
        connections + biases): what the learning-rate rules read."""
        n = max(1, len(self.stages) - 1)
        out = {}
        for i, st in enumerate(self.stages):
            out[f"stage{st.uid}"] = {"depth": i / n, "birth": st.birth, "index": i,
                                     "size": _size(st.layer)}
            for b in st.blocks:
                out[f"block{b.uid}"] = {"depth": i / n, "birth": b.birth, "index": i,
                                        "size": _size(b.first) + _size(b.second)}
        return out

    def get_network_stats(self) -> dict:
        """Connection counts: ``total_connections`` (every live edge, residual blocks
        included), ``total_parameters`` (live edges + biases), ``architecture``, ``depth``,
        ``residual_blocks``, ``connectivity`` (main-path edges / Σ n_in·n_out of the stages),
        ``layers``: per stage ``{in, out, connections, density, residual, blocks}``."""
        layers, total, main, possible, params = [], 0, 0, 0, 0
        for st in self.stages:
            n = st.layer.nnz
            blocks = sum(b.first.nnz + b.second.nnz for b in st.blocks)
            poss = st.in_features * st.out_features
            layers.append({"in": st.in_features, "out": st.out_features, "connections": n,
                           "density": n / poss, "residual": st.residual,
                           "blocks": len(st.blocks)})
            total += n + blocks
            main, possible = main + n, possible + poss
        for lay in sparse_layers(self):
            params += lay.nnz + (lay.bias.numel() if lay.bias is not None else 0)
        return {"total_connections": total, "total_parameters": params,
                "architecture": self.architecture(), "depth": len(self.stages),
                "residual_blocks": sum(len(s.blocks) for s in self.stages),
                "connectivity": main / possible, "layers": layers}

    # -- edits
    def _stage(self, s: int, hidden: bool = True) -> Stage:
        n = len(self.stages) - (1 if hidden else 0)
        check_int("stage", s, 0, n - 1)
        return self.stages[s]

    def add_connections(self, s: int, src: Tensor, dst: Tensor,
                        values: Tensor | float = 0.0,
                        optimizer: Optional[torch.optim.Optimizer] = None) -> int:
        """New edges src → dst in stage ``s``'s layer (value 0 by default: exact); returns how
        many were new. Optimizer moments move with their edges (`SparseLinear.grow`)."""
        lay = self._stage(s, hidden=False).layer
        return grow_edges(lay, src.long(), dst.long(), values, optimizer).inserted

    def prune_connections(self, s: int, slots: Tensor,
                          optimizer: Optional[torch.optim.Optimizer] = None) -> int:
        """Remove edges of stage ``s``'s layer by slot; returns how many."""
        return self._stage(s, hidden=False).layer.prune(slots, optimizer=optimizer)

    def widen(self, s: int, k: int, optimizer: Optional[torch.optim.Optimizer] = None,
              density: Optional[float] = None, init: str = "random") -> list[int]:
        """Add ``k`` neurons to hidden stage ``s``; returns their indices. A residual stage
        after it widens with it; the stage's residual blocks get exact zeros.

        ``init="random"``: random incoming edges (``density``, default the network's, at
        least one each, scaled init) and zero-valued outgoing edges to the next stage (they
        get gradient at once). ``init="gradmax"`` (GradMax, Evci et al. 2022; tanh only:
        ReLU has no gradient at 0): zero-valued incoming edges and outgoing weights along the
        top-k left singular vectors of M = Σ_batch ∂L/∂z_next ⊗ h_in of the last training
        batch, which maximise the new incoming weights' gradient W_outᵀ M; each new neuron's
        incoming edges are its ``density`` share of sources with the largest |W_outᵀ M|, its
        outgoing edges the largest entries of its singular vector, each column scaled to the
        mean norm of the next stage's existing columns. Both are exact everywhere (random:
        zero outgoing; gradmax: zero input, act(0) = 0)."""
        check_int("k", k, 1)
        check_choice("init", init, ("random", "gradmax"))
        density = self.spec.sparsity if density is None else check_fraction("density",
                                                                             density)
        st = self._stage(s)
        if st.residual:
            raise ValueError(f"stage {s} is a residual stage (its width is its input's): widen "
                             f"the plain stage before it")
        old = st.out_features
        new_idx = torch.arange(old, old + k)
        plan = self._gradmax_plan(s, k, density) if init == "gradmax" else None
        st.layer = resized(st.layer, st.in_features, old + k, optimizer)
        if plan is None:
            src, dst = random_edges(st.in_features, old + k, density, self._gen, rows=new_idx)
            std = GAIN[self.activation] / math.sqrt(max(1, src.numel() // k))
            init_in: Tensor | float = torch.randn(src.numel(), generator=self._gen) * std
        else:
            src, dst, init_in = plan["in_src"], plan["in_dst"] + old, 0.0
        grow_edges(st.layer, src, dst, init_in, optimizer)
        self._widen_blocks(st, old + k, optimizer)
        j = s + 1
        while self.stages[j].residual:  # h + act(W h) carries the new neurons through
            nxt = self.stages[j]
            nxt.layer = resized(nxt.layer, old + k, old + k, optimizer)
            self._widen_blocks(nxt, old + k, optimizer)
            j += 1
        nxt = self.stages[j]
        nxt.layer = resized(nxt.layer, old + k, nxt.out_features, optimizer)
        if plan is None:
            # outgoing edges at value 0: each neuron of the consuming stage hears ~density of
            # the new ones (at least one), so their outgoing weights get gradient at once
            src, dst = random_edges(k, nxt.out_features, density, self._gen)
            grow_edges(nxt.layer, src + old, dst, 0.0, optimizer)
        else:
            grow_edges(nxt.layer, plan["out_src"] + old, plan["out_dst"], plan["out_val"],
                       optimizer)
        return new_idx.tolist()

    def _gradmax_plan(self, s: int, k: int, density: float) -> dict[str, Tensor]:
        """GradMax's edges for k new neurons of stage s (see `widen`)."""
        st, nxt = self.stages[s], self.stages[s + 1]
        if self.activation != "tanh":
            raise ValueError("init='gradmax' needs tanh (ReLU has no gradient at 0, so zero "
                             "incoming weights would never move)")
        if nxt.residual:
            raise ValueError("init='gradmax' needs a plain stage after the widened one")
        x, dy = st.layer._x, nxt.layer._dy
        if x is None or dy is None:
            raise ValueError("init='gradmax' needs the gradients of a training step "
                             "(StandardNetworkTrainer keeps them)")
        m = dy.reshape(-1, dy.shape[-1]).T.double() @ x.reshape(-1, x.shape[-1]).double()
        u = torch.linalg.svd(m, full_matrices=False)[0]  # (out, r)
        if u.shape[1] < k:
            raise ValueError(f"M has rank at most {u.shape[1]}: cannot widen by {k} with "
                             f"gradmax")
        w_out = u[:, :k]  # (out, k), unit columns
        lay = nxt.layer
        cols = lay.edges.to_dense(lay.values.detach()).norm(dim=0)  # per input neuron
        scale = float(cols[cols > 0].mean()) if bool((cols > 0).any()) else 1.0
        n_out = max(1, math.ceil(density * w_out.shape[0]))
        keep = w_out.abs().topk(n_out, dim=0).indices  # (n_out, k)
        out_dst = keep.T.flatten()
        out_src = torch.arange(k).repeat_interleave(n_out)
        vals = w_out[out_dst, out_src]
        w_kept = torch.zeros_like(w_out)
        w_kept[out_dst, out_src] = vals
        w_kept = w_kept / w_kept.norm(dim=0, keepdim=True).clamp(min=1e-12)
        out_val = (w_kept[out_dst, out_src] * scale).float()
        g_in = w_kept.T @ m  # (k, in): the new incoming weights' gradient
        n_in = max(1, math.ceil(density * g_in.shape[1]))
        in_src = g_in.abs().topk(n_in, dim=1).indices.flatten()
        in_dst = torch.arange(k).repeat_interleave(n_in)
        return {"in_src": in_src, "in_dst": in_dst, "out_src": out_src, "out_dst": out_dst,
                "out_val": out_val}

    def _widen_blocks(self, st: Stage, width: int, optimizer) -> None:
        for b in st.blocks:
            b.first = resized(b.first, width, b.first.out_features, optimizer)
            b.second = resized(b.second, b.second.in_features, width, optimizer)

    def insert_layer(self, after: int, optimizer: Optional[torch.optim.Optimizer] = None,
                     density: Optional[float] = None) -> int:
        """Insert a hidden stage of the same width after hidden stage ``after`` (module
        docstring: identity with ReLU, zero residual with tanh; plus zero-valued random edges
        at ``density`` so the layer trains). Returns the new stage's index. The optimizer
        gets its parameters from `sync_optimizer`."""
        st = self._stage(after)
        identity = self.activation == "relu"
        if identity and st.blocks:
            raise ValueError(f"stage {after} has residual blocks, so its output may be "
                             f"negative: an identity ReLU layer after it would not be exact")
        w = st.out_features
        density = self.spec.sparsity if density is None else check_fraction("density",
                                                                             density)
        src, dst = random_edges(w, w, density, self._gen)
        diag = torch.arange(w)
        edges = EdgeList.from_coo(torch.cat([src, diag]), torch.cat([dst, diag]), w, w)
        lay = StandardSparseLayer(w, w, edges=edges, activation=self.activation)
        lay.keep_for_growth = st.layer.keep_for_growth
        with torch.no_grad():
            lay.values.zero_()
            if identity:
                s_, d_ = lay.edges.to_coo()
                lay.values[:lay.nnz] = (s_ == d_).to(lay.values.dtype)
        new = Stage(lay.to(st.layer.values.device), self.activation, self._uid(),
                    residual=not identity, birth=self.epoch)
        self.stages.insert(after + 1, new)
        return after + 1

    def add_residual_block(self, s: int, hidden: Optional[int] = None,
                           density: Optional[float] = None) -> ResidualBlock:
        """A zero-output residual block on hidden stage ``s`` (``hidden`` neurons, default the
        stage's width; ``density`` default the network's)."""
        st = self._stage(s)
        w = st.out_features
        hidden = w if hidden is None else check_int("hidden", hidden, 1)
        density = self.spec.sparsity if density is None else check_fraction("density",
                                                                             density)
        b = ResidualBlock(w, hidden, density, self.activation, self._uid(), self.epoch,
                          self._gen).to(st.layer.values.device)
        for lay in sparse_layers(b):
            lay.keep_for_growth = st.layer.keep_for_growth
        st.blocks.append(b)
        return b

    def add_patch(self, s: int, sources: Sequence[int], targets: Sequence[int],
                  patch_size: int = 4) -> TemporaryPatchLayer:
        """A `TemporaryPatchLayer` on hidden stage ``s`` (reads ``sources``, writes
        ``targets``, zero output at insertion)."""
        st = self._stage(s)
        p = TemporaryPatchLayer(st.out_features, torch.as_tensor(sources),
                                torch.as_tensor(targets), patch_size, self.activation,
                                self._uid(), self.epoch, self._gen)
        p = p.to(st.layer.values.device)
        for lay in (p.first, p.second):
            lay.keep_for_growth = st.layer.keep_for_growth
        st.blocks.append(p)
        return p

    def patches(self) -> list[TemporaryPatchLayer]:
        """The temporary patches, in stage order."""
        return [b for st in self.stages for b in st.blocks if b.temporary]

    def remove_patch(self, patch: TemporaryPatchLayer) -> None:
        """Take ``patch`` out (the output changes by what it adds, on its targets only: a
        patch has no second bias, so nothing while its W2 is 0); `sync_optimizer` then drops
        its parameters."""
        for st in self.stages:
            for i, b in enumerate(st.blocks):
                if b is patch:
                    del st.blocks[i]
                    return
        raise ValueError("patch is not in this network")

    def merge_patch(self, patch: TemporaryPatchLayer) -> None:
        """Make ``patch`` a permanent residual block of its stage (exact: the same module
        and parameters, no longer listed by `patches`)."""
        if patch not in self.patches():
            raise ValueError("patch is not a temporary patch of this network")
        patch.temporary = False

    def revive(self, s: int, neurons: Tensor, fan_in: int = 4,
               optimizer: Optional[torch.optim.Optimizer] = None) -> int:
        """Revival of neurons of hidden stage ``s`` that were exactly 0 on the analysed data:
        their outgoing weights (next stage and the stage's blocks) become 0 and each gets up
        to ``fan_in`` new incoming edges with scaled random values; returns the edges added.
        Exact wherever the neurons were 0. A ValueError when stage ``s + 1`` is residual: its
        identity path carries the revived neurons to later stages, and that path cannot be
        zeroed."""
        st = self._stage(s)
        neurons = torch.as_tensor(neurons, dtype=torch.long).flatten()
        if neurons.numel() == 0:
            return 0
        if self.stages[s + 1].residual:
            raise ValueError(f"cannot revive neurons of stage {s}: stage {s + 1} is residual, "
                             f"so its identity path would carry the revived neurons' new "
                             f"output to later stages (the change would not be exact)")
        consumers = [self.stages[s + 1].layer] + [b.first for b in st.blocks]
        with torch.no_grad():
            for lay in consumers:
                src, _ = lay.edges.to_coo()
                hit = torch.isin(src, neurons)
                lay.values[:src.numel()][hit] = 0.0
        cols = torch.arange(st.in_features)
        k = min(fan_in, st.in_features)
        src = torch.stack([cols[torch.randperm(cols.numel(), generator=self._gen)[:k]]
                           for _ in range(neurons.numel())]).flatten()
        dst = neurons.repeat_interleave(k)
        std = GAIN[self.activation] / math.sqrt(k)
        init = torch.randn(src.numel(), generator=self._gen).abs() * std  # positive: alive
        return grow_edges(st.layer, src, dst, init, optimizer).inserted


def create_standard_network(architecture: Sequence[int], sparsity: float = 0.1,
                            activation: str = "relu", seed: Optional[int] = None,
                            device=None, allocation: str = "uniform") -> EvolvableNetwork:
    """The seed's ``create_standard_network(architecture, sparsity)``: an `EvolvableNetwork`
    of `StandardSparseLayer` edge lists; ``sparsity`` is the connected fraction (0.01 = 1% of
    each layer's connections present), as in the first generation; ``allocation="erk"``
    splits the same total by ERK instead."""
    check_instance("architecture", architecture, (list, tuple))
    check_choice("activation", activation, ACTIVATIONS)
    net = EvolvableNetwork(architecture, sparsity, activation, seed, allocation)
    return net.to(device) if device is not None else net
