"""The stability gate S of a block, on a scale that does not depend on the block's width.

The seed defined S = exp(−‖W − W_EMA‖_F) over all of a block's parameters. ‖ΔW‖_F grows with
the square root of the number of weights, so the same relative change gives a smaller S on a
wider block (4× the channels of a conv: 16× the weights, 4× the norm), and the seed's wide
blocks were almost always "unstable". Here::

    S = exp(−‖W − W_EMA‖_F / ‖W_EMA‖_F)

over the block's weights (every parameter but the architecture parameters α and the gates):
the relative change, the same for the same relative update at any width. S < ε (0.85: a
relative change above 16%) means unstable, and only then does α train. The EMA is the seed's:
an exponential average (0.9) of the weights at the end of each epoch, the first taken before
training. `channel_stability` is the same per output channel of the last conv (the seed's
per-edge S, which its channel rules use).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..checks import check_fraction

__all__ = ["EMASnapshot", "block_weights", "channel_stability", "relative_change",
           "seed_stability", "stability"]


def block_weights(block: nn.Module) -> dict[str, Tensor]:
    """A block's weights by name: every parameter except α (``mix.*``) and the gates
    (``p_gate.*`` / ``c_gate.*``)."""
    return {n: p for n, p in block.named_parameters()
            if not n.startswith(("mix.", "p_gate.", "c_gate."))}


def relative_change(current: dict[str, Tensor], reference: dict[str, Tensor]) -> float:
    """‖current − reference‖_F / ‖reference‖_F over all tensors of ``reference`` together."""
    num = den = 0.0
    for n, ref in reference.items():
        cur = current[n].detach().float()
        num += float((cur - ref).pow(2).sum())
        den += float(ref.pow(2).sum())
    return math.sqrt(num) / max(math.sqrt(den), 1e-12)


def stability(current: dict[str, Tensor], reference: dict[str, Tensor]) -> float:
    """S = exp(−relative change) (module docstring)."""
    return math.exp(-relative_change(current, reference))


def seed_stability(current: dict[str, Tensor], reference: dict[str, Tensor]) -> float:
    """The seed's unnormalised S = exp(−‖W − W_EMA‖_F) (for comparison only)."""
    sq = sum(float((current[n].detach().float() - r).pow(2).sum()) for n, r in reference.items())
    return math.exp(-math.sqrt(sq + 1e-12))


def channel_stability(weight: Tensor, reference: Tensor) -> Tensor:
    """exp(−‖ΔW_c‖ / ‖W_EMA,c‖) per output channel c (dim 0) of a conv weight."""
    d = (weight.detach().float() - reference).flatten(1).norm(dim=1)
    return torch.exp(-d / reference.flatten(1).norm(dim=1).clamp_min(1e-12))


class EMASnapshot:
    """An exponential moving average of some tensors, updated from their current values:
    ``ema ← decay · ema + (1 − decay) · current`` (the first update copies)."""

    def __init__(self, decay: float = 0.9):
        self.decay = check_fraction("decay", decay, hi_open=True)
        self.values: dict[str, Tensor] = {}

    @torch.no_grad()
    def update(self, current: dict[str, Tensor]) -> None:
        """Fold the current values in."""
        for n, t in current.items():
            t = t.detach().float()
            if n not in self.values:
                self.values[n] = t.clone()
            else:
                self.values[n].mul_(self.decay).add_(t, alpha=1 - self.decay)

    def state_dict(self) -> dict[str, Tensor]:
        """The averages (for a checkpoint)."""
        return {n: t.clone() for n, t in self.values.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore `state_dict`."""
        self.values = {n: t.clone() for n, t in state.items()}
