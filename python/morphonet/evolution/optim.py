"""Keeping an optimizer true to a network whose structure changes (the seed's evolution loop
kept the optimizer of the network before the change, so grown networks never trained).

Two pieces:

* `replace_parameter(optimizer, old, new)`: ``new`` takes ``old``'s place in its group and
  ``old``'s per-element state (Adam's moments, SGD's momentum) is copied into the leading
  elements of ``new``'s, the rest zero (the edits that enlarge a tensor keep the old entries
  first). Scalars (Adam's ``step``) are kept.
* `sync_optimizer(optimizer, groups)`: after an edit, the optimizer holds exactly the live
  parameters, one group per name (a network's `parameter_groups`): surviving parameters keep
  their group and state, new parameters join their named group (a new name gets a new group
  with the hyperparameters of the group before it), the state of dropped parameters is
  deleted. New parameters have no state, which Adam / SGD read as zero moments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor, nn

from ..checks import check_instance

__all__ = ["build_optimizer", "optimizer_report", "replace_parameter", "sync_optimizer"]


def _grow_like(t: Tensor, old_shape: torch.Size, new: Tensor) -> Tensor:
    out = torch.zeros_like(new)
    out[tuple(slice(0, n) for n in old_shape)] = t
    return out


def replace_parameter(optimizer: torch.optim.Optimizer, old: nn.Parameter,
                      new: nn.Parameter) -> None:
    """Put ``new`` where ``old`` is in the optimizer, with ``old``'s state carried (module
    docstring); nothing happens when the optimizer does not hold ``old``.

    Not `morpho_kernels.nn.sparse._swap_param`, which does the same swap for one edge
    list's ``values`` after its own edit: that one remaps the state by the edit's
    `EdgeUpdate` (slots moved, dropped, inserted) and raises when the optimizer lacks
    ``old``. Here the edits enlarge a tensor with the old entries first (biases of widened
    stages, resized edge lists) and there is no `EdgeUpdate`, and a parameter made before
    any optimizer is not an error (`sync_optimizer` adds it later)."""
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if p is old:
                group["params"][i] = new
                state = optimizer.state.pop(old, None)
                if state:
                    optimizer.state[new] = {
                        k: (_grow_like(v, old.shape, new) if isinstance(v, Tensor)
                            and v.shape == old.shape else v) for k, v in state.items()}
                return


def sync_optimizer(optimizer: torch.optim.Optimizer,
                   groups: Sequence[tuple[str, Sequence[nn.Parameter]]]) -> dict[str, int]:
    """Make ``optimizer`` hold exactly the parameters of ``groups`` (module docstring).
    Returns counts: ``added`` (parameters new to the optimizer), ``removed`` (dropped),
    ``kept``."""
    check_instance("optimizer", optimizer, torch.optim.Optimizer)
    by_name = {g.get("name"): g for g in optimizer.param_groups}
    before = {p for g in optimizer.param_groups for p in g["params"]}
    new_groups, template = [], optimizer.param_groups[0]
    for name, params in groups:
        g = by_name.get(name)
        if g is None:
            g = {k: v for k, v in template.items() if k != "params"}
            g["name"] = name
        else:
            template = g
        g["params"] = [p for p in params if p.requires_grad]
        new_groups.append(g)
    optimizer.param_groups[:] = new_groups
    live = {p for g in new_groups for p in g["params"]}
    for p in list(optimizer.state):
        if p not in live:
            del optimizer.state[p]
    return {"added": len(live - before), "removed": len(before - live),
            "kept": len(live & before)}


def build_optimizer(groups: Sequence[tuple[str, Sequence[nn.Parameter]]], name: str = "adam",
                    lr: float = 1e-3, weight_decay: float = 0.0,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    """An optimizer (``"adam"``, ``"adamw"`` or ``"sgd"``) with one named group per entry of
    ``groups`` and ``initial_lr`` recorded in each (the learning-rate rules scale it)."""
    gs = [{"params": list(ps), "name": n, "initial_lr": lr} for n, ps in groups]
    if name == "adam":
        return torch.optim.Adam(gs, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(gs, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(gs, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adam', 'adamw' or 'sgd', got {name!r}")


def optimizer_report(optimizer: Optional[torch.optim.Optimizer],
                     model: nn.Module) -> dict[str, int]:
    """How far ``optimizer`` is from ``model``'s trainable parameters: ``missing`` (live
    parameters it does not hold), ``stale`` (parameters it holds that the model no longer
    has); both 0 when it is true."""
    live = {p for p in model.parameters() if p.requires_grad}
    held = set() if optimizer is None else {p for g in optimizer.param_groups
                                            for p in g["params"]}
    return {"missing": len(live - held), "stale": len(held - live)}
