"""MorphoNet's learned-mask layers: ``W ⊙ σ(M/T)`` at element, block or neuron granularity.

Both are built on the one learned-mask layer of `morpho_kernels.nn` (its `LearnedMask` logic:
temperature, soft and hard masks, pruning, counting, one set of defaults):

- `MorphoLinear` *is* a `morpho_kernels.nn.MaskedLinear` (the fused ``masked_linear`` op for
  element and block masks, an output scale for neuron masks) with the layer's own penalty
  weight ``sparsity_loss`` (the seed's "layer-wise sparsity":
  ``model.layers[0].sparsity_loss = 0.001``; None: the config's λ);
- `MorphoConv` is a 1-D / 2-D convolution with the same mask logic over its filter taps and
  channels.

``mask_logits`` (one logit per unit, ``-inf`` = hard-pruned) are trained by the separate mask
optimizer; the ``temperature`` buffer is changed in place by `set_temperature`.
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from morpho_kernels.checks import check_choice
from morpho_kernels.nn import INIT_DENSITY, MASK_INIT, LearnedMask, MaskedLinear

__all__ = ["LearnedMask", "MorphoConv", "MorphoLinear", "is_masked"]


def is_masked(module: nn.Module) -> bool:
    """True for a learned-mask layer (MorphoLinear, MorphoConv, any MaskedLinear)."""
    return isinstance(module, LearnedMask)


class MorphoLinear(MaskedLinear):
    """Linear layer with a learned mask: ``y = x (W ⊙ σ(M/T))ᵀ + b``.

    A `morpho_kernels.nn.MaskedLinear` (same arguments and defaults) plus ``sparsity_loss``,
    this layer's penalty weight λ (None: the trainer uses the config's).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=None, *, granularity: str = "element", block_size: int = 16,
                 mask_init: float = MASK_INIT, init_density: float = INIT_DENSITY,
                 temperature: float = 1.0, sparsity_loss: Optional[float] = None):
        super().__init__(in_features, out_features, bias, device, dtype,
                         granularity=granularity, block_size=block_size, mask_init=mask_init,
                         init_density=init_density, temperature=temperature)
        self.sparsity_loss = sparsity_loss


class MorphoConv(LearnedMask, nn.Module):
    """1-D or 2-D convolution with a learned mask over filter taps and channels.

    ``granularity="element"`` masks every weight (each tap of each in→out channel pair);
    ``"neuron"`` masks whole output channels (bias included, so pruned channels output
    zero); ``"block"`` masks b×b tiles of the (out, in·taps) weight matrix. Stride, padding,
    dilation and groups are honoured exactly as ``nn.Conv1d`` / ``nn.Conv2d`` do; the weight
    is initialised as they do.

    Args:
        dims: 1 or 2.
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as
            ``nn.ConvNd``.
        granularity, block_size, mask_init, init_density, temperature, sparsity_loss: as
            `MorphoLinear`.
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int, kernel_size,
                 stride=1, padding=0, dilation=1, groups: int = 1, bias: bool = True, *,
                 granularity: str = "element", block_size: int = 16,
                 mask_init: float = MASK_INIT, init_density: float = INIT_DENSITY,
                 temperature: float = 1.0, sparsity_loss: Optional[float] = None, device=None,
                 dtype=None):
        super().__init__()
        check_choice("dims", dims, (1, 2))
        conv_cls = nn.Conv1d if dims == 1 else nn.Conv2d
        conv = conv_cls(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                        dilation=dilation, groups=groups, bias=bias, device=device, dtype=dtype)
        self.dims = dims
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        self.weight, self.bias = conv.weight, conv.bias
        self.sparsity_loss = sparsity_loss
        self._init_mask(granularity, block_size, init_density, mask_init, temperature)

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, *spatial) → (B, C_out, *spatial')
        if self.granularity == "neuron":
            return self.unmasked(x) * self.unit_mask().reshape(1, -1, *([1] * self.dims))
        self._check_input(x)
        return self._conv(x, self.weight * self.expand_units(self.unit_mask()))

    def unmasked(self, x: Tensor) -> Tensor:
        """The convolution without its mask (a neuron-masked model applies a norm in between,
        then `unit_mask`)."""
        self._check_input(x)
        return self._conv(x, self.weight)

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != self.dims + 2 or \
                x.shape[1] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"expected input (batch, {self.in_channels}, "
                             f"{'length' if self.dims == 1 else 'height, width'}), got {got}")

    def _conv(self, x: Tensor, w: Tensor) -> Tensor:
        conv = F.conv1d if self.dims == 1 else F.conv2d
        return conv(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, granularity={self.granularity!r}")
