"""MorphoNet Pro's structure decisions as `morphonet.loop.Hook` objects: temperature annealing,
the sparsity penalty and the enforced sparsity schedule. `MorphoTrainer` plugs all three into
the one training loop; the first two work on any model holding learned-mask layers (the
drop-in demo uses them on an ``nn.Sequential`` of `MaskedLinear`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

from torch import Tensor

from morpho_kernels.distributed import resolve_group
from morpho_kernels.nn import LearnedMask

from ..loop import Hook, TrainLoop
from .config import MorphoConfig
from .models import MorphoModel
from .schedule import enforce_sparsity, target_sparsity_at

__all__ = ["AnnealTemperature", "EnforceSparsity", "MaskPenalty", "TOLERANCE"]

TOLERANCE = 0.02  # how far from target_sparsity the sparsity may land (±2 points)


class AnnealTemperature(Hook):
    """At the start of every epoch, T = ``schedule(epoch)`` on every learned-mask layer of the
    loop's model (in place); the record gets ``temperature``."""

    def __init__(self, schedule: Callable[[int], float]):
        if not callable(schedule):
            raise TypeError(f"schedule must be callable, got {type(schedule).__name__}")
        self.schedule = schedule
        self.value: Optional[float] = None

    def on_epoch_start(self, loop: TrainLoop, epoch: int) -> None:
        self.value = float(self.schedule(epoch))
        for m in loop.model.modules():
            if isinstance(m, LearnedMask):
                m.set_temperature(self.value)

    def on_train_end(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        record["temperature"] = self.value

    def describe(self, record: dict[str, Any]) -> str:
        return f"T={record['temperature']:.2f}"


class MaskPenalty(Hook):
    """Adds ``penalty(scale(epoch))`` to every step's loss, where ``penalty`` maps the
    epoch's scale to a differentiable term of the mask values (e.g.
    `MorphoModel.sparsity_penalty`); nothing while the scale is 0 (warmup)."""

    def __init__(self, penalty: Callable[[float], Tensor], scale: Callable[[int], float]):
        if not callable(penalty) or not callable(scale):
            raise TypeError("penalty and scale must be callable")
        self.penalty_fn, self.scale_fn = penalty, scale
        self.scale = 0.0

    def on_epoch_start(self, loop: TrainLoop, epoch: int) -> None:
        self.scale = float(self.scale_fn(epoch))

    def penalty(self, loop: TrainLoop) -> Optional[Tensor]:
        return self.penalty_fn(self.scale) if self.scale > 0 else None


class EnforceSparsity(Hook):
    """After every epoch's steps, prune until the model's sparsity meets the schedule
    (`schedule.enforce_sparsity` with the config's ranking and distribution); the record gets
    ``sparsity`` and ``target``. Only epochs within `TOLERANCE` of ``target_sparsity`` may be
    selected as the best (a model chosen before the schedule finished would not be at the
    target). ``group``: a process group under data-parallel training (the unit scores are
    averaged over it before ranking, so every replica prunes the same units), None for a
    rank-local decision, "auto" as `morpho_kernels.distributed.resolve_group`."""

    def __init__(self, model: MorphoModel, config: MorphoConfig, group: Any = "auto"):
        self.model, self.config = model, config
        self.group = resolve_group(group, "prune", "units")

    def on_train_end(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        cfg = self.config
        target = target_sparsity_at(cfg, record["epoch"])
        enforce_sparsity(self.model, target, cfg.prune_score, cfg.sparsity_distribution,
                         final=max(target, cfg.target_sparsity), group=self.group)
        record["sparsity"], record["target"] = self.model.sparsity(), target

    def selectable(self, loop: TrainLoop, record: dict[str, Any]) -> bool:
        return record["sparsity"] >= self.config.target_sparsity - TOLERANCE

    def describe(self, record: dict[str, Any]) -> str:
        return f"sparsity={record['sparsity']:.3f} (target {record['target']:.3f})"
