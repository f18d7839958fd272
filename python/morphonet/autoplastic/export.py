"""The exact static export of an `AutoplasticNet`: the gated network in eval mode turned into
an ordinary one that computes the same function (within float rounding, ≤ 1e-5 relative) with
what the gates removed physically gone.

For each block, with its deterministic P, C and α:

- P = 0 (or every C = 0): the branch is gone. A block with an identity shortcut is removed
  altogether: its input is the output of a ReLU (the stem's or the block before's), so
  ReLU(x + 0) = x. A block that widens or strides keeps its shortcut: ReLU(shortcut(x)).
- C_c = 0: output channel c of the branch is gone (the last conv's and the attention
  projection's row c and their norms' entries); the branch writes its live channels into the
  shortcut's with ``index_add``.
- α = 0 or α = 1 (saturated, `gates.MixGate`): the conv or the attention branch is gone.
- Everything else is folded: P · C_c · α into the conv branch's last norm (its weight and
  bias scale by it: BN(z)·g = (z − μ)/σ · (γ g) + β g) and P · C_c · (1 − α) into the
  attention's.

`StaticAutoplasticNet.macs` counts the export's cost with the same functions as
`AutoplasticNet.macs`; `measure_latency` times a forward pass on the CPU.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_instance, check_int
from ..timing import time_models
from .models import (
    AutoplasticNet,
    Backbone,
    ConvBranch,
    SpatialSelfAttentionLite,
    out_size,
    shortcut_macs,
)

__all__ = ["StaticAutoplasticNet", "StaticBlock", "export_static", "measure_latency",
           "reinitialise"]


class StaticBlock(nn.Module):
    """ReLU(shortcut(x) + [conv(x)] + [attention(x)]) with the gates folded in; the branches
    write their ``index`` channels (all when ``index`` is None) of the block's ``out_ch``."""

    def __init__(self, out_ch: int, stride: int, shortcut: Optional[nn.Module],
                 conv: Optional[ConvBranch], attn: Optional[SpatialSelfAttentionLite],
                 index: Optional[Tensor]):
        super().__init__()
        self.out_ch, self.stride = out_ch, stride
        self.shortcut, self.conv, self.attn = shortcut, conv, attn
        self.register_buffer("index", index)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        y = None
        if self.conv is not None:
            y = self.conv(x)
        if self.attn is not None:
            a = self.attn(x)
            y = a if y is None else y + a
        if y is None:
            return F.relu(identity)
        if self.index is None:
            return F.relu(identity + y)
        return F.relu(identity.index_add(1, self.index, y))

    def macs(self, spatial: tuple[int, ...]) -> int:
        """MACs per example for an input of size ``spatial``."""
        total = shortcut_macs(self.shortcut, spatial)
        if self.conv is not None:
            total += self.conv.macs(spatial)
        if self.attn is not None:
            total += self.attn.macs(spatial)
        return total


class StaticAutoplasticNet(Backbone):
    """The export: stem, `StaticBlock` s, global average pooling, linear head."""

    def __init__(self, stem: nn.Module, blocks: Sequence[StaticBlock], head: nn.Linear,
                 dims: int, in_channels: int):
        super().__init__()
        self.stem, self.blocks, self.head = stem, nn.ModuleList(blocks), head
        self.dims, self.in_channels = dims, in_channels

    def macs(self, input_shape: Sequence[int]) -> int:
        """MACs per example for one example of ``input_shape`` (C, *S)."""
        s = tuple(int(n) for n in input_shape[1:])
        stem = self.stem[0]
        total = stem.in_channels * stem.out_channels * 3 ** self.dims * _prod(s)
        for b in self.blocks:
            total += b.macs(s)
            s = out_size(s, b.stride)
        return total + self.head.in_features * self.head.out_features

    def describe(self) -> str:
        """One line per block: its branches and live channels."""
        lines = []
        for i, b in enumerate(self.blocks):
            parts = [n for n, m in (("conv", b.conv), ("attention", b.attn)) if m is not None]
            live = b.out_ch if b.index is None else int(b.index.numel())
            lines.append(f"block {i}: {' + '.join(parts) or 'shortcut only'}, "
                         f"{live}/{b.out_ch} channels written, stride {b.stride}")
        return "\n".join(lines)


def _prod(s: tuple[int, ...]) -> int:
    out = 1
    for n in s:
        out *= n
    return out


@torch.no_grad()
def _slice_out(conv: nn.Module, norm: nn.Module, keep: Tensor, scale: Tensor) -> None:
    """Keep output channels ``keep`` of ``conv`` and its ``norm``, the norm's affine scaled
    by ``scale`` (of the kept channels), in place."""
    conv.weight = nn.Parameter(conv.weight[keep].clone())
    conv.out_channels = int(keep.numel())
    norm.weight = nn.Parameter(norm.weight[keep] * scale)
    norm.bias = nn.Parameter(norm.bias[keep] * scale)
    norm.running_mean = norm.running_mean[keep].clone()
    norm.running_var = norm.running_var[keep].clone()
    norm.num_features = int(keep.numel())


@torch.no_grad()
def export_static(model: AutoplasticNet) -> StaticAutoplasticNet:
    """The exact static network of ``model``'s eval-mode function (module docstring); the
    model is not changed. The export is in eval mode."""
    check_instance("model", model, AutoplasticNet)
    blocks: list[StaticBlock] = []
    for b in model.blocks:
        p, c, a = float(b.P), b.C.detach().float(), float(b.alpha)
        g = p * c  # (out_ch,)
        keep = torch.nonzero(g != 0).flatten()
        shortcut = copy.deepcopy(b.shortcut)
        if keep.numel() == 0:
            if shortcut is not None:  # the branch is gone, the projection stays
                blocks.append(StaticBlock(b.out_ch, b.stride, shortcut, None, None, None))
            continue  # identity after a ReLU: the whole block is gone
        conv = attn = None
        if a != 0.0:
            conv = copy.deepcopy(b.conv)
            _slice_out(conv.conv2, conv.bn2, keep, (g * a)[keep])
        if a != 1.0:
            attn = copy.deepcopy(b.attn)
            _slice_out(attn.proj, attn.bn, keep, (g * (1 - a))[keep])
        index = None if keep.numel() == b.out_ch else keep.clone()
        blocks.append(StaticBlock(b.out_ch, b.stride, shortcut, conv, attn, index))
    out = StaticAutoplasticNet(copy.deepcopy(model.stem), blocks, copy.deepcopy(model.head),
                               model.dims, model.in_channels)
    return out.to(next(model.parameters()).device).eval()


@torch.no_grad()
def reinitialise(model: nn.Module, seed: Optional[int] = None) -> nn.Module:
    """Fresh initial values for every submodule with ``reset_parameters`` (convs, norms and
    their running statistics, the head), in place: the export's architecture trained from
    scratch. Returns ``model``."""
    if seed is not None:
        torch.manual_seed(check_int("seed", seed, 0))
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return model


@torch.no_grad()
def measure_latency(model: nn.Module, x: Tensor, repeats: int = 30, warmup: int = 5,
                    threads: Optional[int] = 1) -> dict[str, float]:
    """Median and 20 / 80% quantiles (ms) of single calls ``model(x)`` in eval mode on
    ``threads`` torch threads (None: as set), after ``warmup`` calls
    (`morphonet.timing.time_models`, one model, one call a sample)."""
    check_int("repeats", repeats, 1)
    check_int("warmup", warmup, 0)
    if threads is not None:
        check_int("threads", threads, 1)
    res = time_models({"model": model}, x, rounds=repeats, warmup=warmup, threads=threads,
                      min_sample_ms=0)["model"]
    return {k: res[k] for k in ("median_ms", "p20_ms", "p80_ms")}
