"""What training recipes need to know about the parameters of sparse layers.

- `mask_parameters` / `param_groups`: mask logits (and head gates) must not be weight-decayed.
  Decay pulls every logit toward 0, i.e. every mask value toward 0.5, undoing what the mask
  learned (a logit of 6.0 falls to 5.80 in 300 AdamW steps at lr 1e-3, weight decay 0.1, from
  the decay alone). Common recipes decay every parameter with ``dim() >= 2``, which includes
  element and block mask logits: build the groups with `param_groups` instead.
  `morphonet.loop.TrainLoop` warns when an optimizer decays a mask logit.
- `tied_with`: which other modules share a module's parameters (weight tying), so that a
  converter that cannot keep a tie (block-sparse values, edge lists) refuses it by name;
  `convert_linears` converts a whole model's ``nn.Linear`` layers and does exactly that.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, Optional

from torch import nn

from ..checks import check_instance, check_real

__all__ = ["convert_linears", "mask_parameters", "param_groups", "tied_with"]


def mask_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every mask logit of ``model``: the ``mask_logits`` Parameter of each submodule that has
    one (learned-mask layers, attention head gates), each once."""
    check_instance("model", model, nn.Module)
    out, seen = [], set()
    for m in model.modules():
        p = getattr(m, "mask_logits", None)
        if isinstance(p, nn.Parameter) and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def param_groups(model: nn.Module, weight_decay: float = 0.01,
                 **group_options: Any) -> list[dict[str, Any]]:
    """Optimizer parameter groups with weight decay only where it belongs: weights (dim >= 2)
    decay; biases, norm parameters, skip gates and every mask logit (`mask_parameters`) do
    not. ``group_options`` (e.g. ``lr=``) go into both groups. Shared (tied) parameters are
    listed once::

        torch.optim.AdamW(param_groups(model, weight_decay=0.1), lr=3e-4)
    """
    check_instance("model", model, nn.Module)
    weight_decay = check_real("weight_decay", weight_decay, 0)
    masks = {id(p) for p in mask_parameters(model)}
    decay, no_decay = [], []
    for p in model.parameters():  # each Parameter once, ties included
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in masks else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, **group_options},
            {"params": no_decay, "weight_decay": 0.0, **group_options}]


def tied_with(model: nn.Module, name: str) -> dict[str, list[str]]:
    """For the submodule ``name`` of ``model``: each of its parameters (by local name) that a
    module outside it also holds, with the other holders' qualified names
    (``{"weight": ["tok_emb.weight"]}``); empty when nothing is tied."""
    check_instance("model", model, nn.Module)
    if not name:
        raise ValueError("name must name a submodule of model (ties are between modules)")
    module = model.get_submodule(name)
    holders: dict[int, list[str]] = {}
    for mname, m in model.named_modules(remove_duplicate=False):
        for pname, p in m.named_parameters(recurse=False):
            holders.setdefault(id(p), []).append(f"{mname}.{pname}" if mname else pname)
    out = {}
    for pname, p in module.named_parameters(remove_duplicate=False):
        others = sorted({h for h in holders.get(id(p), []) if not h.startswith(f"{name}.")})
        if others:
            out[pname] = others
    return out


def convert_linears(model: nn.Module, convert: Callable[[nn.Linear], nn.Module],
                    names: Optional[Sequence[str]] = None, inplace: bool = False) -> nn.Module:
    """``model`` (a deep copy unless ``inplace``) with every ``nn.Linear`` (or those named in
    ``names``) replaced by ``convert(layer)``, e.g.
    ``lambda l: BlockSparseLinear.from_linear(l, density=0.1, block_size=64)``.

    A layer whose weight or bias is tied to another module (a language model's head and its
    token embedding) is converted only when the result holds the very same Parameter
    (`MaskedLinear.from_linear` does); otherwise a ``ValueError`` names both sides before
    anything is replaced: a block-sparse or edge-list layer holds its own values, so the
    conversion would silently untie them."""
    check_instance("model", model, nn.Module)
    if not callable(convert):
        raise TypeError(f"convert must be callable, got {type(convert).__name__}")
    out = model if inplace else copy.deepcopy(model)  # a deep copy keeps ties as ties
    linears = {n: m for n, m in out.named_modules() if isinstance(m, nn.Linear) and n}
    if names is not None:
        unknown = sorted(set(names) - set(linears))
        if unknown:
            raise ValueError(f"names {unknown} are not nn.Linear layers of the model (its "
                             f"linear layers: {sorted(linears)})")
        linears = {n: linears[n] for n in names}
    new = {}
    for name, lin in linears.items():
        new[name] = convert(lin)
        for pname, others in tied_with(out, name).items():
            if getattr(new[name], pname, None) is not getattr(lin, pname):
                raise ValueError(
                    f"{name}.{pname} is tied to {', '.join(others)} (the same tensor), and "
                    f"the converted {type(new[name]).__name__} does not hold it: the tie would "
                    f"be lost; leave {name} out (names=...) or untie it first")
    for name, mod in new.items():
        parent, _, child = name.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, child, mod)
    return out
