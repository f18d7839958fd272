"""MorphoNet's learned-mask layers: ``W ⊙ σ(M/T)`` at element, block or neuron granularity.

Every layer here holds

- ``weight`` (and ``bias``) trained by the weight optimizer;
- ``mask_logits`` M, one logit per *mask unit* (a connection, a b×b tile, or an output
  unit / channel), trained by the separate mask optimizer; ``-inf`` marks a hard-pruned unit
  (σ = 0 exactly, zero gradients, never NaN);
- ``temperature`` T, a buffer changed in place by `set_temperature`;
- ``sparsity_loss``, the layer's own penalty weight λ (the seed's "layer-wise sparsity":
  ``model.layers[0].sparsity_loss = 0.001``); the trainer scales it by the sparsity schedule.

Element masks run through ``morpho_kernels.masked_linear`` (the fused op with its custom
backward); block masks through the same op with the tile logits broadcast (autograd sums the
tile gradients); neuron masks scale whole outputs, bias included, so a pruned unit outputs
exactly zero and can be removed (``export.shrink``).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from morpho_kernels.ops.masked_linear import masked_linear

from .config import BLOCK_SIZES, GRANULARITIES


class MaskedMixin:
    """Mask bookkeeping shared by `MorphoLinear` and `MorphoConv`.

    Subclasses set ``granularity``, ``block_size``, ``mask_logits`` (unit-shaped), the buffer
    ``temperature`` and implement `_expand` (unit-shaped → weight-shaped).
    """

    weight: nn.Parameter
    mask_logits: nn.Parameter
    temperature: Tensor
    granularity: str
    block_size: int
    sparsity_loss: Optional[float]

    # ------------------------------------------------------------------ masks

    def _expand(self, units: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def unit_mask(self) -> Tensor:
        """σ(M/T) per mask unit (differentiable)."""
        return torch.sigmoid(self.mask_logits / self.temperature)

    def get_mask(self, hard: bool = False, threshold: float = 0.5) -> Tensor:
        """The mask in the weight's shape, detached: σ(M/T), or with ``hard=True`` the 0/1
        mask of values above ``threshold`` (for a linear layer a 2-D (out, in) matrix)."""
        with torch.no_grad():
            m = self._expand(self.unit_mask().float())
            return (m > threshold).to(self.weight.dtype) if hard else m.to(self.weight.dtype)

    def set_temperature(self, temperature: float) -> None:
        """Set T > 0 in place."""
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
                math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        with torch.no_grad():
            self.temperature.fill_(float(temperature))

    def unit_sizes(self) -> Tensor:
        """Number of weights (connections) each mask unit covers, unit-shaped (float)."""
        ones = torch.ones_like(self.weight, dtype=torch.float32)
        return self._reduce(ones)

    def _reduce(self, w: Tensor) -> Tensor:
        """Sum a weight-shaped tensor over each mask unit."""
        if self.granularity == "element":
            return w
        if self.granularity == "neuron":
            return w.reshape(w.shape[0], -1).sum(1)
        b = self.block_size
        n, k = w.shape[0], w[0].numel()
        w2 = w.reshape(n, k)
        pad = F.pad(w2, (0, -k % b, 0, -n % b))
        return pad.reshape(pad.shape[0] // b, b, pad.shape[1] // b, b).sum((1, 3))

    def pruned_units(self) -> Tensor:
        """Boolean, unit-shaped: True where the unit is hard-pruned (logit −inf)."""
        return torch.isneginf(self.mask_logits.detach())

    def n_connections(self) -> int:
        """Prunable connections (weights) of this layer."""
        return self.weight.numel()

    def n_live(self) -> int:
        """Connections not hard-pruned."""
        sizes = self.unit_sizes()
        return int(round(float(sizes[~self.pruned_units()].sum())))

    def prune(self, threshold: float = 0.5) -> int:
        """Hard-prune every unit whose mask value σ(M/T) is below ``threshold``; returns the
        number of connections pruned by this call."""
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
                0.0 <= threshold <= 1.0):
            raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
        with torch.no_grad():
            drop = (self.unit_mask() < threshold) & ~self.pruned_units()
            return self.prune_units(drop)

    def prune_units(self, drop: Tensor) -> int:
        """Hard-prune the units where the boolean, unit-shaped ``drop`` is True."""
        if drop.shape != self.mask_logits.shape or drop.dtype != torch.bool:
            raise ValueError(f"drop must be a bool tensor of shape "
                             f"{tuple(self.mask_logits.shape)}, got {drop.dtype} "
                             f"{tuple(drop.shape)}")
        with torch.no_grad():
            drop = drop & ~self.pruned_units()
            n = int(round(float(self.unit_sizes()[drop].sum())))
            self.mask_logits.masked_fill_(drop, float("-inf"))
        return n

    def penalty(self) -> Tensor:
        """Mean mask value over this layer's connections (each unit weighted by its size):
        the term the layer's ``sparsity_loss`` multiplies. Pruned units contribute 0."""
        if self.granularity == "element":  # every unit is one connection: no size tensor
            return self.unit_mask().mean()
        sizes = self.unit_sizes().to(self.mask_logits.device)
        return (self.unit_mask() * sizes).sum() / sizes.sum()

    def effective_weight(self) -> Tensor:
        """W ⊙ σ(M/T) in the weight's shape, detached."""
        with torch.no_grad():
            return self.weight * self.get_mask()

    def _init_mask(self, units: tuple[int, ...], sparse_init: float, mask_init: float) -> None:
        if not 0.0 < sparse_init <= 1.0:
            raise ValueError(f"sparse_init must be in (0, 1], got {sparse_init!r}")
        on = torch.rand(units, device=self.weight.device) < sparse_init
        logits = torch.where(on, mask_init, -mask_init).to(self.weight.dtype)
        self.mask_logits = nn.Parameter(logits)


def _check_granularity(granularity: str, block_size: int) -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if granularity == "block" and block_size not in BLOCK_SIZES:
        raise ValueError(f"block_size must be one of {BLOCK_SIZES}, got {block_size!r}")


class MorphoLinear(MaskedMixin, nn.Module):
    """Linear layer with a learned mask: ``y = x (W ⊙ σ(M/T))ᵀ + b``.

    Args:
        in_features, out_features, bias: as ``nn.Linear`` (same weight initialisation).
        granularity: "element", "block" (``block_size``² tiles) or "neuron" (output units;
            the mask then scales the whole output, bias included).
        block_size: 16, 32, 64 or 128 (block granularity only).
        sparse_init: fraction of mask units whose logit starts at ``+mask_init`` (the rest
            at ``-mask_init``).
        mask_init: magnitude of the initial logits.
        temperature: initial T.
        sparsity_loss: this layer's penalty weight λ (None: the trainer uses the config's).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 granularity: str = "element", block_size: int = 16, sparse_init: float = 1.0,
                 mask_init: float = 2.0, temperature: float = 1.0,
                 sparsity_loss: Optional[float] = None, device=None, dtype=None):
        super().__init__()
        _check_granularity(granularity, block_size)
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.in_features, self.out_features = in_features, out_features
        self.granularity, self.block_size = granularity, block_size
        self.sparsity_loss = sparsity_loss
        lin = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.weight, self.bias = lin.weight, lin.bias
        self.register_buffer("temperature", torch.tensor(float(temperature), device=device))
        b = block_size
        units = {"element": (out_features, in_features),
                 "block": (-(-out_features // b), -(-in_features // b)),
                 "neuron": (out_features,)}[granularity]
        self._init_mask(units, sparse_init, mask_init)

    def _expand(self, units: Tensor) -> Tensor:
        if self.granularity == "element":
            return units
        if self.granularity == "neuron":
            return units[:, None].expand(self.out_features, self.in_features)
        b = self.block_size
        return units.repeat_interleave(b, 0)[:self.out_features].repeat_interleave(
            b, 1)[:, :self.in_features]

    def forward(self, x: Tensor) -> Tensor:  # (*, in) → (*, out)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected input with {self.in_features} features in the last "
                             f"dimension, got shape {tuple(x.shape)}")
        if self.granularity == "neuron":
            return self.unmasked(x) * self.unit_mask()
        logits = self.mask_logits if self.granularity == "element" else self._expand(
            self.mask_logits)
        return masked_linear(x, self.weight, logits, self.temperature, self.bias)

    def unmasked(self, x: Tensor) -> Tensor:
        """The layer without its mask, ``x Wᵀ + b`` (neuron granularity: the model applies a
        norm in between, then the unit mask)."""
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"granularity={self.granularity!r}"
                + (f", block_size={self.block_size}" if self.granularity == "block" else ""))


class MorphoConv(MaskedMixin, nn.Module):
    """1-D or 2-D convolution with a learned mask over filter taps and channels.

    ``granularity="element"`` masks every weight (each tap of each in→out channel pair);
    ``"neuron"`` masks whole output channels (bias included, so pruned channels output
    zero); ``"block"`` masks b×b tiles of the (out, in·taps) weight matrix. Stride, padding,
    dilation and groups are honoured exactly as ``nn.Conv1d`` / ``nn.Conv2d`` do.

    Args:
        dims: 1 or 2.
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as
            ``nn.ConvNd``.
        granularity, block_size, sparse_init, mask_init, temperature, sparsity_loss: as
            `MorphoLinear`.
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int, kernel_size,
                 stride=1, padding=0, dilation=1, groups: int = 1, bias: bool = True,
                 granularity: str = "element", block_size: int = 16, sparse_init: float = 1.0,
                 mask_init: float = 2.0, temperature: float = 1.0,
                 sparsity_loss: Optional[float] = None, device=None, dtype=None):
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"dims must be 1 or 2, got {dims!r}")
        _check_granularity(granularity, block_size)
        conv_cls = nn.Conv1d if dims == 1 else nn.Conv2d
        conv = conv_cls(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                        dilation=dilation, groups=groups, bias=bias, device=device, dtype=dtype)
        self.dims = dims
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        self.weight, self.bias = conv.weight, conv.bias
        self.granularity, self.block_size = granularity, block_size
        self.sparsity_loss = sparsity_loss
        self.register_buffer("temperature", torch.tensor(float(temperature), device=device))
        n, k = self.weight.shape[0], self.weight[0].numel()
        b = block_size
        units = {"element": tuple(self.weight.shape), "neuron": (n,),
                 "block": (-(-n // b), -(-k // b))}[granularity]
        self._init_mask(units, sparse_init, mask_init)

    def _expand(self, units: Tensor) -> Tensor:
        w = self.weight
        if self.granularity == "element":
            return units
        if self.granularity == "neuron":
            return units.reshape(-1, *([1] * (w.dim() - 1))).expand_as(w)
        b = self.block_size
        n, k = w.shape[0], w[0].numel()
        full = units.repeat_interleave(b, 0)[:n].repeat_interleave(b, 1)[:, :k]
        return full.reshape(w.shape)

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, *spatial) → (B, C_out, *spatial')
        if x.dim() != self.dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (batch, {self.in_channels}, "
                             f"{'length' if self.dims == 1 else 'height, width'}), got shape "
                             f"{tuple(x.shape)}")
        if self.granularity == "neuron":
            return self.unmasked(x) * self.unit_mask().reshape(1, -1, *([1] * self.dims))
        return self._conv(x, self.weight * self._expand(self.unit_mask()))

    def unmasked(self, x: Tensor) -> Tensor:
        """The convolution without its mask (see `MorphoLinear.unmasked`)."""
        return self._conv(x, self.weight)

    def _conv(self, x: Tensor, w: Tensor) -> Tensor:
        conv = F.conv1d if self.dims == 1 else F.conv2d
        return conv(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, granularity={self.granularity!r}")
