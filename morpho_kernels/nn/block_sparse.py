"""BlockSparseLinear: a linear layer whose weight lives as live b×b blocks of a fixed-capacity
`BlockSparseLayout`, executed by `morpho_kernels.block_sparse_linear` (work ∝ live blocks), with
an in-place, sync-free regrow (and its CUDA-graph replay, `GraphedRegrow`)."""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from ..checks import check_fraction, check_int
from ..distributed import group_mean, resolve_group
from ..formats import BlockSparseLayout, check_block_size
from ..ops.block_sparse_linear import apply_block_sparse

__all__ = ["BlockSparseLinear", "GraphedRegrow"]

_INDEX_BUFFERS = ("rows", "cols", "row_ptr", "row_order", "col_ptr", "col_order")


def _ceil_to(v: int, b: int) -> int:
    return -(-v // b) * b


class BlockSparseLinear(nn.Module):
    """``nn.Linear`` whose weight lives as b×b blocks: ``y = x @ Wᵀ + b`` with W block-sparse.

    The live blocks are a `BlockSparseLayout` of fixed capacity; the values are one parameter
    ``values`` (capacity, b, b) and the layout's index tensors are buffers (in the state dict).
    `regrow` changes which blocks live without reallocating either, so optimizers, captured
    graphs and torch.compile stay valid. Build one with `from_linear`, or directly with a random
    layout of the given block density (values initialised like ``nn.Linear``).

    Layers whose sizes are not multiples of ``block_size`` are padded with zero rows / columns
    when ``pad=True`` (inputs are zero-padded and outputs sliced on every call), else rejected.

    Args:
        in_features, out_features, bias, device, dtype: as ``nn.Linear``.
        block_size: 16, 32, 64 or 128 (128 for training on Hopper GPUs, 32 for CPU inference).
        density: fraction of blocks live, in (0, 1] (at least one block).
        pad: allow sizes that are not multiples of ``block_size``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 block_size: int = 64, density: float = 1.0, pad: bool = False, device=None,
                 dtype=None, *, _layout: BlockSparseLayout | None = None):
        super().__init__()
        in_features = check_int("in_features", in_features, 1)
        out_features = check_int("out_features", out_features, 1)
        block_size = check_block_size(block_size)
        density = check_fraction("density", density, lo_open=True)
        self.in_features, self.out_features = in_features, out_features
        self.block_size = block_size
        if not pad and (in_features % block_size or out_features % block_size):
            raise ValueError(
                f"in_features={in_features} and out_features={out_features} must be multiples "
                f"of block_size={block_size}; pass pad=True to zero-pad the layer, or choose a "
                "smaller block")
        shape = (_ceil_to(out_features, block_size), _ceil_to(in_features, block_size))
        if _layout is None:
            nbr, nbc = shape[0] // block_size, shape[1] // block_size
            live = max(1, round(density * nbr * nbc))
            keys = torch.randperm(nbr * nbc, device=device)[:live]
            _layout = BlockSparseLayout(keys // nbc, keys % nbc, shape, block_size)
        elif _layout.shape != shape or _layout.block_size != block_size:
            raise ValueError(f"layout {_layout} does not fit a padded shape {shape}")
        for name, t in zip(_INDEX_BUFFERS, _layout.tensors()):
            self.register_buffer(name, t)
        b = block_size
        self.values = nn.Parameter(torch.empty(_layout.capacity, b, b, device=device,
                                               dtype=dtype))
        self.bias = (nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
                     if bias else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's initialisation: U(-1/√in, 1/√in) for values and bias."""
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.values, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def padded_shape(self) -> tuple[int, int]:
        """(out, in) rounded up to whole blocks (the layout's shape)."""
        b = self.block_size
        return _ceil_to(self.out_features, b), _ceil_to(self.in_features, b)

    @property
    def layout(self) -> BlockSparseLayout:
        """The layout over this module's index buffers (changes to it change the module)."""
        return BlockSparseLayout.wrap(*(getattr(self, n) for n in _INDEX_BUFFERS),
                                      self.padded_shape, self.block_size)

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: Tensor | None = None,
                    density: float | None = None, block_size: int = 64,
                    pad: bool = False) -> BlockSparseLinear:
        """Convert an ``nn.Linear``: keep the blocks of ``mask`` (an element mask of the
        weight's shape, a block live when any element is, or a (out/b, in/b) block mask), or
        the ``density`` fraction of blocks of largest L2 norm. Kept values are copied (masked
        elements inside a kept block become zero); the bias is copied. The block format holds
        its own values, so a weight tied to another module is not shared by the result:
        `morpho_kernels.nn.convert_linears` (plain layers) and
        `morphonet.masks.to_block_sparse` (masked ones) convert a whole model and refuse tied
        layers by name."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        if (mask is None) == (density is None):
            raise ValueError("give exactly one of mask= (which blocks to keep) or density= "
                             "(fraction of blocks kept by magnitude)")
        n, k = linear.out_features, linear.in_features
        b = check_block_size(block_size)
        if not pad and (n % b or k % b):
            raise ValueError(f"nn.Linear({k}, {n}) is not a multiple of block_size={b}; pass "
                             "pad=True to zero-pad it, or choose a smaller block")
        w = linear.weight.detach()
        shape = (_ceil_to(n, b), _ceil_to(k, b))
        wp = w.new_zeros(shape)
        wp[:n, :k] = w
        if mask is not None:
            if not isinstance(mask, Tensor):
                raise TypeError(f"mask must be a Tensor, got {type(mask).__name__}")
            mask = mask.to(w.device)
            if mask.shape == (n, k):
                mp = torch.zeros(shape, dtype=torch.bool, device=w.device)
                mp[:n, :k] = mask != 0
                wp = wp * mp
                layout = BlockSparseLayout.from_mask(mp, b)
            elif mask.shape == (shape[0] // b, shape[1] // b):
                layout = BlockSparseLayout.from_block_mask(mask != 0, b)
            else:
                raise ValueError(f"mask shape {tuple(mask.shape)} must be the weight's {(n, k)} "
                                 f"or the block grid's {(shape[0] // b, shape[1] // b)}")
            if layout.capacity == 0:
                raise ValueError("mask keeps no block: a BlockSparseLinear needs at least one")
            values = layout.gather(wp)
        else:
            layout, values = BlockSparseLayout.from_dense(wp, b, density=density)
        out = cls(k, n, bias=linear.bias is not None, block_size=b, pad=pad, device=w.device,
                  dtype=w.dtype, _layout=layout)
        with torch.no_grad():
            out.values.copy_(values)
            if linear.bias is not None:
                out.bias.copy_(linear.bias)
        return out

    def to_linear(self) -> nn.Linear:
        """A dense ``nn.Linear`` with the same function (dead blocks as zeros)."""
        v = self.values
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=v.device, dtype=v.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.dense_weight())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def dense_weight(self) -> Tensor:
        """(out_features, in_features) dense weight (a copy; not differentiable)."""
        with torch.no_grad():
            return self.layout.to_dense(self.values)[: self.out_features, : self.in_features]

    def density(self) -> float:
        """Fraction of the (padded) weight's blocks that are live."""
        return self.layout.density()

    def regrow(self, drop: int, grow_scores: Tensor, optimizer: torch.optim.Optimizer | None = None,
               drop_scores: Tensor | None = None, *, group="auto") -> Tensor:
        """Drop the ``drop`` live blocks of smallest magnitude (or ``drop_scores``) and grow the
        ``drop`` dead blocks of highest ``grow_scores`` (an (out/b, in/b) tensor, e.g. |dense
        gradient| summed per block) with zero values, in place and without a host sync.

        With ``optimizer``, every state tensor of ``values`` shaped like it (Adam / AdamW
        ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``; SGD ``momentum_buffer``) is zeroed at
        the regrown slots, so old moments never push the new blocks. Returns the slots changed.

        Data-parallel training (``torch.distributed``): every replica must change its layout
        the same way, or the replicas silently stop computing the same function (DDP would
        even broadcast rank 0's index buffers over the others' at the next forward while each
        rank zeroed its own slots). ``group`` says over which ranks to agree:

        - a process group (``torch.distributed.group.WORLD`` for plain DDP): ``grow_scores``
          and the drop scores are averaged over its ranks (one all-reduce each) before
          ranking, so every rank picks the same blocks. Every rank of the group must call
          ``regrow`` with the same ``drop``.
        - ``None``: rank-local, no collective (layers that are not replicated).
        - ``"auto"`` (default): rank-local when torch.distributed is not initialised or has
          one rank; otherwise a ``RuntimeError`` asking for one of the two above, raised
          before anything changes.
        """
        layout = self.layout
        drop = layout.check_regrow(self.values.data, drop, grow_scores, drop_scores)
        group = _regrow_group(group)
        if group is not None and drop > 0:
            grow_scores = _group_mean(grow_scores, group, self.values.device)
            drop_scores = _group_mean(layout.block_norms(self.values.data)
                                      if drop_scores is None else drop_scores,
                                      group, self.values.device)
        moments = []
        if optimizer is not None:
            state = optimizer.state.get(self.values, {})
            moments = [v for v in state.values()
                       if isinstance(v, Tensor) and v.shape == self.values.shape]
        # one zeroing launch for the values and the moments on CUDA (morpho_kernels.ops.regrow)
        return layout.regrow(self.values.data, drop, grow_scores, drop_scores,
                             also_zero=moments)

    def forward(self, x: Tensor) -> Tensor:
        n, k = self.padded_shape
        # checked on every path: the kernels index x by the layout's columns
        if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[-1] != self.in_features:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be a tensor (*, in_features={self.in_features}), got {got}")
        index = tuple(getattr(self, name) for name in _INDEX_BUFFERS)
        if (n, k) == (self.out_features, self.in_features):
            return apply_block_sparse(x, self.values, index, n, self.bias)
        xp = torch.nn.functional.pad(x, (0, k - self.in_features))
        y = apply_block_sparse(xp, self.values, index, n, None)[..., : self.out_features]
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, block_size={self.block_size}, "
                f"blocks={self.values.shape[0]}, density={self.density():.3f}")


def _regrow_group(group):
    """The process group a regrow agrees over, or None for a rank-local regrow (see
    `BlockSparseLinear.regrow`; the rule lives in `morpho_kernels.distributed`)."""
    return resolve_group(group, "regrow", "blocks")


_group_mean = group_mean  # (the name this module used before the helpers moved)


class GraphedRegrow:
    """`BlockSparseLinear.regrow` captured once into a CUDA graph and replayed.

    An eager regrow is three Triton kernels on a GPU (``morpho_kernels.ops.regrow``; the ATen
    path it replaced was ~40), plus the host work of checks and launches; because `regrow`
    never synchronises with the host, the whole sequence can be captured for a fixed ``drop``
    and replayed with one launch. Each call copies ``grow_scores`` into the graph's static
    input, replays, and returns the (``drop``,) slots that changed (a static tensor,
    overwritten by the next call).
    The result equals ``layer.regrow(drop, grow_scores, optimizer)``: drops by the L2 norm of
    the values, grows the highest scores with zero values, zeroes the optimizer moments of the
    regrown slots.

    Requirements, checked here: a CUDA layer; with ``optimizer``, its per-value state must
    already exist (take one step first). The graph holds the addresses of the layer's values,
    index buffers and optimizer state: rebuild it after anything that reallocates them
    (``load_state_dict`` of the optimizer, ``.to()``, a new optimizer). The warm-up needed
    before capture runs on a copy of the layer, so constructing this changes nothing.

    ``group`` is `BlockSparseLinear.regrow`'s: with a process group, each call averages
    ``grow_scores`` over its ranks (one all-reduce, outside the graph) before the replay. The
    drop scores (the values' norms) are not reduced inside the graph: under DDP the replicas'
    values are identical, so every rank drops the same blocks.
    """

    def __init__(self, layer: BlockSparseLinear, drop: int,
                 optimizer: torch.optim.Optimizer | None = None, *, group="auto"):
        if not isinstance(layer, BlockSparseLinear):
            raise TypeError(f"layer must be a BlockSparseLinear, got {type(layer).__name__}")
        grid = layer.layout.grid
        n_blocks = grid[0] * grid[1]
        capacity = layer.values.shape[0]
        # at most every live block, and as many as there are dead blocks to grow
        drop = check_int("drop", drop, 1, min(capacity, n_blocks - capacity))
        if optimizer is not None:
            if not any(p is layer.values for g in optimizer.param_groups for p in g["params"]):
                raise ValueError("optimizer does not hold layer.values")
            state = optimizer.state.get(layer.values, {})
            if not any(isinstance(v, Tensor) and v.shape == layer.values.shape
                       for v in state.values()) and not _stateless(optimizer):
                raise ValueError("the optimizer has no state for layer.values yet: take one "
                                 "optimizer step before capturing the regrow")
        dev = layer.values.device
        if dev.type != "cuda":
            raise ValueError(f"GraphedRegrow needs a CUDA layer (CUDA graphs); the layer is on "
                             f"{dev}: call layer.regrow(...) there")
        self.group = _regrow_group(group)
        self.layer, self.drop, self.optimizer = layer, drop, optimizer
        self.scores = torch.zeros(grid, device=dev, dtype=torch.float32)
        # warm up (lazy kernel initialisation) on a side stream, on a copy: a regrow changes
        # the layout, and constructing this object must not
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            _warm_up_regrow(layer, drop, self.scores, optimizer)
        torch.cuda.current_stream(dev).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.slots = layer.regrow(drop, self.scores, optimizer=optimizer, group=None)

    def __call__(self, grow_scores: Tensor) -> Tensor:
        """Regrow with ``grow_scores`` ((out/b, in/b)); returns the changed slots."""
        if not isinstance(grow_scores, Tensor) or grow_scores.shape != self.scores.shape:
            raise ValueError(f"grow_scores must be a tensor of shape {tuple(self.scores.shape)}")
        if self.group is not None:
            grow_scores = _group_mean(grow_scores, self.group, self.scores.device)
        self.scores.copy_(grow_scores)
        self.graph.replay()
        return self.slots


def _warm_up_regrow(layer: BlockSparseLinear, drop: int, scores: Tensor,
                    optimizer: torch.optim.Optimizer | None) -> None:
    """The regrow `GraphedRegrow` captures, run once on copies of the layer and of the
    optimizer moments it zeroes: every kernel the capture launches (the zeroing kernel is
    specialised on how many tensors it zeroes and their dtypes) is then compiled and loaded,
    since loading a Triton kernel while a stream captures fails ("operation not permitted when
    stream is capturing")."""
    scratch = copy.deepcopy(layer)
    moments = []
    if optimizer is not None:
        moments = [v.detach().clone() for v in optimizer.state.get(layer.values, {}).values()
                   if isinstance(v, Tensor) and v.shape == layer.values.shape]
    scratch.layout.regrow(scratch.values.data, drop, scores, also_zero=moments)


def _stateless(optimizer: torch.optim.Optimizer) -> bool:
    """Plain SGD without momentum keeps no per-parameter tensors."""
    return isinstance(optimizer, torch.optim.SGD) and not any(
        g.get("momentum", 0) for g in optimizer.param_groups)
