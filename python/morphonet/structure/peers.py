"""Peers of Structure Net on the same SparseLinear layers: RigL, SET and static sparse training.

All three train a MinimalNetwork with ``max_skip=1`` (a plain sparse MLP) whose per-layer
densities come from the **ERK** allocation (density of layer l ∝ (n_in + n_out) / (n_in · n_out),
scaled so that the total number of connections is the target, layers capped at 1 with the
excess redistributed). The number of connections stays constant during training:

* **RigL** (Evci et al. 2020): every ``update_every`` steps until ``end_step``, in each layer
  drop the k = f(t)·nnz live connections of smallest |W| and grow the k absent connections of
  largest dense gradient |∂L/∂W| (morpho_kernels.dense_grad_at on the last batch), new weights 0
  with zero optimizer moments; f(t) = α/2 · (1 + cos(π t / end_step)), α = 0.3.
* **SET** (Mocanu et al. 2018): same drop (smallest |W|, fraction ζ = 0.3, constant), regrowth
  at random absent positions, new weights N(0, σ²) with σ the layer's init scale.
* **static**: the ERK structure is fixed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch

from .network import _GAIN, MinimalNetwork

METHODS = ("rigl", "set", "static")


def erk_densities(layer_sizes: Sequence[int], total: int) -> list[float]:
    """ERK densities of the adjacent layer pairs whose connections sum to ``total``."""
    sizes = list(layer_sizes)
    if len(sizes) < 2:
        raise ValueError("layer_sizes needs at least 2 entries")
    n = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    if isinstance(total, bool) or not isinstance(total, int) or not 0 < total <= sum(n):
        raise ValueError(f"total must be an int in (0, {sum(n)}], got {total!r}")
    raw = [(a + b) / (a * b) for a, b in zip(sizes[:-1], sizes[1:])]
    dense: set[int] = set()
    while True:
        rest = total - sum(n[i] for i in dense)
        eps = rest / sum(raw[i] * n[i] for i in range(len(n)) if i not in dense)
        over = [i for i in range(len(n)) if i not in dense and eps * raw[i] > 1.0]
        if not over:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(n))]
        dense.update(over)


def make_peer_network(layer_sizes: Sequence[int], total: int, activation: str = "tanh",
                      seed: Optional[int] = None) -> MinimalNetwork:
    """A plain sparse MLP (max_skip 1, no spare neurons) with ERK densities totalling about
    ``total`` connections."""
    return MinimalNetwork(list(layer_sizes), activation=activation, max_skip=1,
                          neuron_capacity=0.0, layer_densities=erk_densities(layer_sizes, total),
                          seed=seed)


class SparsePeer:
    """Drop / regrow schedule of RigL or SET (or nothing: static) for a MinimalNetwork.

    Args:
        network: the network (its adjacent layers are updated; skip lists are not).
        method: ``"rigl"``, ``"set"`` or ``"static"``.
        update_every: steps between updates. end_step: last step of updates (RigL's T_end).
        alpha: RigL's initial drop fraction / SET's constant ζ.
        seed: random regrowth (SET) and tie-breaks.

    Call ``after_step(optimizer)`` after every optimizer step (with the batch's gradients still
    recorded: the network's layers keep them, ``keep_for_growth``).
    """

    def __init__(self, network: MinimalNetwork, method: str, update_every: int = 100,
                 end_step: int = 10_000, alpha: float = 0.3, seed: Optional[int] = None):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if not isinstance(network, MinimalNetwork):
            raise TypeError(f"network must be a MinimalNetwork, got {type(network).__name__}")
        for name, v in (("update_every", update_every), ("end_step", end_step)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        self.net, self.method = network, method
        self.update_every, self.end_step, self.alpha = update_every, end_step, alpha
        self.step = 0
        self.gen = torch.Generator().manual_seed(seed if seed is not None else 0)
        self.layers = [network.layer(j - 1, j) for j in range(1, network.n_layers + 1)]
        for lay in self.layers:
            lay.keep_for_growth = method == "rigl"

    def drop_fraction(self) -> float:
        """f(t): cosine-decayed for RigL, constant for SET."""
        if self.method == "set":
            return self.alpha
        return self.alpha / 2 * (1 + math.cos(math.pi * min(self.step, self.end_step)
                                              / self.end_step))

    def after_step(self, optimizer: Optional[torch.optim.Optimizer] = None) -> int:
        """Count the step; on an update step drop and regrow. Returns connections moved."""
        self.step += 1
        if self.method == "static" or self.step % self.update_every or self.step > self.end_step:
            return 0
        return sum(self._update(lay, optimizer) for lay in self.layers)

    def _update(self, lay, optimizer) -> int:
        nnz = lay.nnz
        k = int(self.drop_fraction() * nnz)
        absent = (lay.edges.to_dense() == 0).nonzero()  # (A, 2) rows (dst, src)
        k = min(k, absent.shape[0])
        if k == 0:
            return 0
        mag = lay.values.detach()[:nnz].abs()
        drop = torch.topk(mag, k, largest=False).indices
        if self.method == "rigl":
            score = lay.dense_grad_at(absent[:, 1], absent[:, 0]).abs()
            score = score + 1e-12 * torch.rand(score.shape, generator=self.gen)
            pick = absent[torch.topk(score, k).indices]
            init: torch.Tensor | float = 0.0
        else:
            pick = absent[torch.randperm(absent.shape[0], generator=self.gen)[:k]]
            std = _GAIN[self.net.activation] / math.sqrt(max(1.0, nnz / lay.out_features))
            init = torch.randn(k, generator=self.gen) * std
        lay.prune(drop, optimizer=optimizer)
        rep = lay.grow(pick[:, 1], pick[:, 0], init, optimizer=optimizer)
        assert rep.inserted == k, "absent positions are never duplicates"
        return k


def train_peer_epoch(net: MinimalNetwork, peer: SparsePeer, loader, optimizer, criterion) -> dict:
    """One epoch of a peer; returns {"loss", "train_acc", "moved"}."""
    net.train()
    tot = correct = seen = moved = 0
    for x, y in loader:
        out = net(x)
        loss = criterion(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        moved += peer.after_step(optimizer)
        tot += float(loss.detach()) * len(y)
        correct += int((out.argmax(1) == y).sum())
        seen += len(y)
    return {"loss": tot / max(1, seen), "train_acc": correct / max(1, seen), "moved": moved}
