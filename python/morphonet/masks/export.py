"""Turn learned structure into an execution format that is actually faster.

`to_block_sparse(model)`: every learned-mask linear layer (`morpho_kernels.nn.MaskedLinear`,
MorphoNet's `MorphoLinear` included) with element or block masks becomes a `BlockSparseLinear`
holding only the blocks in which at least one connection is live, with values equal to the
effective weight W ⊙ σ(M/T) there (hard-pruned elements are exact zeros, soft ones keep their
soft value). A connection is live when it is not hard-pruned (logit −inf, as ``prune`` and
the trainer's sparsity enforcement leave it), so the converted model computes the same
function; with ``threshold=`` the connections whose mask value is at or below it are dropped
too (an approximation: their small contributions go). Modules that know how to convert
themselves (a `MorphoNetTransformer`'s attention folds its head gates into the o projection)
say so with a ``to_block_sparse_(block_size, threshold)`` method, which is called first.

`shrink(model)`: a neuron-masked model becomes a physically smaller dense network; each model
describes how it shrinks (``model.shrink()``: `MorphoNetMLP`, `MorphoNetCNN`). The helpers they
use (`fold_rows`, `dense_linear`, `norm_rows`) are here.

`to_edge_list(model)`: the same for very sparse element masks: each element- or block-masked
layer becomes a `SparseLinear` (an edge list) holding exactly its live connections.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from morpho_kernels.checks import check_choice, check_fraction
from morpho_kernels.formats import BLOCK_SIZES, EdgeList
from morpho_kernels.nn import BlockSparseLinear, MaskedLinear, SparseLinear, tied_with

__all__ = ["check_untied", "convert_layer", "dense_linear", "edge_list_layer", "fold_rows",
           "live_connections", "norm_rows", "shrink", "to_block_sparse", "to_edge_list"]


def live_connections(layer: MaskedLinear, threshold: Optional[float] = None) -> torch.Tensor:
    """Weight-shaped bool: the connections not hard-pruned (and, with ``threshold``, whose
    mask value exceeds it)."""
    live = layer.expand_units(~layer.pruned_units()).bool()
    if threshold is not None:
        live = live & (layer.get_mask(hard=True, threshold=threshold) > 0)
    return live


def convert_layer(layer: MaskedLinear, block_size: int, threshold: Optional[float] = None,
                  dead: Optional[torch.Tensor] = None,
                  col_scale: Optional[torch.Tensor] = None) -> BlockSparseLinear:
    """``layer`` as a `BlockSparseLinear` (zero-padded to whole blocks). ``dead``
    (weight-shaped bool): connections whose contribution is discarded downstream anyway
    (pruned heads), not counted as live; ``col_scale`` (in_features,): a per-input factor
    folded into the weight's columns."""
    with torch.no_grad():
        weff = layer.effective_weight().detach()
        if col_scale is not None:
            weff = weff * col_scale.to(weff)[None, :]
        lin = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                        device=weff.device, dtype=weff.dtype)
        lin.weight.copy_(weff)
        if layer.bias is not None:
            lin.bias.copy_(layer.bias)
        n, k = weff.shape
        b = block_size
        mask = torch.zeros(-(-n // b) * b, -(-k // b) * b, dtype=torch.bool, device=weff.device)
        mask[:n, :k] = live_connections(layer, threshold)
        if dead is not None:
            mask[:n, :k] &= ~dead.to(mask.device)
        # a block lives when any of its connections does; inside it the effective weight is
        # kept as is (soft values included), so live blocks compute exactly what they did
        blocks = mask.reshape(mask.shape[0] // b, b, mask.shape[1] // b, b).any(3).any(1)
        if not bool(blocks.any()):  # every connection pruned: keep one block of zeros
            blocks[0, 0] = True
            lin.weight[:b, :b] = 0.0
    return BlockSparseLinear.from_linear(lin, mask=blocks, block_size=b, pad=True)


def convertible(layer: nn.Module) -> bool:
    """A learned-mask linear layer with element or block masks (neuron masks: `shrink`)."""
    return isinstance(layer, MaskedLinear) and layer.granularity != "neuron"


def check_untied(model: nn.Module, name: str) -> None:
    """ValueError naming both sides when the layer ``name`` shares its weight or bias with
    another module (weight tying, e.g. a language model's head and its token embedding): a
    `BlockSparseLinear` holds its own values, so converting the layer would silently untie
    them."""
    ties = tied_with(model, name)
    if ties:
        pname, others = next(iter(ties.items()))
        raise ValueError(
            f"{name}.{pname} is tied to {', '.join(others)} (the same tensor): a "
            f"BlockSparseLinear holds its own values, so converting {name} would untie them; "
            f"keep {name} dense, or untie it first "
            f"(model.{name}.{pname} = nn.Parameter(model.{name}.{pname}.detach().clone()))")


def block_of(layer: nn.Module, block_size: Optional[int]) -> int:
    """The block size to convert ``layer`` with: ``block_size``, else the layer's own (a
    block-masked layer), else an error."""
    if block_size is not None:
        return block_size
    if getattr(layer, "granularity", None) == "block":
        return layer.block_size
    raise ValueError(f"{type(layer).__name__} has no block_size: pass block_size= (one of "
                     f"{BLOCK_SIZES})")


def to_block_sparse(model: nn.Module, block_size: Optional[int] = None,
                    threshold: Optional[float] = None, inplace: bool = False) -> nn.Module:
    """A copy of ``model`` (or the model itself with ``inplace=True``) in which each
    element- or block-masked `MaskedLinear` / `MorphoLinear` is a `BlockSparseLinear` with
    the same outputs (module docstring).

    Args:
        model: any module tree containing such layers (neuron-masked layers are left alone:
            use `shrink`).
        block_size: 16, 32, 64 or 128; by default each block-masked layer's own, else an error.
        threshold: None (default): keep every connection not hard-pruned (exact); a number in
            (0, 1): also drop those whose mask value σ(M/T) is at or below it.
        inplace: modify ``model`` instead of a deep copy.

    A layer whose weight or bias is tied to another module's is refused with an error naming
    both (`check_untied`), before anything is converted.
    """
    if block_size is not None:
        check_choice("block_size", block_size, BLOCK_SIZES)
    if threshold is not None:
        threshold = check_fraction("threshold", threshold, lo_open=True, hi_open=True)

    def convert(layer, dead=None, col_scale=None):
        return convert_layer(layer, block_of(layer, block_size), threshold, dead=dead,
                             col_scale=col_scale)

    return _convert_model(model, convert, lambda m: m.to_block_sparse_(block_size, threshold)
                          if hasattr(m, "to_block_sparse_") else 0, inplace)


def _convert_model(model: nn.Module, convert, convert_self, inplace: bool) -> nn.Module:
    """``model`` (a deep copy unless ``inplace``) with every `convertible` layer replaced by
    ``convert(layer)``; modules that convert themselves first (``convert_self(m)`` returns how
    many layers it converted)."""
    out = model if inplace else copy.deepcopy(model)  # a deep copy keeps ties as ties
    if convertible(out):
        return convert(out)
    for qname, m in out.named_modules():
        if convertible(m):
            check_untied(out, qname)
    converted = 0
    for m in list(out.modules()):
        converted += convert_self(m)
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if convertible(child):
                setattr(parent, name, convert(child))
                converted += 1
    if converted == 0:
        raise ValueError("model has no MaskedLinear or (element / block) MorphoLinear layer to "
                         "convert")
    return out


# ---------------------------------------------------------------------------- edge list


def edge_list_layer(layer: MaskedLinear, threshold: Optional[float] = None,
                    dead: Optional[torch.Tensor] = None,
                    col_scale: Optional[torch.Tensor] = None) -> SparseLinear:
    """``layer`` as a `morpho_kernels.nn.SparseLinear` holding exactly its live connections
    (`live_connections`; ``dead`` and ``col_scale`` as in `convert_layer`) with their
    effective weights W ⊙ σ(M/T): work ∝ live connections, the same outputs."""
    with torch.no_grad():
        weff = layer.effective_weight().detach()
        if col_scale is not None:
            weff = weff * col_scale.to(weff)[None, :]
        live = live_connections(layer, threshold)
        if dead is not None:
            live = live & ~dead.to(live.device)
        edges = EdgeList.from_dense(live)
        out = SparseLinear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                           device=weff.device, dtype=weff.dtype, edges=edges)
        dst, src = live.nonzero(as_tuple=True)  # the slots' (dst, src) order
        out.values.zero_()
        out.values[:dst.numel()] = weff[dst, src]
        if layer.bias is not None:
            out.bias.copy_(layer.bias.detach())
    return out


def to_edge_list(model: nn.Module, threshold: Optional[float] = None,
                 inplace: bool = False) -> nn.Module:
    """A copy of ``model`` (or the model itself with ``inplace=True``) in which each
    element- or block-masked `MaskedLinear` / `MorphoLinear` is a `SparseLinear` (an edge
    list, `edge_list_layer`) with the same outputs: the format for very sparse element masks
    (work ∝ live connections, no block padding). ``threshold`` as in `to_block_sparse`.
    Modules with a ``to_edge_list_(threshold)`` method convert themselves first (a
    `MorphoNetTransformer`'s attention folds its head gates into o); tied layers are refused
    by name (`check_untied`)."""
    if threshold is not None:
        threshold = check_fraction("threshold", threshold, lo_open=True, hi_open=True)

    def convert(layer, dead=None, col_scale=None):
        return edge_list_layer(layer, threshold, dead=dead, col_scale=col_scale)

    return _convert_model(model, convert, lambda m: m.to_edge_list_(threshold)
                          if hasattr(m, "to_edge_list_") else 0, inplace)


# ---------------------------------------------------------------------------- shrink


def shrink(model: nn.Module) -> nn.Sequential:
    """A plain, physically smaller dense network computing what a neuron-masked model
    computes: ``model.shrink()`` (`MorphoNetMLP`, `MorphoNetCNN`: pruned units and channels
    removed with the next layer's matching inputs, mask values folded into the kept weights;
    outputs identical up to float rounding)."""
    fn = getattr(model, "shrink", None)
    if not callable(fn):
        raise TypeError(f"{type(model).__name__} does not describe how it shrinks (no shrink() "
                        f"method); shrink supports MorphoNetMLP and MorphoNetCNN")
    return fn()


@torch.no_grad()
def fold_rows(layer, keep: Optional[torch.Tensor], cols: Optional[torch.Tensor],
              fold: bool = True) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Weight and bias of a masked layer with the mask folded in (``fold=False``: a neuron
    mask is left out, to be folded into the norm that follows), rows ``keep`` (None: all) and
    input columns ``cols`` (None: all)."""
    w, b = (layer.effective_weight() if fold else layer.weight.detach()), layer.bias
    if layer.granularity == "neuron" and fold:  # the mask scales the bias too
        s = layer.unit_mask()
        b = b * s if b is not None else None
    rows = keep if keep is not None else torch.ones(w.shape[0], dtype=torch.bool,
                                                   device=w.device)
    w = w[rows]
    if cols is not None:
        w = w[:, cols]
    return w.clone(), (b[rows].clone() if b is not None else None)


def dense_linear(w: torch.Tensor, b: Optional[torch.Tensor]) -> nn.Linear:
    """An ``nn.Linear`` holding (a copy of) ``w`` and ``b``."""
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
        if b is not None:
            lin.bias.copy_(b)
    return lin


def norm_rows(norm: nn.Module, keep: torch.Tensor, layer) -> nn.Module:
    """The kept rows of a batchnorm, with the layer's neuron mask folded into γ and β (the
    models apply neuron masks after the norm)."""
    if isinstance(norm, nn.Identity):
        return nn.Identity()
    out = type(norm)(int(keep.sum()), eps=norm.eps, momentum=norm.momentum,
                     device=norm.weight.device)
    with torch.no_grad():
        s = layer.unit_mask()[keep]
        out.weight.copy_(norm.weight[keep] * s)
        out.bias.copy_(norm.bias[keep] * s)
        for name in ("running_mean", "running_var"):
            getattr(out, name).copy_(getattr(norm, name)[keep])
        out.num_batches_tracked.copy_(norm.num_batches_tracked)
    return out
