"""The trainer component: `StandardNetworkTrainer(epochs, learning_rate)`, training on the one
loop (`morphonet.loop.TrainLoop`), with the optimizer kept true to the network.

Before each training call the optimizer is synchronised with the network's live parameters
(`sync_optimizer`: surviving parameters keep their moments, new ones start at zero, dropped ones
leave), so a network changed by a strategy trains all of its parameters, new ones included;
the seed's loop kept the optimizer of the network before the change. Every edge-list layer
keeps its last input and output gradient (``keep_for_growth``), so the strategies can rank
absent connections by the dense gradient (as RigL) after training. Validation runs on the
context's held-out data only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ..config import Config, ints, one_of, reals, setting
from ..loop import Hook, TrainLoop
from .interfaces import NetworkContext, NetworkTrainer
from .network import sparse_layers
from .optim import build_optimizer, sync_optimizer

__all__ = ["StandardNetworkTrainer", "TrainerConfig", "network_groups", "prepare_optimizer"]

_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


@dataclass
class TrainerConfig(Config):
    """Settings of `StandardNetworkTrainer` (the seed's ``epochs`` and ``learning_rate``;
    the rest ours)."""

    epochs: int = setting(5, ints(1))
    learning_rate: float = setting(0.01, reals(0, lo_open=True))
    optimizer: str = setting("adam", one_of("adam", "adamw", "sgd"))
    weight_decay: float = setting(0.0, reals(0))
    batch_size: int = setting(64, ints(1))
    grad_clip: float = setting(0.0, reals(0))


def network_groups(network: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """The network's named parameter groups (`EvolvableNetwork.parameter_groups`), or one
    group ``"all"`` for any other module."""
    if hasattr(network, "parameter_groups"):
        return network.parameter_groups()
    return [("all", list(network.parameters()))]


def prepare_optimizer(context: NetworkContext, config: Optional[TrainerConfig] = None) -> dict:
    """Build ``context.optimizer`` when there is none, else make it hold exactly the live
    parameters (`sync_optimizer`, moments kept) and set every group's ``lr`` and
    ``initial_lr`` (the base the learning-rate rules scale) to ``config.learning_rate`` and
    its ``weight_decay`` to ``config.weight_decay``, so a later trainer's settings (the
    seed's coarse → medium → fine phases) take effect. A ValueError when the optimizer is
    of another type than ``config.optimizer``. Returns the sync counts."""
    config = config or TrainerConfig()
    groups = network_groups(context.network)
    if context.optimizer is None:
        context.optimizer = build_optimizer(groups, config.optimizer, config.learning_rate,
                                            config.weight_decay)
        return {"added": sum(len(p) for _, p in groups), "removed": 0, "kept": 0}
    kind = _OPTIMIZERS[config.optimizer]
    if type(context.optimizer) is not kind:
        raise ValueError(
            f"the context's optimizer is {type(context.optimizer).__name__} but this trainer "
            f"asks for {config.optimizer!r} ({kind.__name__}): a trainer does not swap the "
            f"optimizer (its state would be lost); use one optimizer type for every trainer, "
            f"or set context.optimizer = None to start a fresh one")
    sync = sync_optimizer(context.optimizer, groups)
    for g in context.optimizer.param_groups:
        g["lr"] = g["initial_lr"] = config.learning_rate
        g["weight_decay"] = config.weight_decay
    return sync


class StandardNetworkTrainer(NetworkTrainer):
    """The seed's ``StandardNetworkTrainer(epochs=5, learning_rate=0.01)``: ``epochs`` epochs
    of `TrainLoop` per call, with the context's optimizer (built on first use: Adam over the
    network's named groups) synchronised first, the context's hooks plus ``hooks``, and
    validation on ``context.val_data``. Extra settings: `TrainerConfig`."""

    def __init__(self, epochs: int = 5, learning_rate: float = 0.01,
                 hooks: tuple[Hook, ...] = (), **settings: Any):
        self.config = TrainerConfig(epochs=epochs, learning_rate=learning_rate, **settings)
        self.hooks = list(hooks)

    def train(self, context: NetworkContext) -> dict:
        """Train ``epochs`` epochs; one record per epoch goes to ``context.history`` (the
        loop's record plus ``iteration`` and ``connections``). Returns ``{"epochs",
        "last"}``."""
        c = self.config.validate()
        net = context.network.to(context.device)
        sync = prepare_optimizer(context, c)
        for lay in sparse_layers(net):
            lay.keep_for_growth = True
        loop = TrainLoop(net, context.optimizer, hooks=[*self.hooks, *context.hooks],
                         grad_clip=c.grad_clip, batch_size=c.batch_size,
                         generator=context.generator, select=None, restore_best=False,
                         track_train_acc=True)
        rec: dict = {}
        for _ in range(c.epochs):
            rec = loop.run_epoch(context.train_loader, context.epoch, context.val_data)
            rec["iteration"] = context.iteration
            if hasattr(net, "get_network_stats"):
                rec["connections"] = net.get_network_stats()["total_connections"]
            context.history.append(rec)
            context.epoch += 1
        return {"epochs": c.epochs, "last": rec, "optimizer_sync": sync}
