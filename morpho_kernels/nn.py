"""Drop-in layers whose structure runs on morpho_kernels ops."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .ops.masked_linear import check_temperature as _check_temperature
from .ops.masked_linear import masked_linear

# σ(6) = 0.9975: from_linear starts every mask value above 0.99, so a converted layer's output
# moves by ~0.25% of its size.
_FROM_LINEAR_LOGIT = 6.0


class MaskedLinear(nn.Module):
    """``nn.Linear`` with a learned soft mask: ``y = x @ (W ⊙ σ(M / T))ᵀ + b``.

    Same constructor arguments as ``nn.Linear`` plus the mask's initialisation and temperature.
    The weight is initialised exactly as ``nn.Linear`` does. Mask logits start at
    ``+mask_init`` for a random ``init_density`` fraction of connections and at ``-mask_init``
    for the rest (``init_density=1`` turns every connection on).

    The temperature is a 0-dim buffer (saved in the state dict); change it with
    :meth:`set_temperature`, which updates it in place so ``torch.compile`` does not recompile.

    Args:
        in_features, out_features, bias, device, dtype: as ``nn.Linear``.
        mask_init: magnitude of the initial logits (default 3.0: σ(3) = 0.95).
        init_density: fraction of connections starting on, in [0, 1].
        temperature: initial temperature T > 0.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=None, mask_init: float = 3.0, init_density: float = 1.0,
                 temperature: float = 1.0):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative int, got {v!r}")
        if not 0.0 <= init_density <= 1.0:
            raise ValueError(f"init_density must be in [0, 1], got {init_density}")
        if not (math.isfinite(mask_init) and mask_init >= 0):
            raise ValueError(f"mask_init must be finite and >= 0, got {mask_init}")
        factory = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.mask_logits = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.register_buffer("temperature", torch.tensor(
            _check_temperature(temperature), dtype=torch.float32, device=device))
        self.mask_init = float(mask_init)
        self.init_density = float(init_density)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight and bias as ``nn.Linear``; mask logits ±mask_init at ``init_density``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)
        with torch.no_grad():
            on = torch.rand(self.mask_logits.shape, device=self.mask_logits.device)
            on = on < self.init_density
            self.mask_logits.copy_(torch.where(on, self.mask_init, -self.mask_init))

    # ------------------------------------------------------------------ conversion

    @classmethod
    def from_linear(cls, linear: nn.Linear, temperature: float = 1.0) -> MaskedLinear:
        """A MaskedLinear computing (within 1% relative) what ``linear`` computes.

        Every mask value starts at σ(6) = 0.9975 ≥ 0.99. The weight and bias are copied.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        t = _check_temperature(temperature)
        w = linear.weight
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    device=w.device, dtype=w.dtype, temperature=t)
        with torch.no_grad():
            layer.weight.copy_(w)
            layer.mask_logits.fill_(_FROM_LINEAR_LOGIT * t)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def to_linear(self) -> nn.Linear:
        """An ``nn.Linear`` with the mask baked in: weight = W ⊙ σ(M/T)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.effective_weight())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    # ------------------------------------------------------------------ structure

    def set_temperature(self, temperature: float) -> None:
        """Set T in place (no recompilation under torch.compile)."""
        with torch.no_grad():
            self.temperature.fill_(_check_temperature(temperature))

    def get_mask(self, hard: bool = False, threshold: float = 0.5) -> Tensor:
        """σ(M/T) (detached); with ``hard=True`` the 0/1 mask of values above ``threshold``."""
        with torch.no_grad():
            soft = torch.sigmoid(self.mask_logits.float() / self.temperature)
            return (soft > threshold).to(self.weight.dtype) if hard else soft.to(self.weight.dtype)

    def effective_weight(self) -> Tensor:
        """W ⊙ σ(M/T), detached."""
        with torch.no_grad():
            return self.weight * self.get_mask()

    def density(self, threshold: float = 0.5) -> float:
        """Fraction of connections whose mask value σ(M/T) exceeds ``threshold``."""
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        n = self.mask_logits.numel()
        return float(self.get_mask(hard=True, threshold=threshold).sum()) / n if n else 0.0

    def prune(self, threshold: float = 0.5) -> int:
        """Hard-prune: logits where σ(M/T) < threshold become −inf (exact zeros, zero
        gradients). Returns the number of connections pruned by this call."""
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        with torch.no_grad():
            soft = torch.sigmoid(self.mask_logits.float() / self.temperature)
            drop = (soft < threshold) & torch.isfinite(self.mask_logits)
            self.mask_logits.masked_fill_(drop, float("-inf"))
            return int(drop.sum())

    # ------------------------------------------------------------------ forward

    def forward(self, x: Tensor) -> Tensor:
        return masked_linear(x, self.weight, self.mask_logits, self.temperature, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


__all__ = ["MaskedLinear"]
