"""`AutoplasticTrainer`: the seed's training recipe on the one training loop
(`morphonet.loop.TrainLoop`).

Weights step with SGD (Nesterov, momentum 0.9, weight decay) at ``base_lr``; the architecture
parameters (α, and the learned gates' logits) with Adam at ``base_lr × arch_lr_ratio``, no
weight decay (two timescales); both follow one cosine schedule with linear warm-up
(`CosineWarmup`), per step. Loss: cross-entropy with label smoothing, MixUp when
``use_mixup``; mixed precision (``amp``: bf16 autocast on the CPU, ``amp_dtype`` on CUDA);
channels-last for 2-D models when ``channels_last``. α trains only in unstable blocks
(`StabilityGate`); P and C are learned with the L0 penalty (`GatePenalty`, ``gates=
"learned"``) or nudged by the seed's rules (`RuleGates`, ``gates="rules"``). The best epoch is
chosen on validation accuracy only, among the epochs from ``select_from × epochs`` on
(`SelectFrom`), and the model holds it after `train`.

The same trainer trains a network without gates (a `StaticAutoplasticNet`, e.g. an export
trained from scratch): the same optimizer, schedule, loss and MixUp, no architecture hooks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ..checks import check_instance, resolve_device
from ..loop import Callback, Hook, TrainLoop, batch_ranges, probe
from .config import TrainConfig
from .hooks import (
    AutoplasticLoss,
    CosineWarmup,
    FreezeGates,
    GateLog,
    GatePenalty,
    MixUp,
    RuleGates,
    SelectFrom,
    StabilityGate,
)
from .models import AutoplasticNet

__all__ = ["AutoplasticTrainer"]


class AutoplasticTrainer:
    """Trains ``model`` (an `AutoplasticNet`, or any network for the static peers) with
    ``config`` (module docstring).

    Args:
        model: the network.
        config: a `TrainConfig` (its ``gates`` must be the model's).
        log: where the per-epoch log goes (the seed's format for an `AutoplasticNet`);
            None: silent.
    """

    def __init__(self, model: nn.Module, config: Optional[TrainConfig] = None,
                 log: Optional[Callable[[str], None]] = print):
        self.model = check_instance("model", model, nn.Module)
        self.config = check_instance("config", config or TrainConfig(), TrainConfig).validate()
        self.gated = isinstance(model, AutoplasticNet)
        if self.gated and model.gates != self.config.gates:
            raise ValueError(f"the model was built with gates={model.gates!r} but the config "
                             f"says gates={self.config.gates!r}")
        self.log = log
        self.device = resolve_device(self.config.device)
        cfg = self.config
        arch = model.arch_parameters() if self.gated else []
        ids = {id(p) for p in arch}
        weights = [p for p in model.parameters() if id(p) not in ids]
        self.weight_opt = torch.optim.SGD(weights, lr=cfg.base_lr, momentum=cfg.momentum,
                                          nesterov=cfg.momentum > 0,
                                          weight_decay=cfg.weight_decay)
        self.arch_opt = (torch.optim.Adam(arch, lr=cfg.base_lr * cfg.arch_lr_ratio)
                         if arch else None)
        self.stability: Optional[StabilityGate] = None

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The weight optimizer, then the architecture optimizer when the model has one."""
        return [self.weight_opt] + ([self.arch_opt] if self.arch_opt is not None else [])

    def hooks(self, steps_per_epoch: int, input_shape: tuple[int, ...]) -> list[Hook]:
        """The recipe's hooks, in the order the loop calls them."""
        cfg, model = self.config, self.model
        hooks: list[Hook] = [CosineWarmup(cfg.epochs * steps_per_epoch,
                                          cfg.warmup_epochs * steps_per_epoch)]
        if cfg.select_from > 0:
            hooks.append(SelectFrom(int(cfg.select_from * cfg.epochs)))
        if cfg.use_mixup:
            hooks.append(MixUp(cfg.mixup_alpha))
        if self.gated:
            self.stability = StabilityGate(model, cfg.epsilon, cfg.ema)
            hooks.append(self.stability)
            if cfg.gates == "rules":
                hooks.append(RuleGates(model, self.stability, cfg))
            elif cfg.gates == "learned" and (cfg.sparsity > 0 or cfg.channel_sparsity > 0):
                hooks.append(GatePenalty(model, input_shape, cfg.sparsity,
                                         cfg.channel_sparsity))
            if cfg.gates == "learned" and cfg.freeze_gates < 1:
                hooks.append(FreezeGates(model, int(cfg.freeze_gates * cfg.epochs)))
            hooks.append(GateLog(model, cfg.epochs, self.log))
        return hooks

    def _autocast(self) -> Optional[torch.dtype]:
        cfg = self.config
        if not cfg.amp:
            return None
        if self.device.type == "cpu":
            return torch.bfloat16
        return {"bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.amp_dtype]

    def train(self, x: Tensor, y: Tensor, x_val: Optional[Tensor] = None,
              y_val: Optional[Tensor] = None, *, progress: bool = False,
              callback: Optional[Callable[[dict], None]] = None,
              checkpoint: Optional[Union[str, os.PathLike]] = None,
              resume: bool = False) -> dict[str, Any]:
        """Train for ``config.epochs`` on (x, y) (inputs shaped (n, C, *S)), choosing the best
        epoch on (x_val, y_val) when given. Returns ``history`` (one record per epoch: loss,
        train_acc, val_loss, val_acc, lr, and for a gated model S, alpha_trained, P, alpha,
        meanC, L_eff, active_ratio, depth, active_ratio_export, pruned_pct,
        expected_flops), ``best_epoch``, ``best_val_acc``, ``train_time`` (s) and, for a gated
        model, ``structure`` and ``summary`` of the chosen epoch. ``checkpoint`` / ``resume``:
        as `TrainLoop.fit`. The splits are checked first by the model's input rules
        (`Backbone.check_inputs`): a wrong shape or label range is a ``ValueError`` naming
        ``X_train`` / ``y_val`` and so on."""
        cfg, model = self.config.validate(), self.model
        if (x_val is None) != (y_val is None):
            raise ValueError("pass both x_val and y_val, or neither")
        x, y = model.check_inputs(x, y, "train")
        if x_val is not None:
            x_val, y_val = model.check_inputs(x_val, y_val, "val")
        torch.manual_seed(cfg.seed)
        model.to(self.device)
        if cfg.channels_last and x.dim() == 4:
            model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        probe(model, [("train", x, y)] + ([("val", x_val, y_val)] if x_val is not None else []))
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        steps = len(batch_ranges(x.shape[0], cfg.batch_size, has_bn))
        hooks = self.hooks(steps, tuple(x.shape[1:]))
        if callback is not None:
            hooks.append(Callback(callback))
        loop = TrainLoop(model, self.optimizers(), loss_fn=AutoplasticLoss(cfg.label_smoothing),
                         hooks=hooks, grad_clip=cfg.grad_clip, batch_size=cfg.batch_size,
                         generator=torch.Generator().manual_seed(cfg.seed), select="val_acc",
                         track_train_acc=True, progress=progress, autocast=self._autocast(),
                         checkpoint=checkpoint)
        val = (x_val, y_val) if x_val is not None else None
        res = loop.fit((x, y), val, cfg.epochs, resume=resume)
        out = {"history": res["history"], "best_epoch": res["best_epoch"],
               "best_val_acc": res["best_value"], "train_time": res["train_time"]}
        if self.gated:
            out["structure"] = model.structure()
            out["summary"] = model.arch_state_summary()
        return out
