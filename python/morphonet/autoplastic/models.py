"""`AutoplasticNet`: a stem, residual blocks mixing convolution and a light attention under
learned depth, channel and mix gates, global pooling and a linear head; 2-D (images) or 1-D
(sequences).

Block output (`ANNBlock`)::

    ReLU(shortcut(x) + P · C ⊙ [α · conv(x) + (1 − α) · attention(x)])

with conv = 3×3-BN-ReLU-3×3-BN (3-BN-ReLU-3-BN in 1-D), attention = `SpatialSelfAttentionLite`
(single head of dimension max(8, C_in / 4) over at most 64 tokens, pooled down and upsampled
back), shortcut = identity, or 1×1 conv + BN where the block widens or strides. P is one gate
per block, C one per output channel, α the mix (`gates`). Class and method names follow the
seed's published code (``ANNBlock``, ``SpatialSelfAttentionLite``, ``arch_state_summary``,
``effective_depth_and_activity``).

Costs are counted in multiply-accumulates (MACs) of the convolutions, the linear head and the
attention products (norms, pooling, activations and interpolation left out); ``macs`` of a
module counts its actual channels, so the same functions count a gated network and its export.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_choice, check_int, check_int_list
from ..inputs import InputRules
from .config import NetConfig, TrainConfig
from .gates import Gate, MixGate, make_gate

__all__ = ["ANNBlock", "AutoplasticNet", "Backbone", "ConvBranch", "SpatialSelfAttentionLite",
           "conv_cls", "norm_cls", "out_size"]

Spatial = tuple[int, ...]


def conv_cls(dims: int) -> type[nn.Module]:
    """``nn.Conv1d`` or ``nn.Conv2d``."""
    return {1: nn.Conv1d, 2: nn.Conv2d}[dims]


def norm_cls(dims: int) -> type[nn.Module]:
    """``nn.BatchNorm1d`` or ``nn.BatchNorm2d``."""
    return {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dims]


def out_size(spatial: Spatial, stride: int) -> Spatial:
    """Spatial size after a stride-``stride`` step (3×3 pad 1, 1×1, 2×2 ceil pooling all give
    ⌈n / stride⌉)."""
    return tuple(-(-n // stride) for n in spatial)


def _prod(s: Spatial) -> int:
    return math.prod(s)


def _halve(x: Tensor) -> Tensor:
    """Average pooling by 2 (ceil mode: odd sizes keep their last position, like a stride-2
    3×3 conv with padding 1); a size-1 axis stays."""
    k = tuple(min(2, n) for n in x.shape[2:])
    pool = F.avg_pool1d if x.dim() == 3 else F.avg_pool2d
    return pool(x, k, 2, ceil_mode=True)


def token_factor(spatial: Spatial, max_tokens: int) -> int:
    """The smallest pooling factor ds ≥ 1 with ∏ (n // ds) ≤ max_tokens (the seed's rule)."""
    ds = 1
    while _prod(tuple(max(n // ds, 1) for n in spatial)) > max_tokens and \
            min(spatial) // (ds + 1) >= 1:
        ds += 1
    return ds


class SpatialSelfAttentionLite(nn.Module):
    """Single-head self-attention over the positions of a (B, C, *spatial) map: stride 2 by
    2×2 average pooling, then pooled to at most ``max_tokens`` tokens, q / k / v by 1×1 convs
    to ``attn_dim`` = max(8, in_ch // 4), softmax(q kᵀ / √d) v, upsampled back (linear /
    bilinear), a 1×1 projection to ``out_ch`` and a norm."""

    def __init__(self, in_ch: int, out_ch: int, dims: int = 2, stride: int = 1,
                 max_tokens: int = 64, attn_dim: Optional[int] = None):
        super().__init__()
        self.dims = check_choice("dims", dims, (1, 2))
        self.stride = check_choice("stride", stride, (1, 2))
        self.max_tokens = check_int("max_tokens", max_tokens, 1)
        self.attn_dim = check_int("attn_dim", attn_dim if attn_dim is not None
                                  else max(8, in_ch // 4), 1)
        conv = conv_cls(dims)
        self.q = conv(in_ch, self.attn_dim, 1, bias=False)
        self.k = conv(in_ch, self.attn_dim, 1, bias=False)
        self.v = conv(in_ch, self.attn_dim, 1, bias=False)
        self.proj = conv(self.attn_dim, out_ch, 1, bias=False)
        self.bn = norm_cls(dims)(out_ch)

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, *S) -> (B, C_out, *S')
        if self.stride == 2:
            x = _halve(x)
        spatial = tuple(x.shape[2:])
        ds = token_factor(spatial, self.max_tokens)
        small = x if ds == 1 else (F.avg_pool1d if self.dims == 1 else F.avg_pool2d)(x, ds, ds)
        b, s = small.shape[0], tuple(small.shape[2:])
        q = self.q(small).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, N, d)
        k = self.k(small).flatten(2).transpose(1, 2).unsqueeze(1)
        v = self.v(small).flatten(2).transpose(1, 2).unsqueeze(1)
        o = F.scaled_dot_product_attention(q, k, v)  # (B, 1, N, d)
        o = o.squeeze(1).transpose(1, 2).reshape(b, self.attn_dim, *s)
        if s != spatial:
            o = F.interpolate(o, size=spatial, mode="linear" if self.dims == 1 else "bilinear",
                              align_corners=False)
        return self.bn(self.proj(o))

    def macs(self, spatial: Spatial) -> int:
        """MACs per example for an input of size ``spatial``."""
        s = out_size(spatial, self.stride)
        ds = token_factor(s, self.max_tokens)
        n = _prod(tuple(max(m // ds, 1) for m in s))
        d, c_in, c_out = self.attn_dim, self.q.in_channels, self.proj.out_channels
        return 3 * c_in * d * n + 2 * n * n * d + d * c_out * _prod(s)


class ConvBranch(nn.Module):
    """3×3 conv (stride) → norm → ReLU → 3×3 conv → norm (1-D: kernel 3); ``mid`` channels
    inside (default ``out_ch``)."""

    def __init__(self, in_ch: int, out_ch: int, dims: int = 2, stride: int = 1,
                 mid: Optional[int] = None):
        super().__init__()
        mid = out_ch if mid is None else mid
        conv, norm = conv_cls(dims), norm_cls(dims)
        self.conv1 = conv(in_ch, mid, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(mid)
        self.conv2 = conv(mid, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def macs(self, spatial: Spatial) -> int:
        """MACs per example for an input of size ``spatial``."""
        s = _prod(out_size(spatial, self.conv1.stride[0]))
        taps = 3 ** len(spatial)
        c1, c2 = self.conv1, self.conv2
        return taps * s * (c1.in_channels * c1.out_channels + c2.in_channels * c2.out_channels)


def make_shortcut(in_ch: int, out_ch: int, dims: int, stride: int) -> Optional[nn.Sequential]:
    """1×1 conv (stride) + norm where the block widens or strides; None (identity) else."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(conv_cls(dims)(in_ch, out_ch, 1, stride=stride, bias=False),
                         norm_cls(dims)(out_ch))


def shortcut_macs(shortcut: Optional[nn.Sequential], spatial: Spatial) -> int:
    """MACs per example of a shortcut (0 for the identity)."""
    if shortcut is None:
        return 0
    c = shortcut[0]
    return c.in_channels * c.out_channels * _prod(out_size(spatial, c.stride[0]))


class ANNBlock(nn.Module):
    """One Autoplastic block (module docstring): ReLU(shortcut(x) + P · C ⊙ [α·conv(x) +
    (1 − α)·attention(x)]).

    Args:
        in_ch, out_ch, stride: the block's channels and stride (1 or 2).
        init_alpha, p_init, c_init: initial α, P and C (the seed's 0.5, 0.9, 0.9).
        dims: 2 (images) or 1 (sequences).
        gates: "learned" (gradient, ``gate_kind``), "rules" (the seed's buffers) or "none".
        floors: (p_min, c_min, c_max) bounding P to [p_min, 1] and C to [c_min, c_max], or
            None (P, C in [0, 1]).
        max_tokens: attention tokens at most.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, init_alpha: float = 0.5,
                 p_init: float = 0.9, c_init: float = 0.9, *, dims: int = 2,
                 gates: str = "learned", gate_kind: str = "hard_concrete",
                 floors: Optional[Sequence[float]] = None, max_tokens: int = 64):
        super().__init__()
        self.in_ch, self.out_ch = check_int("in_ch", in_ch, 1), check_int("out_ch", out_ch, 1)
        self.stride = check_choice("stride", stride, (1, 2))
        self.dims = check_choice("dims", dims, (1, 2))
        p_lo, c_lo, c_hi = (0.0, 0.0, 1.0) if floors is None else tuple(floors)
        self.conv = ConvBranch(in_ch, out_ch, dims, stride)
        self.attn = SpatialSelfAttentionLite(in_ch, out_ch, dims, stride, max_tokens)
        self.shortcut = make_shortcut(in_ch, out_ch, dims, stride)
        self.mix = MixGate(init_alpha)
        self.p_gate: Optional[Gate] = make_gate(gates, gate_kind, 1, p_init, (p_lo, 1.0))
        self.c_gate: Optional[Gate] = make_gate(gates, gate_kind, out_ch, c_init, (c_lo, c_hi))

    # ------------------------------------------------------------------ the seed's names

    @property
    def alpha(self) -> Tensor:
        """α, the conv branch's weight (a 0-d tensor, detached)."""
        return self.mix().detach()

    @property
    def P(self) -> Tensor:
        """The deterministic depth gate (a 0-d tensor, detached; 1 without gates)."""
        return self.p_gate.value()[0].detach() if self.p_gate is not None else torch.ones(())

    @property
    def C(self) -> Tensor:
        """The deterministic channel gates (out_ch,), detached (ones without gates)."""
        return (self.c_gate.value().detach() if self.c_gate is not None
                else torch.ones(self.out_ch))

    # ------------------------------------------------------------------ forward

    def gate(self, batch: int) -> Optional[Tensor]:
        """P·C for this step: (batch, out_ch) drawn per row while training, (out_ch,) in
        eval; None without gates."""
        if self.p_gate is None:
            return None
        p, c = self.p_gate(batch), self.c_gate(batch)
        return p * c

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        g = self.gate(x.shape[0])
        if g is not None and not self.training and not bool((g != 0).any()):
            return F.relu(identity)  # P = 0 or every C = 0: no branch
        a = self.mix()
        sat = self.mix.saturated()
        if sat == 1.0:
            y = self.conv(x)
        elif sat == 0.0:
            y = self.attn(x)
        else:
            y = a * self.conv(x) + (1 - a) * self.attn(x)
        if g is not None:
            shape = (g.shape[0] if g.dim() == 2 else 1, self.out_ch) + (1,) * self.dims
            y = y * g.reshape(shape)
        return F.relu(identity + y)

    # ------------------------------------------------------------------ costs

    def branch_macs(self, spatial: Spatial, saturation: bool = True) -> tuple[int, int]:
        """(MACs the branch spends whatever C is, MACs per live output channel) per example,
        for an input of size ``spatial``; with ``saturation`` a saturated α drops its
        branch."""
        sat = self.mix.saturated() if saturation else None
        s = _prod(out_size(spatial, self.stride))
        taps = 3 ** self.dims
        fixed, per = 0, 0
        if sat != 0.0:  # the conv branch: conv1 whole, conv2 per output channel
            c1 = self.conv.conv1
            fixed += taps * s * c1.in_channels * c1.out_channels
            per += taps * s * self.conv.conv2.in_channels
        if sat != 1.0:  # attention: q / k / v and the products whole, the projection per channel
            full = self.attn.macs(spatial)
            per_proj = self.attn.attn_dim * s
            fixed += full - per_proj * self.out_ch
            per += per_proj
        return fixed, per

    def macs(self, spatial: Spatial) -> int:
        """MACs per example of the whole block (both branches, every channel) for an input of
        ``spatial``."""
        fixed, per = self.branch_macs(spatial, saturation=False)
        return fixed + per * self.out_ch + shortcut_macs(self.shortcut, spatial)


class Backbone(InputRules, nn.Module):
    """What `AutoplasticNet` and its static export (`StaticAutoplasticNet`) share: stem →
    blocks → global average pooling → linear head, and the input rules (`InputRules`:
    ``(batch, in_channels, length)`` for ``dims`` 1, ``(batch, in_channels, height, width)``
    for 2). Subclasses set ``stem``, ``blocks``, ``head``, ``dims`` and ``in_channels``."""

    def forward(self, x: Tensor) -> Tensor:  # (B, C, *S) -> (B, classes)
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        return self.head(x.flatten(2).mean(-1))

    def expected_input(self) -> str:
        """What `forward` takes (for error messages)."""
        s = "(batch, %d, length)" if self.dims == 1 else "(batch, %d, height, width)"
        return s % self.in_channels

    def _fits(self, x: Tensor) -> bool:
        return x.dim() == self.dims + 2 and x.shape[1] == self.in_channels

    def n_outputs(self) -> int:
        """Number of classes the head scores."""
        return self.head.out_features


class AutoplasticNet(Backbone):
    """Stem (3×3 conv-BN-ReLU), `ANNBlock` s, global average pooling, linear head.

    The seed's signature comes first (``num_classes``, ``init_alpha``, ``p_init``,
    ``c_init``; its CIFAR network is the default shape); the rest is keyword-only. Build one
    from configs with `AutoplasticNet.from_config`.

    Args:
        in_channels, dims: input channels and 2 (images (B, C, H, W)) or 1 (sequences
            (B, C, L)).
        stem_width, widths, strides: the stem's channels, and each block's output channels
            and stride (1 or 2).
        gates, gate_kind, floors, max_tokens: as `ANNBlock`.
    """

    def __init__(self, num_classes: int = 10, init_alpha: float = 0.5, p_init: float = 0.9,
                 c_init: float = 0.9, *, in_channels: int = 3, dims: int = 2,
                 stem_width: int = 32, widths: Sequence[int] = (64, 64, 128, 128, 256, 256),
                 strides: Sequence[int] = (2, 1, 2, 1, 2, 1), gates: str = "learned",
                 gate_kind: str = "hard_concrete", floors: Optional[Sequence[float]] = None,
                 max_tokens: int = 64):
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes, 2)
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.dims = check_choice("dims", dims, (1, 2))
        widths = check_int_list("widths", widths, 1, allow_empty=False)
        strides = check_int_list("strides", strides, 1, length=len(widths))
        self.gates = check_choice("gates", gates, ("learned", "rules", "none"))
        conv, norm = conv_cls(dims), norm_cls(dims)
        self.stem = nn.Sequential(conv(in_channels, stem_width, 3, padding=1, bias=False),
                                  norm(stem_width), nn.ReLU())
        blocks, c = [], check_int("stem_width", stem_width, 1)
        for w, s in zip(widths, strides):
            blocks.append(ANNBlock(c, w, s, init_alpha, p_init, c_init, dims=dims, gates=gates,
                                   gate_kind=gate_kind, floors=floors, max_tokens=max_tokens))
            c = w
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(c, num_classes)

    @classmethod
    def from_config(cls, net: NetConfig, train: Optional[TrainConfig] = None) -> AutoplasticNet:
        """The network of shape ``net`` with the gates of ``train`` (``gates``,
        ``gate_kind``, ``init_alpha``, ``p_init``, ``c_init`` and its floors)."""
        net = net.validate()
        train = (train or TrainConfig()).validate()
        return cls(net.num_classes, train.init_alpha, train.p_init, train.c_init,
                   in_channels=net.in_channels, dims=net.dims, stem_width=net.stem_width,
                   widths=net.widths, strides=net.strides, gates=train.gates,
                   gate_kind=train.gate_kind, floors=train.floors(), max_tokens=net.max_tokens)


    # ------------------------------------------------------------------ parameters

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture parameters: every α logit and the learned gates' logits (the slow
        timescale)."""
        out = []
        for b in self.blocks:
            out.append(b.mix.logit)
            for g in (b.p_gate, b.c_gate):
                if g is not None:
                    out.extend(g.parameters())
        return out

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not an architecture parameter (the fast timescale)."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    # ------------------------------------------------------------------ the seed's summaries

    @torch.no_grad()
    def arch_state_summary(self) -> dict[str, list[float]]:
        """Deterministic P, α and mean C of every block (the seed's summary)."""
        return {"P": [float(b.P) for b in self.blocks],
                "alpha": [float(b.alpha) for b in self.blocks],
                "meanC": [float(b.C.mean()) for b in self.blocks]}

    @torch.no_grad()
    def effective_depth_and_activity(self) -> tuple[float, float]:
        """The seed's (L_eff, active-channel ratio): Σ_b P_b · mean C_b and the mean of mean
        C_b, from the deterministic gates. Soft figures: a gate of 0.9 counts 0.9 though
        nothing is removed; `structure` gives what the export removes."""
        s = self.arch_state_summary()
        leff = sum(p * c for p, c in zip(s["P"], s["meanC"]))
        return leff, sum(s["meanC"]) / len(s["meanC"])

    @torch.no_grad()
    def structure(self) -> dict[str, Any]:
        """What the static export keeps: per block whether its branch stays (``kept``), its
        live output channels, its pruned % (channels removed; 100 for a removed branch), the
        saturated α (0 / 1 / None); and ``depth`` (blocks whose branch stays) and
        ``active_ratio`` (live channels over all blocks' channels)."""
        kept, live, pruned, sat = [], [], [], []
        for b in self.blocks:
            if b.p_gate is None:
                n = b.out_ch
            else:
                n = int(b.c_gate.active().sum()) if bool(b.p_gate.active().all()) else 0
            kept.append(n > 0)
            live.append(n)
            pruned.append(100.0 * (1 - n / b.out_ch))
            sat.append(b.mix.saturated())
        total = sum(b.out_ch for b in self.blocks)
        kept_total = sum(b.out_ch for b, k in zip(self.blocks, kept) if k)
        return {"kept": kept, "live_channels": live, "pruned_pct": pruned, "saturated": sat,
                "depth": sum(kept), "active_ratio": sum(live) / total,
                "active_ratio_kept": sum(live) / kept_total if kept_total else 0.0}

    # ------------------------------------------------------------------ costs

    def spatial_sizes(self, input_shape: Sequence[int]) -> list[Spatial]:
        """The input size of every block for one example of ``input_shape`` (C, *S)."""
        s = tuple(int(n) for n in input_shape[1:])
        out = []
        for b in self.blocks:
            out.append(s)
            s = out_size(s, b.stride)
        return out

    def macs(self, input_shape: Sequence[int]) -> int:
        """MACs per example of the whole network with every block, branch and channel (the
        full-width network, whatever the gates) for one example of ``input_shape`` (C, *S)."""
        s = tuple(int(n) for n in input_shape[1:])
        stem = self.stem[0]
        total = stem.in_channels * stem.out_channels * 3 ** self.dims * _prod(s)
        for b, sb in zip(self.blocks, self.spatial_sizes(input_shape)):
            total += b.macs(sb)
        return total + self.head.in_features * self.head.out_features

    def expected_macs(self, input_shape: Sequence[int]) -> Tensor:
        """Expected MACs per example under the learned gates (differentiable in their logits):
        Σ_b P(P_b ≠ 0) · (fixed_b + per_channel_b · Σ_c P(C_bc ≠ 0)) + what no gate removes
        (a branch whose α saturated costs nothing). The L0 penalty of `hooks.GatePenalty` is
        λ times this over `macs`."""
        total = torch.zeros(())
        const = self.macs(input_shape)
        for b, sb in zip(self.blocks, self.spatial_sizes(input_shape)):
            f0, p0 = b.branch_macs(sb, saturation=False)
            const -= f0 + p0 * b.out_ch
            fixed, per = b.branch_macs(sb)
            if b.p_gate is None or not b.p_gate.learned:
                total = total + fixed + per * b.out_ch
                continue
            p = b.p_gate.prob_active()[0]
            total = total + p * (fixed + per * b.c_gate.prob_active().sum())
        return total + const

    def expected_active_ratio(self) -> Tensor:
        """The expected fraction of live channel gates over all blocks, Σ P(C_bc ≠ 0) / Σ C_b
        (differentiable in the learned gates' logits; 1 without learned gates)."""
        live, n = torch.zeros(()), 0
        for b in self.blocks:
            n += b.out_ch
            if b.c_gate is None or not b.c_gate.learned:
                live = live + b.out_ch
            else:
                live = live + b.c_gate.prob_active().sum()
        return live / n
