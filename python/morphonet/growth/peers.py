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

from ..checks import check_choice, check_fraction, check_instance, check_int
from ..loop import Hook, TrainLoop
from .network import GAIN, MinimalNetwork

METHODS = ("rigl", "set", "static")


def erk_densities(layer_sizes: Sequence[int], total: int) -> list[float]:
    """ERK densities of the adjacent layer pairs whose connections sum to ``total``."""
    sizes = list(layer_sizes)
    if len(sizes) < 2:
        raise ValueError("layer_sizes needs at least 2 entries")
    n = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    check_int("total", total, 1, sum(n))
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


class SparsePeer(Hook):
    """Drop / regrow schedule of RigL or SET (or nothing: static) for a MinimalNetwork, as a
    training-loop hook (`on_step_end` calls `after_step` with the loop's optimizer).

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
        check_choice("method", method, METHODS)
        check_instance("network", network, MinimalNetwork)
        check_int("update_every", update_every, 1)
        check_int("end_step", end_step, 1)
        check_fraction("alpha", alpha)
        self.net, self.method = network, method
        self.update_every, self.end_step, self.alpha = update_every, end_step, alpha
        self.step = 0
        self.moved = 0  # connections moved so far (drop + regrow counts each pair once)
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
            std = GAIN[self.net.activation] / math.sqrt(max(1.0, nnz / lay.out_features))
            init = torch.randn(k, generator=self.gen) * std
        lay.prune(drop, optimizer=optimizer)
        rep = lay.grow(pick[:, 1], pick[:, 0], init, optimizer=optimizer)
        assert rep.inserted == k, "absent positions are never duplicates"
        return k


    def on_step_end(self, loop: TrainLoop) -> None:
        self.moved += self.after_step(loop.optimizers[0])


def train_peer_epoch(net: MinimalNetwork, peer: SparsePeer, loader, optimizer, criterion,
                     epoch: int = 0) -> dict:
    """One epoch of a peer on the training loop (the peer is its hook); returns the loop's
    record with ``moved`` (connections moved this epoch)."""
    before = peer.moved
    loop = TrainLoop(net, optimizer, loss_fn=criterion, hooks=[peer], select=None,
                     track_train_acc=True, merge_single_batch=False)
    rec = loop.run_epoch(loader, epoch)
    rec["moved"] = peer.moved - before
    return rec
