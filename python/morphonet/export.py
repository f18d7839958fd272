"""Turn learned structure into an execution format that is actually faster.

`to_block_sparse(model)`: every `MaskedLinear` of a trained model becomes a `BlockSparseLinear`
holding only the blocks in which the hard mask keeps at least one connection, with values equal
to the effective weight W ⊙ σ(M/T) there (hard-pruned elements are exact zeros, soft ones keep
their soft value). The result
computes the same function whenever the connections outside the kept blocks are pruned
(``model.prune()`` sets their logits to −inf, σ = 0 exactly); soft masks left below the
threshold but not pruned are dropped, which changes the output by their (small) contribution.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from morpho_kernels.formats import BLOCK_SIZES
from morpho_kernels.nn import BlockSparseLinear, MaskedLinear


def _convert(layer: MaskedLinear, block_size: int, threshold: float) -> BlockSparseLinear:
    with torch.no_grad():
        weff = layer.effective_weight().detach()
        lin = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                        device=weff.device, dtype=weff.dtype)
        lin.weight.copy_(weff)
        if layer.bias is not None:
            lin.bias.copy_(layer.bias)
        n, k = weff.shape
        b = block_size
        mask = torch.zeros(-(-n // b) * b, -(-k // b) * b, dtype=torch.bool, device=weff.device)
        mask[:n, :k] = layer.get_mask(hard=True, threshold=threshold) > 0
        # a block lives when any of its connections does; inside it the effective weight is
        # kept as is (soft values included), so live blocks compute exactly what they did
        blocks = mask.reshape(mask.shape[0] // b, b, mask.shape[1] // b, b).any(3).any(1)
        if not bool(blocks.any()):  # every connection pruned: keep one block of zeros
            blocks[0, 0] = True
            lin.weight[:b, :b] = 0.0
    return BlockSparseLinear.from_linear(lin, mask=blocks, block_size=b, pad=True)


def to_block_sparse(model: nn.Module, block_size: Optional[int] = None, threshold: float = 0.5,
                    inplace: bool = False) -> nn.Module:
    """A copy of ``model`` (or the model itself with ``inplace=True``) in which each
    `MaskedLinear` is replaced by a `BlockSparseLinear` with the same outputs (see the module
    docstring for when that is exact).

    Args:
        model: any module tree containing `MaskedLinear` layers.
        block_size: 16, 32, 64 or 128; by default each layer's own ``block_size`` attribute
            (layers trained with block-granular masks), else an error.
        threshold: hard-mask threshold on σ(M/T) deciding which connections are kept.
        inplace: modify ``model`` instead of a deep copy.
    """
    if block_size is not None and block_size not in BLOCK_SIZES:
        raise ValueError(f"block_size must be one of {BLOCK_SIZES}, got {block_size!r}")
    if not (0.0 < threshold < 1.0):
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    out = model if inplace else copy.deepcopy(model)
    if isinstance(out, MaskedLinear):
        return _convert(out, _block_of(out, block_size), threshold)
    converted = 0
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MaskedLinear):
                setattr(parent, name, _convert(child, _block_of(child, block_size), threshold))
                converted += 1
    if converted == 0:
        raise ValueError("model has no MaskedLinear layer to convert")
    return out


def _block_of(layer: nn.Module, block_size: Optional[int]) -> int:
    b = block_size if block_size is not None else getattr(layer, "block_size", None)
    if b is None:
        raise ValueError(f"{type(layer).__name__} has no block_size: pass block_size= "
                         f"(one of {BLOCK_SIZES})")
    return b
