"""Structure decisions under data parallelism (``torch.distributed``): the one copy of the
group rule and of the reductions that every rank-consistent structure change uses.

Data-parallel replicas see different batches, so any score computed from data (gradients at
absent connections, activation statistics, mask values of replicas that drifted) differs from
rank to rank; ranking those local scores would make each replica prune or grow different
connections, and the replicas would no longer hold the same model. Every structure change
that takes a ``group=`` argument therefore reduces its scores over the group *before*
ranking, so every rank ranks the same numbers and takes the same decision
(`BlockSparseLinear.regrow`, `SparseLinear.grow` / `grow_top`, MorphoNet's pruning,
Structure Net's growth).

The rule for ``group`` (`resolve_group`):

- a process group (``torch.distributed.group.WORLD`` for plain DDP): scores are reduced over
  it; every rank of the group must make the same call (they are collectives);
- ``None``: rank-local (a layer that is not replicated, or a single process);
- ``"auto"`` (the default of every such call): rank-local when torch.distributed is not
  initialised or has one rank; with more ranks it refuses to guess (``RuntimeError``), since a
  silent rank-local decision would split the replicas.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

__all__ = ["group_all_equal", "group_mean", "group_reduce", "resolve_group"]


def resolve_group(group: Any, what: str = "regrow", unit: str = "blocks") -> Optional[Any]:
    """The process group a structure change agrees over, or None for a rank-local change (the
    rule is in the module docstring). ``what`` names the call and ``unit`` what it chooses,
    for the error messages. A group of one rank is rank-local (None)."""
    import torch.distributed as dist

    initialised = dist.is_available() and dist.is_initialized()
    if isinstance(group, str):
        if group != "auto":
            raise ValueError(f"group must be a process group, None or 'auto', got {group!r}")
        if initialised and dist.get_world_size() > 1:
            raise RuntimeError(
                f"torch.distributed is initialised with {dist.get_world_size()} ranks: pass "
                f"group=torch.distributed.group.WORLD (or the data-parallel group) so that every "
                f"replica {what}s the same {unit}, or group=None for a layer that is not "
                "replicated (rank-local layout)")
        return None
    if group is None:
        return None
    if not initialised:
        raise RuntimeError("group= was given but torch.distributed is not initialised")
    # new_group() hands a rank outside the group NON_GROUP_MEMBER (an int): refused below
    if not (isinstance(group, dist.ProcessGroup)
            or group is dist.GroupMember.NON_GROUP_MEMBER):
        raise TypeError(f"group must be a process group, None or 'auto', got "
                        f"{type(group).__name__}")
    if dist.get_rank(group) < 0:
        raise ValueError(f"this rank ({dist.get_rank()}) is not a member of the group given: "
                         f"call {what} with group= only on the group's ranks")
    return group if dist.get_world_size(group) > 1 else None


def group_reduce(t: Tensor, group: Any, op: str = "sum",
                 device: Optional[torch.device] = None) -> Tensor:
    """A copy of ``t`` (on ``device``, default ``t``'s) reduced over the ranks of ``group``
    with ``op`` in sum / min / max; floating tensors are reduced in fp32 (fp64 stays fp64),
    integer and bool tensors in int64 (bool comes back as bool: max = any, min = all). Every
    rank gets the same tensor (the same bits: one result of the collective)."""
    import torch.distributed as dist

    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    if op not in ops:
        raise ValueError(f"op must be one of {sorted(ops)}, got {op!r}")
    if t.is_floating_point():
        dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    else:
        dtype = torch.int64
    out = t.detach().to(device=device or t.device, dtype=dtype, copy=True)
    dist.all_reduce(out, op=ops[op], group=group)
    return out.bool() if t.dtype == torch.bool else out


def group_mean(t: Tensor, group: Any, device: Optional[torch.device] = None) -> Tensor:
    """fp32 (fp64) copy of ``t`` on ``device``, averaged over the ranks of ``group``."""
    import torch.distributed as dist

    return group_reduce(t, group, "sum", device).div_(dist.get_world_size(group))


def group_all_equal(t: Tensor, group: Any) -> bool:
    """Whether every rank of ``group`` holds the same ``t`` (shape and values, NaN equal to
    NaN): two reductions (max and min) of its length, then of its bits. The answer is the same
    on every rank."""
    n = torch.tensor([t.numel()], dtype=torch.int64, device=t.device)  # (NCCL: on the GPU)
    if not torch.equal(group_reduce(n, group, "max"), group_reduce(n, group, "min")):
        return False
    flat = t.detach().reshape(-1)
    if flat.is_floating_point():  # compare bit patterns: -0.0 / 0.0 and NaNs exactly
        flat = flat.double().view(torch.int64)
    else:
        flat = flat.long()
    return bool(torch.equal(group_reduce(flat, group, "max"), group_reduce(flat, group, "min")))
