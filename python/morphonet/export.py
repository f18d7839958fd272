"""Turn learned structure into an execution format that is actually faster.

`to_block_sparse(model)`: every `MaskedLinear` of a trained model becomes a `BlockSparseLinear`
holding only the blocks in which the hard mask keeps at least one connection, with values equal
to the effective weight W ⊙ σ(M/T) there (hard-pruned elements are exact zeros, soft ones keep
their soft value). The result
computes the same function whenever the connections outside the kept blocks are pruned
(``model.prune()`` sets their logits to −inf, σ = 0 exactly); soft masks left below the
threshold but not pruned are dropped, which changes the output by their (small) contribution.
MorphoNet's `MorphoLinear` layers (element or block masks) convert too; for them the kept
connections are exactly those not hard-pruned, so the outputs are the same.

A `MorphoNetTransformer` converts as a whole: the head gates σ(g/T) of each attention scale
the columns of its o projection that read the head, so they are folded into the converted o's
values (a pruned head's columns become exact zeros and its blocks are dropped, as are the
blocks of q, k, v that only feed pruned heads), and ``attn.head_gates`` becomes None. The
converted attention has no gates and no temperature left to read; the outputs are the same.

`shrink(model)`: a neuron-masked MorphoNet MLP or CNN becomes a physically smaller dense
network (below).
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from morpho_kernels.formats import BLOCK_SIZES
from morpho_kernels.nn import BlockSparseLinear, MaskedLinear

from .layers import MorphoLinear
from .transformer import MorphoSelfAttention

_CONVERTIBLE = (MaskedLinear, MorphoLinear)


def _live(layer, threshold: float) -> torch.Tensor:
    """Connections kept, weight-shaped bool: for a MorphoNet layer every connection not
    hard-pruned (its function is W ⊙ σ(M/T) over exactly those), for a MaskedLinear those
    whose mask value exceeds ``threshold``."""
    if isinstance(layer, MorphoLinear):
        return layer._expand(~layer.pruned_units()).bool()
    return layer.get_mask(hard=True, threshold=threshold) > 0


def _convert(layer, block_size: int, threshold: float, dead: Optional[torch.Tensor] = None,
             col_scale: Optional[torch.Tensor] = None) -> BlockSparseLinear:
    """``layer`` as a `BlockSparseLinear`. ``dead`` (weight-shaped bool): connections whose
    contribution is discarded downstream anyway (pruned heads), not counted as live;
    ``col_scale`` (in_features,): a per-input factor folded into the weight's columns."""
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
        mask[:n, :k] = _live(layer, threshold)
        if dead is not None:
            mask[:n, :k] &= ~dead.to(mask.device)
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
        model: any module tree containing `MaskedLinear` or element / block `MorphoLinear`
            layers (neuron-masked layers are left alone: use `shrink`).
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
    if isinstance(out, _CONVERTIBLE):
        return _convert(out, _block_of(out, block_size), threshold)
    converted = 0
    for attn in [m for m in out.modules() if isinstance(m, MorphoSelfAttention)]:
        converted += _convert_attention(attn, block_size, threshold)
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if _convertible(child):
                setattr(parent, name, _convert(child, _block_of(child, block_size), threshold))
                converted += 1
    if converted == 0:
        raise ValueError("model has no MaskedLinear or (element / block) MorphoLinear layer to "
                         "convert")
    return out


def _convertible(layer: nn.Module) -> bool:
    return isinstance(layer, _CONVERTIBLE) and getattr(layer, "granularity", "") != "neuron"


def _convert_attention(attn: MorphoSelfAttention, block_size: Optional[int],
                       threshold: float) -> int:
    """Convert the q, k, v, o projections of one attention, folding its head gates into o's
    columns when o converts (the gates then go: ``attn.head_gates = None``); returns how many
    projections were converted. A neuron-masked o stays a `MorphoLinear` and keeps the gates,
    which read its temperature."""
    if attn.head_gates is None:  # already converted: its gates live in o
        return 0
    if not isinstance(attn.o, MorphoLinear):
        raise ValueError(f"cannot convert a MorphoSelfAttention whose o projection is a "
                         f"{type(attn.o).__name__}: its head gates read o's temperature, so they "
                         f"cannot be evaluated and folded; convert the unconverted model")
    fold = _convertible(attn.o)
    with torch.no_grad():
        gates = attn.gate_values().detach() if fold else None  # before o is replaced
    n = 0
    for role in attn.ROLES:
        layer = getattr(attn, role)
        if not _convertible(layer):
            continue
        scale = attn._per_feature(gates) if role == "o" else None
        setattr(attn, role, _convert(layer, _block_of(layer, block_size), threshold,
                                     dead=attn.dead_region(layer), col_scale=scale))
        n += 1
    if fold:
        attn.head_gates = None
    return n


def _block_of(layer: nn.Module, block_size: Optional[int]) -> int:
    b = block_size if block_size is not None else getattr(layer, "block_size", None)
    if block_size is None and getattr(layer, "granularity", "block") != "block":
        b = None  # an element-masked MorphoLinear has no natural block
    if b is None:
        raise ValueError(f"{type(layer).__name__} has no block_size: pass block_size= "
                         f"(one of {BLOCK_SIZES})")
    return b


# ---------------------------------------------------------------------------- shrink


def _unit_keep(layer) -> torch.Tensor:
    """Output units of a neuron-masked layer that are not hard-pruned (σ > 0)."""
    return ~layer.pruned_units()


@torch.no_grad()
def _fold_rows(layer, keep: torch.Tensor, cols: torch.Tensor | None, fold: bool = True):
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


def _linear(w: torch.Tensor, b: torch.Tensor | None) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
        if b is not None:
            lin.bias.copy_(b)
    return lin


def _norm_rows(norm: nn.Module, keep: torch.Tensor, layer) -> nn.Module:
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


def shrink(model: nn.Module) -> nn.Sequential:
    """A plain, physically smaller dense network computing what a neuron-masked MorphoNet MLP
    or CNN computes: pruned units / channels (mask logit −inf) are removed with their rows,
    the next layer's matching input columns are removed, and the mask values of the kept units
    are folded into their weights and biases. Outputs are identical up to float rounding.

    Supported: `MorphoNetMLP` and `MorphoNetCNN` with ``mask_granularity="neuron"``, without
    active skip connections (a skip adds a pruned unit's input back, so the unit would not
    vanish) and with ``conv_groups=1``. The returned model is in the source model's
    train/eval mode; call ``.eval()`` for inference (dropout, batchnorm).
    """
    from .models import MorphoNetCNN, MorphoNetMLP

    if not isinstance(model, (MorphoNetMLP, MorphoNetCNN)):
        raise TypeError(f"shrink supports MorphoNetMLP and MorphoNetCNN, got "
                        f"{type(model).__name__}")
    cfg = model.config
    if cfg.mask_granularity != "neuron":
        raise ValueError(f"shrink needs mask_granularity='neuron' (whole units are removed), "
                         f"got {cfg.mask_granularity!r}; use to_block_sparse for block masks")
    if isinstance(model, MorphoNetMLP) and len(model.skip_gates):
        raise ValueError("shrink cannot remove units of layers with skip connections; train "
                         "with use_skip_connections=False (or widths that differ)")
    if isinstance(model, MorphoNetCNN) and cfg.conv_groups != 1:
        raise ValueError("shrink needs conv_groups=1")
    out = _shrink_cnn(model) if isinstance(model, MorphoNetCNN) else _shrink_mlp(model)
    return out.train(model.training)


def _shrink_mlp(model) -> nn.Sequential:
    mods: list[nn.Module] = []
    cols = None
    for i, layer in enumerate(model.layers[:-1]):
        keep = _unit_keep(layer)
        norm = model.norms[i]
        fold = isinstance(norm, nn.Identity)
        mods += [_linear(*_fold_rows(layer, keep, cols, fold)), _norm_rows(norm, keep, layer),
                 copy.deepcopy(model.act), copy.deepcopy(model.drop)]
        cols = keep
    mods.append(_linear(*_fold_rows(model.layers[-1], None, cols)))
    return nn.Sequential(*[m for m in mods if not isinstance(m, nn.Identity)])


def _shrink_cnn(model) -> nn.Sequential:
    mods: list[nn.Module] = [_Reshape(model.input_shape)]
    cols = None
    for i in range(model.n_convs):
        conv = model.layers[i]
        keep = _unit_keep(conv)
        post = model.conv_post[i]
        w, b = _fold_rows(conv, keep, cols, isinstance(post["norm"], nn.Identity))
        cls = nn.Conv1d if conv.dims == 1 else nn.Conv2d
        new = cls(w.shape[1], w.shape[0], conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, bias=b is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            new.weight.copy_(w)
            if b is not None:
                new.bias.copy_(b)
        mods += [new, _norm_rows(post["norm"], keep, conv), copy.deepcopy(post["act"])]
        if model._pool[i]:
            mods.append(_Pool())
        cols = keep
    mods.append(nn.Flatten())
    # the first linear layer reads (channel, position) features: keep the kept channels' ones
    with torch.no_grad():
        # eval: a training-mode probe would update the new batchnorms' running statistics
        probe = nn.Sequential(*[m for m in mods[:-1] if not isinstance(m, nn.Identity)]).eval()
        spatial = probe(torch.zeros(1, *model.input_shape)).shape[2:]
    per = int(torch.tensor(spatial).prod()) if len(spatial) else 1
    col_keep = cols.repeat_interleave(per)
    linears = model.layers[model.n_convs:]
    mods.append(copy.deepcopy(model.drop))
    for layer in linears[:-1]:
        keep = _unit_keep(layer)
        mods += [_linear(*_fold_rows(layer, keep, col_keep)), copy.deepcopy(model.act),
                 copy.deepcopy(model.drop)]
        col_keep = keep
    mods.append(_linear(*_fold_rows(linears[-1], None, col_keep)))
    return nn.Sequential(*[m for m in mods if not isinstance(m, nn.Identity)])


class _Reshape(nn.Module):
    """(B, …) → (B, *shape): accepts flat rows or already-shaped examples."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


class _Pool(nn.Module):
    """2× max-pool over the spatial dimensions (1-D or 2-D), as MorphoNetCNN does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .models import _max_pool

        return _max_pool(x)
