"""The gates of an Autoplastic block: P (one per block), C (one per output channel) and the
conv ↔ attention mix α.

Learned gates (``gates="learned"``) are stochastic while training and deterministic in eval
mode, and their deterministic value can be exactly 0, so a gated channel or block can be
removed by the static export without changing the function:

- `HardConcreteGate` (the default): the hard-concrete distribution of Louizos et al. (2018),
  a concrete (relaxed Bernoulli) sample stretched to (γ, ζ) = (−0.1, 1.1) and clipped to
  [0, 1]. It puts real probability mass on exactly 0 and exactly 1, its expected L0 norm
  P(gate ≠ 0) is differentiable (the penalty), and its eval value clip(σ(log α)·(ζ − γ) + γ,
  0, 1) takes every value in [0, 1], so a gate of 0.9 scales its channel by 0.9 and the export
  folds that into the last norm.
- `SigmoidSTGate`: a logistic sigmoid thresholded at 0.5 in the forward pass with the
  sigmoid's gradient passed straight through (biased gradient; the gate is always 0 or 1).
  Kept as the measured alternative (``gate_kind="sigmoid_st"``).

`RuleGate` holds the seed's buffers (no gradient), changed by `hooks.RuleGates`. Every gate
maps its raw value z ∈ [0, 1] to ``lo + (hi − lo)·z``: (lo, hi) = (0, 1) without floors, the
seed's (p_min, 1) / (c_min, c_max) with them (then no gate can reach 0).

`MixGate` is α: a stretched sigmoid clip(1.2·σ(ℓ) − 0.1, 0, 1), 0.5 at ℓ = 0 like the seed's
σ(ℓ), but one that can saturate at exactly 0 or 1 (σ alone never does), so a saturated
branch is removed exactly; once saturated its gradient is 0 and it stays removed.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..checks import check_choice, check_fraction, check_int, check_real

__all__ = ["BETA", "GAMMA", "Gate", "HardConcreteGate", "MixGate", "RuleGate", "SigmoidSTGate",
           "ZETA", "make_gate"]

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1  # hard-concrete temperature and stretch (Louizos et al.)


class Gate(nn.Module):
    """n gate values in [lo, hi]. `forward` gives the values a step uses (training: one draw
    per row of the batch, (batch, n); eval, or ``frozen``: the deterministic (n,)); `value`
    the deterministic ones; `prob_active` a differentiable P(gate ≠ 0) per gate (the
    penalty's unit); `active` which deterministic values are not 0."""

    learned = False

    def __init__(self, n: int, lo: float = 0.0, hi: float = 1.0):
        super().__init__()
        self.n = check_int("n", n, 1)
        self.lo = check_fraction("lo", lo)
        self.hi = check_fraction("hi", hi, lo_open=True)
        if self.lo >= self.hi:
            raise ValueError(f"lo={lo} must be below hi={hi}")
        self.frozen = False  # training steps use the deterministic values (`hooks.FreezeGates`)

    def _scale(self, z: Tensor) -> Tensor:
        return z if (self.lo, self.hi) == (0.0, 1.0) else self.lo + (self.hi - self.lo) * z

    def _raw_init(self, init: float) -> float:
        init = check_fraction("init", init, lo_open=True)
        if not self.lo <= init <= self.hi:
            raise ValueError(f"init={init} must lie within [lo={self.lo}, hi={self.hi}]")
        return (init - self.lo) / (self.hi - self.lo)

    def value(self) -> Tensor:  # (n,)
        """The deterministic (eval) gate values."""
        raise NotImplementedError

    def sample(self, batch: int) -> Tensor:  # (batch, n)
        """One training draw per row (deterministic gates repeat `value`)."""
        return self.value().expand(batch, self.n)

    def forward(self, batch: Optional[int] = None) -> Tensor:
        if self.training and batch is not None and not self.frozen:
            return self.sample(batch)
        return self.value()

    def prob_active(self) -> Tensor:  # (n,)
        """P(gate ≠ 0), differentiable in the gate's parameters (the L0 penalty's unit)."""
        return (self.value() != 0).to(torch.float32)

    @torch.no_grad()
    def active(self) -> Tensor:  # (n,) bool
        """Which deterministic values are not 0 (what the export keeps)."""
        return self.value() != 0

    def extra_repr(self) -> str:
        return f"n={self.n}, lo={self.lo}, hi={self.hi}"


class HardConcreteGate(Gate):
    """Hard-concrete L0 gates (module docstring); ``init`` is the initial deterministic
    value (0.9: log α = ln 5)."""

    learned = True

    def __init__(self, n: int, init: float = 0.9, lo: float = 0.0, hi: float = 1.0):
        super().__init__(n, lo, hi)
        z = self._raw_init(init)  # clip(σ(la)(ζ − γ) + γ, 0, 1) = z
        s = min(max((z - GAMMA) / (ZETA - GAMMA), 1e-6), 1 - 1e-6)
        self.logits = nn.Parameter(torch.full((n,), math.log(s / (1 - s))))

    def value(self) -> Tensor:
        z = torch.sigmoid(self.logits) * (ZETA - GAMMA) + GAMMA
        return self._scale(z.clamp(0.0, 1.0))

    def sample(self, batch: int) -> Tensor:
        u = torch.rand(batch, self.n, device=self.logits.device).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.logits) / BETA)
        return self._scale((s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0))

    def prob_active(self) -> Tensor:
        return torch.sigmoid(self.logits - BETA * math.log(-GAMMA / ZETA))


class SigmoidSTGate(Gate):
    """σ(ℓ) > 0.5 in the forward pass, σ's gradient straight through; ``init`` is σ(ℓ) at
    the start (0.9: ℓ = 2.197), so every gate starts open."""

    learned = True

    def __init__(self, n: int, init: float = 0.9, lo: float = 0.0, hi: float = 1.0):
        super().__init__(n, lo, hi)
        z = min(max(self._raw_init(init), 1e-6), 1 - 1e-6)
        self.logits = nn.Parameter(torch.full((n,), math.log(z / (1 - z))))

    def value(self) -> Tensor:
        soft = torch.sigmoid(self.logits)
        hard = (soft > 0.5).to(soft.dtype)
        return self._scale(hard + soft - soft.detach())  # forward: hard; backward: σ'

    def sample(self, batch: int) -> Tensor:
        return self.value().expand(batch, self.n)

    def prob_active(self) -> Tensor:
        return torch.sigmoid(self.logits)


class RuleGate(Gate):
    """The seed's gates: a buffer (no gradient) in [lo, hi], changed by rules
    (`hooks.RuleGates`)."""

    def __init__(self, n: int, init: float = 0.9, lo: float = 0.0, hi: float = 1.0):
        super().__init__(n, lo, hi)
        self._raw_init(init)  # checks init within the bounds
        self.register_buffer("values", torch.full((n,), float(init)))

    def value(self) -> Tensor:
        return self.values

    @torch.no_grad()
    def nudge(self, delta: Tensor) -> None:
        """values += delta, clamped to [lo, hi]."""
        self.values.add_(delta).clamp_(self.lo, self.hi)


def make_gate(gates: str, kind: str, n: int, init: float,
              bounds: tuple[float, float] = (0.0, 1.0)) -> Optional[Gate]:
    """The gate of a block's P (n = 1) or C (n = channels) for ``gates`` ("learned":
    ``kind`` "hard_concrete" / "sigmoid_st"; "rules"; "none": no gate, None)."""
    check_choice("gates", gates, ("learned", "rules", "none"))
    if gates == "none":
        return None
    if gates == "rules":
        return RuleGate(n, init, *bounds)
    cls = {"hard_concrete": HardConcreteGate, "sigmoid_st": SigmoidSTGate}[
        check_choice("gate_kind", kind, ("hard_concrete", "sigmoid_st"))]
    return cls(n, init, *bounds)


class MixGate(nn.Module):
    """α ∈ [0, 1], the weight of the conv branch (1 − α: attention): clip(1.2·σ(ℓ) − 0.1,
    0, 1), ``init`` 0.5 at ℓ = 0. Exactly 0 or 1 once |ℓ| ≥ ln 11 ≈ 2.4 (saturated)."""

    def __init__(self, init: float = 0.5):
        super().__init__()
        init = check_real("init", init, 0, 1, lo_open=True, hi_open=True)
        s = (init - GAMMA) / (ZETA - GAMMA)
        self.logit = nn.Parameter(torch.tensor(math.log(s / (1 - s))))

    def forward(self) -> Tensor:  # () scalar
        return (torch.sigmoid(self.logit) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    @torch.no_grad()
    def saturated(self) -> Optional[float]:
        """0.0 or 1.0 when α is exactly there (a branch can be removed), else None."""
        a = float(self())
        return a if a in (0.0, 1.0) else None
