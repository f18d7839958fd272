"""The one learned-mask layer: ``y = x (W ⊙ σ(M/T))ᵀ + b``, and the mask logic it shares with
every other masked weight (MorphoNet's convolution included).

A mask has one logit per *unit*, at one of three granularities:

- ``"element"``: one logit per connection (the logits have the weight's shape);
- ``"block"``: one per ``block_size × block_size`` tile of the weight seen as an
  (out, in·taps) matrix (edge tiles may be smaller); exports to `BlockSparseLinear`;
- ``"neuron"``: one per output unit / channel; the mask scales the whole output, bias
  included, so a pruned unit outputs exactly zero and can be removed.

`unit_shape`, `expand_units` and `reduce_units` convert between unit-shaped and
weight-shaped tensors; `LearnedMask` holds what every masked weight does with its logits
(temperature, soft and hard masks, pruning, counting); `MaskedLinear` is the drop-in layer.
The defaults are named once, here: `MASK_INIT`, `INIT_DENSITY`, `FROM_LINEAR_LOGIT`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_choice, check_fraction, check_int, check_real
from ..formats import check_block_size
from ..ops.masked_linear import check_temperature, masked_linear

__all__ = ["FROM_LINEAR_LOGIT", "GRANULARITIES", "INIT_DENSITY", "LearnedMask", "MASK_INIT",
           "MaskedLinear", "check_granularity", "expand_units", "reduce_units", "unit_shape"]

GRANULARITIES = ("element", "block", "neuron")
# |initial logit|: σ(±2) = 0.88 / 0.12, the seed's "mask logits initialised around ±2"
MASK_INIT = 2.0
# fraction of units whose logit starts at +MASK_INIT (the rest at −MASK_INIT)
INIT_DENSITY = 1.0
# σ(6) = 0.9975: from_linear starts every mask value above 0.99, so a converted layer's output
# moves by ~0.25% of its size
FROM_LINEAR_LOGIT = 6.0


# ---------------------------------------------------------------------------- unit helpers


def check_granularity(granularity: str, block_size: int) -> None:
    """ValueError naming the argument for an unknown granularity or block size (TypeError for
    a block size that is not an int, checked with block granularity only)."""
    check_choice("granularity", granularity, GRANULARITIES)
    if granularity == "block":
        check_block_size(block_size)


def unit_shape(weight_shape: tuple[int, ...], granularity: str,
               block_size: int = 16) -> tuple[int, ...]:
    """Shape of the logits of a ``weight_shape`` weight at ``granularity``."""
    n, k = weight_shape[0], math.prod(weight_shape[1:])
    if granularity == "element":
        return tuple(weight_shape)
    if granularity == "neuron":
        return (n,)
    return (-(-n // block_size), -(-k // block_size))


def expand_units(units: Tensor, weight_shape: tuple[int, ...], granularity: str,
                 block_size: int = 16) -> Tensor:
    """Unit-shaped → weight-shaped: each unit's value over every weight it covers."""
    if granularity == "element":
        return units
    if granularity == "neuron":
        return units.reshape(-1, *([1] * (len(weight_shape) - 1))).expand(weight_shape)
    b, n, k = block_size, weight_shape[0], math.prod(weight_shape[1:])
    full = units.repeat_interleave(b, 0)[:n].repeat_interleave(b, 1)[:, :k]
    return full.reshape(weight_shape)


def reduce_units(w: Tensor, granularity: str, block_size: int = 16) -> Tensor:
    """Weight-shaped → unit-shaped: the sum of ``w`` over each unit's weights."""
    if granularity == "element":
        return w
    if granularity == "neuron":
        return w.reshape(w.shape[0], -1).sum(1)
    b = block_size
    n, k = w.shape[0], w[0].numel()
    pad = F.pad(w.reshape(n, k), (0, -k % b, 0, -n % b))
    return pad.reshape(pad.shape[0] // b, b, pad.shape[1] // b, b).sum((1, 3))


# ---------------------------------------------------------------------------- the mask logic


class LearnedMask:
    """Mask bookkeeping of a module with a ``weight``: the logits ``mask_logits`` (one per unit,
    ``-inf`` = hard-pruned: σ = 0 exactly, zero gradients, never NaN) and the temperature T
    (a 0-dim float32 buffer ``temperature``, changed in place by `set_temperature` so
    ``torch.compile`` does not recompile for every value).

    Subclasses call `_init_mask` after creating ``weight``.
    """

    weight: nn.Parameter
    mask_logits: nn.Parameter
    temperature: Tensor
    granularity: str
    block_size: int

    def _init_mask(self, granularity: str, block_size: int, init_density: float,
                   mask_init: float, temperature: float) -> None:
        """Register ``mask_logits`` (±``mask_init``, + for a random ``init_density`` fraction
        of units) and the ``temperature`` buffer."""
        check_granularity(granularity, block_size)
        init_density = check_fraction("init_density", init_density)
        mask_init = check_real("mask_init", mask_init, 0)
        self.granularity, self.block_size = granularity, block_size
        self.mask_init, self.init_density = mask_init, init_density
        w = self.weight
        self.mask_logits = nn.Parameter(torch.empty(unit_shape(tuple(w.shape), granularity,
                                                               block_size),
                                                    device=w.device, dtype=w.dtype))
        self.register_buffer("temperature", torch.tensor(
            check_temperature(temperature), dtype=torch.float32, device=w.device))
        self.reset_mask()

    def reset_mask(self) -> None:
        """Logits back to ±``mask_init`` at ``init_density`` (one uniform draw per unit)."""
        with torch.no_grad():
            on = torch.rand(self.mask_logits.shape, device=self.mask_logits.device)
            on = on < self.init_density
            self.mask_logits.copy_(torch.where(on, self.mask_init, -self.mask_init))

    # ------------------------------------------------------------------ units

    def expand_units(self, units: Tensor) -> Tensor:
        """Unit-shaped → this weight's shape (`expand_units`)."""
        return expand_units(units, tuple(self.weight.shape), self.granularity, self.block_size)

    def reduce_units(self, w: Tensor) -> Tensor:
        """Weight-shaped → unit-shaped sums (`reduce_units`)."""
        return reduce_units(w, self.granularity, self.block_size)

    def unit_sizes(self) -> Tensor:
        """Number of weights (connections) each unit covers, unit-shaped (float32)."""
        return self.reduce_units(torch.ones_like(self.weight, dtype=torch.float32))

    # ------------------------------------------------------------------ masks

    def unit_mask(self) -> Tensor:
        """σ(M/T) per unit (differentiable)."""
        return torch.sigmoid(self.mask_logits / self.temperature)

    def get_mask(self, hard: bool = False, threshold: float = 0.5) -> Tensor:
        """The mask in the weight's shape, detached: σ(M/T), or with ``hard=True`` the 0/1 mask
        of values above ``threshold``. A linear layer's is a 2-D (out, in) matrix, a
        convolution's has the weight's shape (`mask_matrix` views any of them in 2-D)."""
        with torch.no_grad():
            m = self.expand_units(torch.sigmoid(self.mask_logits.float() / self.temperature))
            return (m > threshold).to(self.weight.dtype) if hard else m.to(self.weight.dtype)

    def mask_matrix(self, hard: bool = False, threshold: float = 0.5) -> Tensor:
        """`get_mask` as a 2-D (out, in·taps) matrix, e.g. for ``plt.imshow``."""
        m = self.get_mask(hard=hard, threshold=threshold)
        return m.reshape(m.shape[0], -1)

    def set_temperature(self, temperature: float) -> None:
        """Set T > 0 in place."""
        with torch.no_grad():
            self.temperature.fill_(check_temperature(temperature))

    def effective_weight(self) -> Tensor:
        """W ⊙ σ(M/T) in the weight's shape, detached."""
        with torch.no_grad():
            return self.weight * self.get_mask()

    def penalty(self) -> Tensor:
        """Mean mask value over this layer's connections (each unit weighted by its size), the
        term a sparsity penalty multiplies (differentiable; pruned units contribute 0)."""
        if self.granularity == "element":  # every unit is one connection
            return self.unit_mask().mean()
        sizes = self.unit_sizes().to(self.mask_logits.device)
        return (self.unit_mask() * sizes).sum() / sizes.sum()

    # ------------------------------------------------------------------ pruning and counting

    def pruned_units(self) -> Tensor:
        """Boolean, unit-shaped: True where the unit is hard-pruned (logit −inf)."""
        return torch.isneginf(self.mask_logits.detach())

    def n_connections(self) -> int:
        """Prunable connections (weights) of this layer."""
        return self.weight.numel()

    def n_live(self) -> int:
        """Connections not hard-pruned."""
        return int(round(float(self.unit_sizes()[~self.pruned_units()].sum())))

    def density(self, threshold: float = 0.5) -> float:
        """Fraction of connections whose mask value σ(M/T) exceeds ``threshold``."""
        threshold = check_fraction("threshold", threshold, hi_open=True)
        n = self.weight.numel()
        return float(self.get_mask(hard=True, threshold=threshold).sum()) / n if n else 0.0

    def prune(self, threshold: float = 0.5) -> int:
        """Hard-prune every unit whose mask value σ(M/T) is below ``threshold``; returns the
        number of connections pruned by this call."""
        threshold = check_fraction("threshold", threshold)
        with torch.no_grad():  # σ in float32, as get_mask and density compute it
            soft = torch.sigmoid(self.mask_logits.float() / self.temperature)
            drop = (soft < threshold) & ~self.pruned_units()
            return self.prune_units(drop)

    def prune_units(self, drop: Tensor) -> int:
        """Hard-prune the units where the boolean, unit-shaped ``drop`` is True; returns the
        number of connections pruned by this call."""
        if not isinstance(drop, Tensor) or drop.shape != self.mask_logits.shape or \
                drop.dtype != torch.bool:
            got = f"{drop.dtype} {tuple(drop.shape)}" if isinstance(drop, Tensor) else \
                type(drop).__name__
            raise ValueError(f"drop must be a bool tensor of shape "
                             f"{tuple(self.mask_logits.shape)}, got {got}")
        with torch.no_grad():
            drop = drop.to(self.mask_logits.device) & ~self.pruned_units()
            n = int(round(float(self.unit_sizes().to(drop.device)[drop].sum())))
            self.mask_logits.masked_fill_(drop, float("-inf"))
        return n


# ---------------------------------------------------------------------------- the layer


class MaskedLinear(LearnedMask, nn.Module):
    """``nn.Linear`` with a learned soft mask: ``y = x @ (W ⊙ σ(M / T))ᵀ + b``.

    Same constructor arguments as ``nn.Linear`` plus the mask's. The weight is initialised
    exactly as ``nn.Linear`` does. Element and block masks run through the fused op
    `morpho_kernels.masked_linear` (block logits broadcast over their tiles; autograd sums the
    tile gradients); a neuron mask scales the outputs, bias included.

    Args:
        in_features, out_features, bias, device, dtype: as ``nn.Linear``.
        granularity: "element" (default), "block" or "neuron" (module docstring).
        block_size: 16, 32, 64 or 128 (block granularity only).
        mask_init: magnitude of the initial logits (`MASK_INIT` = 2.0: σ(±2) = 0.88 / 0.12).
        init_density: fraction of units starting on, in [0, 1] (`INIT_DENSITY` = 1).
        temperature: initial temperature T > 0.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=None, *, granularity: str = "element", block_size: int = 16,
                 mask_init: float = MASK_INIT, init_density: float = INIT_DENSITY,
                 temperature: float = 1.0):
        super().__init__()
        self.in_features = check_int("in_features", in_features, 0)
        self.out_features = check_int("out_features", out_features, 0)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self._reset_weight()
        self._init_mask(granularity, block_size, init_density, mask_init, temperature)

    def _reset_weight(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def reset_parameters(self) -> None:
        """Weight and bias as ``nn.Linear``; mask logits ±mask_init at ``init_density``."""
        self._reset_weight()
        self.reset_mask()

    # ------------------------------------------------------------------ conversion

    @classmethod
    def from_linear(cls, linear: nn.Linear, temperature: float = 1.0) -> MaskedLinear:
        """A MaskedLinear computing (within 1% relative) what ``linear`` computes.

        Every mask value starts at σ(`FROM_LINEAR_LOGIT`) = 0.9975 ≥ 0.99 (element mask).
        The layer holds ``linear``'s very ``weight`` and ``bias`` Parameters (not copies), so
        a weight tied elsewhere (a language model's output head and its token embedding)
        stays tied, and an optimizer built on them keeps training them.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        t = check_temperature(temperature)
        w = linear.weight
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    device=w.device, dtype=w.dtype, temperature=t)
        layer.weight, layer.bias = linear.weight, linear.bias  # the same tensors: ties survive
        with torch.no_grad():
            layer.mask_logits.fill_(FROM_LINEAR_LOGIT * t)
        return layer

    def to_linear(self) -> nn.Linear:
        """An ``nn.Linear`` with the mask baked in: weight = W ⊙ σ(M/T) (a neuron mask scales
        the bias too)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.effective_weight())
            if self.bias is not None:
                scale = self.unit_mask().to(self.bias.dtype) if self.granularity == "neuron" \
                    else 1.0
                lin.bias.copy_(self.bias * scale)
        return lin

    # ------------------------------------------------------------------ forward

    def forward(self, x: Tensor) -> Tensor:  # (*, in) → (*, out)
        if self.granularity == "neuron":
            return self.unmasked(x) * self.unit_mask()
        logits = self.mask_logits if self.granularity == "element" else \
            self.expand_units(self.mask_logits)
        return masked_linear(x, self.weight, logits, self.temperature, self.bias)

    def unmasked(self, x: Tensor) -> Tensor:
        """The layer without its mask, ``x Wᵀ + b`` (a neuron-masked model may apply a norm in
        between, then `unit_mask`)."""
        if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[-1] != self.in_features:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"expected input with {self.in_features} features in the last "
                             f"dimension, got {got}")
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        gran = "" if self.granularity == "element" else f", granularity={self.granularity!r}"
        if self.granularity == "block":
            gran += f", block_size={self.block_size}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}{gran}")
