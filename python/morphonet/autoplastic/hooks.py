"""Autoplastic's training recipe as `morphonet.loop.Hook` objects on the one training loop.

- `CosineWarmup`: the learning rate of every optimizer (weights and architecture alike, so the
  two timescales keep their ratio), linear warm-up then cosine decay, set before every step.
- `MixUp`: mixed inputs and a `MixedTarget` that `AutoplasticLoss` understands.
- `StabilityGate`: S per block against an EMA snapshot (`stability`), α trains in the next
  epoch only where S < ε (its gradient is cleared elsewhere).
- `GatePenalty`: the learned gates' L0 penalty, λ · expected MACs / full MACs.
- `RuleGates`: the seed's rule-based update of P and C (``gates="rules"``).
- `GateLog`: the seed's per-epoch log (P, α, mean C, L_eff, active-channel ratio, pruned %)
  into each epoch's record, printed in the seed's format when given a ``log``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_fraction, check_int, check_real
from ..loop import Hook, TrainLoop
from .config import TrainConfig
from .gates import RuleGate
from .models import AutoplasticNet
from .stability import EMASnapshot, block_weights, channel_stability, stability

__all__ = ["AutoplasticLoss", "CosineWarmup", "GateLog", "GatePenalty", "MixUp", "MixedTarget",
           "FreezeGates", "RuleGates", "SelectFrom", "StabilityGate", "format_epoch"]


# ---------------------------------------------------------------------------- loss, MixUp


@dataclass
class MixedTarget:
    """The targets of a MixUp batch: lam · y_a + (1 − lam) · y_b."""

    y_a: Tensor
    y_b: Tensor
    lam: float


class AutoplasticLoss:
    """Cross-entropy (float32) with ``label_smoothing`` on training steps; plain
    cross-entropy where gradients are off (evaluation: the seed's validation CE); a
    `MixedTarget` gives lam · CE(y_a) + (1 − lam) · CE(y_b)."""

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = check_fraction("label_smoothing", label_smoothing, hi_open=True)

    def __call__(self, out: Tensor, y: Any) -> Tensor:
        ls = self.label_smoothing if torch.is_grad_enabled() else 0.0
        out = out.float()
        if isinstance(y, MixedTarget):
            return (y.lam * F.cross_entropy(out, y.y_a, label_smoothing=ls)
                    + (1 - y.lam) * F.cross_entropy(out, y.y_b, label_smoothing=ls))
        return F.cross_entropy(out, y, label_smoothing=ls)


class MixUp(Hook):
    """Each training batch mixed with a shuffled copy of itself, lam ~ Beta(alpha, alpha)
    (torch's global generator: seeded runs repeat, checkpoints restore it)."""

    def __init__(self, alpha: float = 0.2):
        self.alpha = check_real("alpha", alpha, 0, lo_open=True)
        self._beta = torch.distributions.Beta(torch.tensor(self.alpha), torch.tensor(self.alpha))

    def transform_batch(self, loop: TrainLoop, x: Tensor, y: Any) -> tuple[Tensor, Any]:
        lam = float(self._beta.sample())
        idx = torch.randperm(x.shape[0]).to(x.device)
        return lam * x + (1 - lam) * x[idx], MixedTarget(y, y[idx], lam)


# ---------------------------------------------------------------------------- schedule


class CosineWarmup(Hook):
    """Before every step, lr = initial lr · f(step) on every parameter group of every
    optimizer: f rises linearly over ``warmup_steps`` ((t + 1) / W), then follows a cosine from
    1 to 0 over the remaining ``total_steps``. The record gets the weight lr of its last
    step."""

    def __init__(self, total_steps: int, warmup_steps: int = 0):
        self.total = check_int("total_steps", total_steps, 1)
        self.warmup = check_int("warmup_steps", warmup_steps, 0, self.total - 1)
        self.lr: Optional[float] = None

    def factor(self, step: int) -> float:
        """f(step) (the class docstring)."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = min((step - self.warmup) / max(1, self.total - self.warmup), 1.0)
        return 0.5 * (1 + math.cos(math.pi * t))

    def on_fit_start(self, loop: TrainLoop) -> None:
        for o in loop.optimizers:
            for g in o.param_groups:
                g.setdefault("initial_lr", g["lr"])

    def on_batch_start(self, loop: TrainLoop, x: Tensor, y: Any) -> None:
        f = self.factor(loop.global_step)
        for o in loop.optimizers:
            for g in o.param_groups:
                g["lr"] = g["initial_lr"] * f
        self.lr = loop.optimizers[0].param_groups[0]["lr"]

    def on_train_end(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        record["lr"] = self.lr


class SelectFrom(Hook):
    """Only epochs from ``first`` on (0-based) may be chosen as the best one."""

    def __init__(self, first: int):
        self.first = check_int("first", first, 0)

    def selectable(self, loop: TrainLoop, record: dict[str, Any]) -> bool:
        return record["epoch"] >= self.first


# ---------------------------------------------------------------------------- stability


class StabilityGate(Hook):
    """The stability gate (`stability`): at the end of every epoch's steps, S of each block
    against the EMA snapshot (taken first at the start of training), then the EMA updated;
    in the next epoch α trains only in blocks with S < ``epsilon`` (elsewhere its gradient is
    cleared before the step, so no optimizer moves it). The record gets ``S`` (one per block)
    and ``alpha_trained`` (the blocks whose α trained this epoch). ``S_edge``: the per-channel
    S of each block's last conv, which `RuleGates` uses."""

    def __init__(self, model: AutoplasticNet, epsilon: float = 0.85, ema: float = 0.9):
        self.model = model
        self.epsilon = check_fraction("epsilon", epsilon)
        self.emas = [EMASnapshot(ema) for _ in model.blocks]
        self.trainable = [True] * len(model.blocks)
        self.S: list[float] = []
        self.S_edge: list[Tensor] = []

    def on_fit_start(self, loop: TrainLoop) -> None:
        for e, b in zip(self.emas, self.model.blocks):
            if not e.values:
                e.update(block_weights(b))

    def after_backward(self, loop: TrainLoop) -> None:
        for ok, b in zip(self.trainable, self.model.blocks):
            if not ok:
                b.mix.logit.grad = None

    def on_train_end(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        record["alpha_trained"] = list(self.trainable)
        self.S, self.S_edge = [], []
        for e, b in zip(self.emas, self.model.blocks):
            w = block_weights(b)
            self.S.append(stability(w, e.values))
            self.S_edge.append(channel_stability(b.conv.conv2.weight,
                                                 e.values["conv.conv2.weight"]))
            e.update(w)
        self.trainable = [s < self.epsilon for s in self.S]
        record["S"] = list(self.S)

    def describe(self, record: dict[str, Any]) -> str:
        return f"unstable={sum(s < self.epsilon for s in record['S'])}/{len(record['S'])}"

    def state_dict(self) -> dict[str, Any]:
        return {"emas": [e.state_dict() for e in self.emas], "trainable": list(self.trainable)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for e, s in zip(self.emas, state["emas"]):
            e.load_state_dict(s)
        self.trainable = list(state["trainable"])


# ---------------------------------------------------------------------------- learned gates


class GatePenalty(Hook):
    """Adds λ · E[MACs] / MACs_full + λ_C · E[active-channel ratio] to every step's loss: the
    expected L0 norm of the learned gates, weighted by what each one removes
    (`AutoplasticNet.expected_macs`, for examples of ``input_shape``), plus the expected
    fraction of live channel gates (`AutoplasticNet.expected_active_ratio`). Both are
    differentiable in the gates' logits only, so λ and λ_C set how hard the penalty pulls on
    the gates against the data loss, never on the weights. The record gets
    ``expected_flops`` and ``expected_channels`` (the two ratios at the end of the epoch)."""

    def __init__(self, model: AutoplasticNet, input_shape: Sequence[int], sparsity: float,
                 channel_sparsity: float = 0.0):
        self.model, self.shape = model, tuple(int(n) for n in input_shape)
        self.sparsity = check_real("sparsity", sparsity, 0)
        self.channel_sparsity = check_real("channel_sparsity", channel_sparsity, 0)
        self.full = float(model.macs(self.shape))

    def ratio(self) -> Tensor:
        """E[MACs] / MACs_full now (differentiable)."""
        return self.model.expected_macs(self.shape) / self.full

    def penalty(self, loop: TrainLoop) -> Optional[Tensor]:
        if any(g.frozen for b in self.model.blocks for g in (b.p_gate, b.c_gate)
               if g is not None):
            return None  # `FreezeGates`: the structure is fixed
        out = None
        if self.sparsity > 0:
            out = self.sparsity * self.ratio()
        if self.channel_sparsity > 0:
            c = self.channel_sparsity * self.model.expected_active_ratio()
            out = c if out is None else out + c
        return out.to(loop.device) if out is not None else None

    def on_train_end(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        with torch.no_grad():
            record["expected_flops"] = float(self.ratio())
            record["expected_channels"] = float(self.model.expected_active_ratio())


class FreezeGates(Hook):
    """From epoch ``first`` on (0-based), the learned gates are fixed at their deterministic
    values: steps use those values (no more draws) and the gates' logits get no gradient, so
    the weights fine-tune under the structure the export will have and the norms' running
    statistics are those of that structure. Only those epochs may be chosen as the best one.
    The record gets ``gates_frozen``."""

    def __init__(self, model: AutoplasticNet, first: int):
        self.model, self.first = model, check_int("first", first, 0)
        self.gates = [g for b in model.blocks for g in (b.p_gate, b.c_gate)
                      if g is not None and g.learned]
        self.frozen = False

    def on_epoch_start(self, loop: TrainLoop, epoch: int) -> None:
        self.frozen = epoch >= self.first
        for g in self.gates:
            g.frozen = self.frozen

    def after_backward(self, loop: TrainLoop) -> None:
        if self.frozen:
            for g in self.gates:
                for p in g.parameters():
                    p.grad = None

    def on_train_end(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        record["gates_frozen"] = self.frozen

    def selectable(self, loop: TrainLoop, record: dict[str, Any]) -> bool:
        return record["epoch"] >= self.first

    def on_fit_end(self, loop: TrainLoop, result: dict[str, Any]) -> None:
        for g in self.gates:
            g.frozen = False


# ---------------------------------------------------------------------------- the seed's rules


class RuleGates(Hook):
    """The seed's rule-based P and C (``update_architecture_epoch``), once per epoch after the
    steps, with η_a = base_lr · arch_lr_ratio and the S of ``gate`` (a `StabilityGate` placed
    before this hook):

    - P += η_a · max(0.05, 1 − S) where S < ε, else P −= η_a · max(0.05, S); clamped to
      [p_min, 1];
    - C_c += η_a · max(0.05, 1 − S_c) on channels with S_c < ε; then C_c −= η_a · max(0.05,
      S_c) on channels whose summed gradient norm of the last conv (over the epoch, scaled by
      the largest) lies below max(delta_grad_thresh, its 20% quantile); clamped to
      [c_min, c_max].

    The floors keep every gate above 0, so nothing is ever removed (as in the seed)."""

    def __init__(self, model: AutoplasticNet, gate: StabilityGate, config: TrainConfig):
        for i, b in enumerate(model.blocks):
            if not isinstance(b.p_gate, RuleGate):
                raise ValueError(f"RuleGates needs a model built with gates='rules' (block {i} "
                                 f"has {type(b.p_gate).__name__})")
        self.model, self.gate, self.config = model, gate, config
        self.grad = [torch.zeros(b.out_ch) for b in model.blocks]

    def on_epoch_start(self, loop: TrainLoop, epoch: int) -> None:
        self.grad = [torch.zeros(b.out_ch, device=loop.device) for b in self.model.blocks]

    def after_backward(self, loop: TrainLoop) -> None:
        for acc, b in zip(self.grad, self.model.blocks):
            g = b.conv.conv2.weight.grad
            if g is not None:
                acc += g.detach().float().flatten(1).norm(dim=1)

    @torch.no_grad()
    def on_train_end(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        cfg = self.config
        eta = cfg.base_lr * cfg.arch_lr_ratio
        for b, s, s_edge, g in zip(self.model.blocks, self.gate.S, self.gate.S_edge, self.grad):
            dp = eta * max(0.05, 1 - s) if s < cfg.epsilon else -eta * max(0.05, s)
            b.p_gate.nudge(torch.tensor([dp], device=b.p_gate.values.device))
            s_edge = s_edge.to(g.device)
            c = b.c_gate
            inc = s_edge < cfg.epsilon
            c.nudge(torch.where(inc, eta * (1 - s_edge).clamp_min(0.05), torch.zeros_like(g)))
            g = g / g.abs().max().clamp_min(1e-8)
            thr = max(cfg.delta_grad_thresh, float(torch.quantile(g, 0.2)))
            c.nudge(torch.where(g < thr, -eta * s_edge.clamp_min(0.05), torch.zeros_like(g)))


# ---------------------------------------------------------------------------- the seed's log


def _fmt(v: Sequence[float]) -> str:
    return "[" + ", ".join(f"{x:.2f}" for x in v) + "]"


def format_epoch(record: dict[str, Any], epochs: int) -> str:
    """One epoch's record in the seed's log format."""
    def pct(v: Optional[float]) -> str:
        return "—" if v is None else f"{100 * v:.2f}%"

    return "\n".join([
        f"Epoch {record['epoch'] + 1:03d}/{epochs:03d}",
        f"Train CE: {record['loss']:.4f} | Train Acc: {pct(record.get('train_acc'))} | "
        f"Val CE: {record.get('val_loss', float('nan')):.4f} | Val Acc: "
        f"{pct(record.get('val_acc'))}",
        f"Effective depth (L_eff): {record['L_eff']:.2f} | Active-channel ratio: "
        f"{record['active_ratio']:.3f} | exported: depth {record['depth']}/"
        f"{len(record['P'])}, channels {record['active_ratio_export']:.3f}",
        f"P (layer inclusion):        {_fmt(record['P'])}",
        f"alpha (conv↔attn mix):      {_fmt(record['alpha'])}",
        f"mean C (per-block):         {_fmt(record['meanC'])}",
        f"pruned % (per-block):       {_fmt(record['pruned_pct'])}"])


class GateLog(Hook):
    """After validation, the seed's per-epoch figures into the record: ``P``, ``alpha``,
    ``meanC`` (deterministic gates), ``L_eff`` and ``active_ratio`` (the seed's soft figures,
    `AutoplasticNet.effective_depth_and_activity`), and what the export would remove now:
    ``depth`` (blocks kept), ``active_ratio_export`` and ``pruned_pct`` (per block, channels
    removed). With ``log``, each epoch is printed in the seed's format (`format_epoch`)."""

    def __init__(self, model: AutoplasticNet, epochs: int,
                 log: Optional[Callable[[str], None]] = None):
        self.model, self.epochs, self.log = model, check_int("epochs", epochs, 1), log

    def on_epoch_end(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        record.update(self.model.arch_state_summary())
        record["L_eff"], record["active_ratio"] = self.model.effective_depth_and_activity()
        s = self.model.structure()
        record["depth"], record["active_ratio_export"] = s["depth"], s["active_ratio"]
        record["pruned_pct"] = s["pruned_pct"]
        if self.log is not None:
            self.log(format_epoch(record, self.epochs))

    def describe(self, record: dict[str, Any]) -> str:
        return (f"L_eff={record['L_eff']:.2f} depth={record['depth']}/{len(record['P'])} "
                f"channels={record['active_ratio_export']:.2f}")
