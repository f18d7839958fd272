"""SparseLinear: a linear layer whose weight is an EdgeList plus one value per slot, executed by
morpho_kernels.sparse_linear (work ∝ live connections), with structural edits (grow / prune)
that keep optimizer state aligned with the edges."""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ..checks import check_fraction, check_int, check_real
from ..distributed import group_all_equal, group_mean, resolve_group
from ..formats import EdgeList
from ..ops.edges import EdgeUpdate, InsertReport, insert_connections, remove_connections
from ..ops.sparse_linear import dense_grad_at, sparse_linear


class SparseLinear(nn.Module):
    """``y = x Wᵀ + b`` with W stored as connections (CSR by destination) and their values.

    Args:
        in_features, out_features, bias, device, dtype: as ``nn.Linear``.
        density: fraction of the ``out × in`` connections present at start, chosen at random
            (ignored when ``edges`` is given).
        edges: an explicit EdgeList (its capacity sets the values' length).
        capacity: spare slots to reserve (at least the number of edges).
        growth_factor: when `grow` needs more slots than the capacity, the capacity becomes
            at least ``growth_factor`` times what it was (amortised growth: a run that keeps
            growing reallocates a logarithmic number of times, not at every event).

    Buffers ``row_ptr`` and ``col`` hold the structure (saved in the state dict); the parameter
    ``values`` has one entry per slot (spare slots are 0 and get gradient 0). Values start
    uniform in ±1/sqrt(in_features) like ``nn.Linear``.

    Set ``keep_for_growth = True`` to keep the last input and output gradient, for
    :meth:`dense_grad_at` (the gradient at absent connections, as RigL ranks them).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=None, density: float = 0.01, edges: Optional[EdgeList] = None,
                 capacity: Optional[int] = None, growth_factor: float = 2.0):
        super().__init__()
        self.growth_factor = check_real("growth_factor", growth_factor, 1)
        in_features = check_int("in_features", in_features, 0)
        out_features = check_int("out_features", out_features, 0)
        density = check_fraction("density", density)
        self.in_features, self.out_features = in_features, out_features
        if edges is None:
            n = round(density * in_features * out_features)
            keys = torch.randperm(in_features * out_features, device=device)[:n]
            edges = EdgeList.from_coo(keys % max(in_features, 1), keys // max(in_features, 1),
                                      in_features, out_features, capacity)
        elif (edges.in_features, edges.out_features) != (in_features, out_features):
            raise ValueError(f"edges are {edges.out_features}x{edges.in_features}, expected "
                             f"{out_features}x{in_features}")
        elif capacity is not None and capacity > edges.capacity:
            edges = EdgeList.from_coo(*edges.to_coo(), in_features, out_features, capacity)
        edges = edges.to(device) if device is not None else edges
        self.register_buffer("row_ptr", edges.row_ptr)
        self.register_buffer("col", edges.col)
        self._edges_cache: Optional[EdgeList] = edges
        self.values = nn.Parameter(torch.zeros(edges.capacity, device=device, dtype=dtype))
        self.bias = (nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype))
                     if bias else None)
        self.keep_for_growth = False
        self._x: Optional[Tensor] = None
        self._dy: Optional[Tensor] = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Values of live slots uniform in ±1/√in_features (as ``nn.Linear``), spare slots 0;
        the bias likewise."""
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features else 0.0
        with torch.no_grad():
            live = self.edges.dst_index() < self.out_features
            self.values.uniform_(-bound, bound).mul_(live)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    # -- structure
    @property
    def edges(self) -> EdgeList:
        """The EdgeList of the current buffers (cached; rebuilt after .to() or a state load)."""
        c = self._edges_cache
        if c is None or c.row_ptr is not self.row_ptr or c.col is not self.col:
            c = self._edges_cache = EdgeList(self.row_ptr, self.col, self.in_features,
                                             validate=False)
        return c

    @property
    def nnz(self) -> int:
        """Live connections (reads row_ptr[-1]: synchronises a GPU)."""
        return self.edges.nnz

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nnz={self.nnz}, capacity={self.col.numel()}, bias={self.bias is not None}")

    def forward(self, x: Tensor) -> Tensor:
        y = sparse_linear(x, self.edges, self.values, self.bias)
        if self.keep_for_growth and y.requires_grad:
            self._x = x.detach()
            y.register_hook(self._keep_grad)
        return y

    def _keep_grad(self, g: Tensor) -> None:
        self._dy = g.detach()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A saved layer may have grown: take its capacity before the shape check.
        col, values = state_dict.get(prefix + "col"), state_dict.get(prefix + "values")
        if col is not None and col.shape != self.col.shape:
            self.col = torch.empty_like(col, device=self.col.device)
        if values is not None and values.shape != self.values.shape:
            self.values.data = self.values.new_empty(values.shape)
        self._edges_cache = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- conversion
    @classmethod
    def from_linear(cls, linear: nn.Linear, density: float,
                    capacity: Optional[int] = None) -> SparseLinear:
        """Keep the ``density`` fraction of ``linear``'s weights of largest magnitude. Values and
        bias are copied (an edge list holds its own values, so a weight tied to another
        module is not shared by the result; `morpho_kernels.nn.convert_linears` converts a
        whole model and refuses tied layers by name)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        density = check_fraction("density", density)
        w = linear.weight.detach()
        n = round(density * w.numel())
        keep = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
        keep[torch.topk(w.abs().flatten(), n).indices] = True
        edges = EdgeList.from_dense(keep.view_as(w), capacity)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    device=w.device, dtype=w.dtype, edges=edges)
        with torch.no_grad():
            dst, src = keep.view_as(w).nonzero(as_tuple=True)  # same (dst, src) order as slots
            layer.values.zero_()
            layer.values[:n] = w[dst, src]
            if linear.bias is not None:
                layer.bias.copy_(linear.bias.detach())
        return layer

    def to_linear(self) -> nn.Linear:
        """A dense ``nn.Linear`` with the same outputs."""
        lin = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                        device=self.values.device, dtype=self.values.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.edges.to_dense(self.values.detach()))
            if self.bias is not None:
                lin.bias.copy_(self.bias.detach())
        return lin

    # -- structural edits
    def _apply_update(self, upd: EdgeUpdate, optimizer: Optional[torch.optim.Optimizer]) -> None:
        old = self.values
        new_values = upd.values.to(old.dtype)
        if new_values.shape == old.shape:  # same capacity: in place, the Parameter stays
            if optimizer is not None:
                _remap_state(optimizer.state.get(old), upd, old.numel())
            with torch.no_grad():
                old.data = new_values
                if old.grad is not None:
                    old.grad = upd.remap(old.grad)
        else:  # a new capacity: a new Parameter, swapped into the optimizer
            new = nn.Parameter(new_values, requires_grad=old.requires_grad)
            if old.grad is not None:
                new.grad = upd.remap(old.grad)
            if optimizer is not None:
                _swap_param(optimizer, old, new, upd)
            elif old.requires_grad:
                warnings.warn(
                    f"SparseLinear outgrew its capacity ({old.numel()} → {new.numel()} slots): "
                    f"its values are a new Parameter, and an optimizer holding the old one "
                    f"keeps training that; pass optimizer= to grow / reserve, or reserve the "
                    f"capacity before building the optimizer", stacklevel=3)
            self.values = new
        self.row_ptr, self.col = upd.edges.row_ptr, upd.edges.col
        self._edges_cache = upd.edges

    def reserve(self, capacity: int, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Make room for ``capacity`` connections (spare slots, values 0); nothing changes when
        the capacity is already that large. Like a growth beyond the capacity, this makes
        ``values`` a new Parameter: pass the optimizer that holds it."""
        capacity = check_int("capacity", capacity, 0)
        e = self.edges
        if capacity <= e.capacity:
            return
        pad = capacity - e.capacity
        col = torch.cat([e.col, e.col.new_zeros(pad)])
        edges = EdgeList(e.row_ptr, col, e.in_features, validate=False)
        old_to_new = torch.arange(e.nnz, device=e.device)
        values = torch.cat([self.values.detach(), self.values.new_zeros(pad)])
        self._apply_update(EdgeUpdate(edges, values, old_to_new,
                                      old_to_new.new_empty(0), None), optimizer)

    def grow(self, src: Tensor, dst: Tensor, init_values: Union[Tensor, float] = 0.0,
             max_fan_in: Optional[int] = None, max_fan_out: Optional[int] = None,
             optimizer: Optional[torch.optim.Optimizer] = None, *,
             group: Any = "auto") -> InsertReport:
        """Insert connections src → dst (see morpho_kernels.insert_connections); values, their
        gradient and the optimizer's per-value state (Adam/AdamW moments, SGD momentum) move
        with their edges, new slots start at ``init_values`` with zero state.

        Within the capacity, ``values`` keeps its Parameter and its shape. Beyond it, the
        capacity grows by ``growth_factor`` (at least to what the new edges need) and
        ``values`` becomes a new, longer Parameter, swapped into ``optimizer`` (its state
        moved along): pass the optimizer that holds ``values``, or it keeps training the old
        tensor. A graph built on the old values (the previous step's ``loss``, still held) is
        left on the old Parameter, so the next step's backward works.

        ``group`` (data-parallel replicas, `morpho_kernels.distributed.resolve_group`): a
        process group checks that every rank of it grows the same connections with the same
        values (a ``RuntimeError`` on every rank, before anything changes, when they differ:
        the choice must come from scores reduced over the group, as `grow_top` does); None:
        rank-local, no check; "auto" (default): None without torch.distributed, an error with
        more than one rank.
        """
        group = resolve_group(group, "grow", "connections")
        if group is not None:
            _check_same_growth(src, dst, init_values, group, self.values.device)
        if isinstance(init_values, Tensor):
            init_values = init_values.to(self.values.dtype)
        e = self.edges
        need = e.nnz + int(torch.as_tensor(src).numel())  # at most: duplicates are rejected
        if need > e.capacity:
            self.reserve(max(need, math.ceil(e.capacity * self.growth_factor)), optimizer)
        upd = insert_connections(self.edges, src, dst, init_values, max_fan_in, max_fan_out,
                                 values=self.values.detach())
        self._apply_update(upd, optimizer)
        return upd.report

    def grow_top(self, k: int, scores: Optional[Tensor] = None, *,
                 init_values: Union[Tensor, float] = 0.0, max_fan_in: Optional[int] = None,
                 max_fan_out: Optional[int] = None,
                 optimizer: Optional[torch.optim.Optimizer] = None,
                 group: Any = "auto") -> InsertReport:
        """Grow the ``k`` absent connections with the largest scores (fewer when fewer are
        absent); ties go to the lower (dst, src) position. ``scores``: an (out_features,
        in_features) tensor, or None for RigL's |∂L/∂W| at the absent connections from the last
        forward and backward (``keep_for_growth``). The rest as `grow`.

        ``group`` (data-parallel replicas, `morpho_kernels.distributed.resolve_group`): the
        scores (the signed gradient, before its magnitude is taken: the gradient of the global
        batch) are averaged over the group's ranks before ranking, so every rank grows the same
        connections; every rank of the group must call. None: rank-local; "auto" (default):
        None without torch.distributed, an error with more than one rank.
        """
        group = resolve_group(group, "grow", "connections")
        k = check_int("k", k, 0)
        shape = (self.out_features, self.in_features)
        absent = self.edges.to_dense() == 0  # (out, in)
        dst, src = absent.nonzero(as_tuple=True)
        if scores is None:
            if self._x is None or self._dy is None:
                raise RuntimeError("grow_top without scores needs keep_for_growth = True and a "
                                   "forward and backward pass first")
            score = dense_grad_at(self._x, self._dy, src, dst).float()  # (absent,)
        else:
            if not isinstance(scores, Tensor) or tuple(scores.shape) != shape:
                got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
                raise ValueError(f"scores must be a tensor of shape {shape}, got {got}")
            score = scores.detach()[dst, src].float()
        if group is not None:  # every rank ranks the same numbers
            score = group_mean(score, group)
        if scores is None:
            score = score.abs()
        # stable: equal scores keep the (dst, src) order of nonzero, so ties agree on every rank
        pick = torch.argsort(score, descending=True, stable=True)[:min(k, score.numel())]
        return self.grow(src[pick], dst[pick], init_values, max_fan_in, max_fan_out, optimizer,
                         group=None)

    def prune(self, mask_or_indices: Tensor,
              optimizer: Optional[torch.optim.Optimizer] = None) -> int:
        """Remove connections by slot (bool mask, True = remove, or slot indices); returns how
        many were removed. The capacity (values' length) is kept."""
        upd = remove_connections(self.edges, mask_or_indices, values=self.values.detach())
        self._apply_update(upd, optimizer)
        return upd.removed

    def dense_grad_at(self, src: Tensor, dst: Tensor) -> Tensor:
        """∂L/∂W at (dst[i], src[i]) from the last forward / backward (``keep_for_growth``)."""
        if self._x is None or self._dy is None:
            raise RuntimeError("dense_grad_at needs keep_for_growth = True and a forward and "
                               "backward pass first")
        return dense_grad_at(self._x, self._dy, src, dst)


def _check_same_growth(src, dst, init_values, group, device: torch.device) -> None:
    """RuntimeError (on every rank alike) unless every rank of ``group`` passes the same
    connections and initial values to `SparseLinear.grow`. Compared on the layer's
    ``device`` (NCCL reduces CUDA tensors only; a float ``init_values`` is a CPU tensor)."""
    parts = {"src": torch.as_tensor(src, device=device),
             "dst": torch.as_tensor(dst, device=device),
             "init_values": torch.as_tensor(init_values, device=device)}
    differ = [name for name, t in parts.items() if not group_all_equal(t, group)]
    if differ:
        raise RuntimeError(
            f"SparseLinear.grow with group=: the ranks pass different {', '.join(differ)}, so "
            "the replicas would grow different connections; rank scores reduced over the "
            "group (e.g. grow_top(k, group=...)), or pass group=None for a layer that is not "
            "replicated")


def _remap_state(state: Optional[dict], upd: EdgeUpdate, old_capacity: int) -> None:
    """Move an optimizer's per-value state tensors (moments) with their edges, in place in the
    state dict; new slots start at 0."""
    for key, t in list((state or {}).items()):
        if isinstance(t, Tensor) and t.shape == (old_capacity,):
            state[key] = upd.remap(t)


def _swap_param(optimizer: torch.optim.Optimizer, old: nn.Parameter, new: nn.Parameter,
                upd: EdgeUpdate) -> None:
    """Put ``new`` where ``old`` is in the optimizer's groups, with ``old``'s state moved
    along; a ValueError when the optimizer does not hold ``old``."""
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if p is old:
                group["params"][i] = new
                state = optimizer.state.pop(old, None)
                if state is not None:
                    _remap_state(state, upd, old.numel())
                    optimizer.state[new] = state
                return
    raise ValueError("optimizer does not hold this layer's values: pass the optimizer that "
                     "trains them")
