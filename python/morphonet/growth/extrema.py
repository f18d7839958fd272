"""Extrema detection: which neurons sit at the ends of their activation's range, over a window of
training batches, counted by morpho_kernels.extrema_stats (one pass per layer and batch).

Thresholds (ExtremaConfig, all configurable):

* tanh / sigmoid: a sample is *high* when it lies in the top ``1 − high_fraction`` of the
  saturating range and *low* in the bottom ``low_fraction`` (seed: 0.95 / 0.05). For tanh,
  range (−1, 1): high > 0.9, low < −0.9; for sigmoid: high > 0.95, low < 0.05.
* ReLU: *low* (dead) = never positive over the whole window; *high* = the neuron's window mean
  is at or above the layer's ``relu_high_quantile`` (0.9) of means, and positive.
* input layer (layer 0, standardised features, no activation): high > ``input_high`` (1.0
  training standard deviation), low < −``input_high``.
* output layer (logits): never an extremum (no saturating range); may be *quiet*.

A neuron is a **high / low extremum** when at least ``min_share`` of its window's samples are
high / low (for ReLU the rules above). A **quiet** neuron is an active neuron that is neither,
whose window range max − min is ≤ ``quiet_range`` or among the ``quiet_quantile`` smallest of its
layer: it carries (almost) no signal, the router's fallback target.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from morpho_kernels import ExtremaStats, extrema_stats

from ..checks import check_choice, check_instance
from ..config import Config, fraction, ints, reals, setting

# the activations with extrema rules (the hidden layers of a MinimalNetwork use one of them)
EXTREMA_ACTIVATIONS = ("tanh", "sigmoid", "relu")


@dataclass
class ExtremaConfig(Config):
    """Thresholds of the extrema rules (see the module docstring); fractions in [0, 1]."""

    high_fraction: float = setting(0.95, fraction())
    low_fraction: float = setting(0.05, fraction())
    min_share: float = setting(0.5, fraction())
    input_high: float = setting(1.0, reals())
    input_min_share: float = setting(0.1, fraction())
    relu_high_quantile: float = setting(0.9, fraction())
    quiet_range: float = setting(1e-6, reals())
    quiet_quantile: float = setting(0.25, fraction())
    window_batches: int = setting(10, ints(1))  # sampled batches kept in the window
    stride_steps: int = setting(4, ints(1))  # optimizer steps between two sampled batches

    def check(self) -> None:
        if self.low_fraction >= self.high_fraction:
            raise ValueError(f"low_fraction ({self.low_fraction}) must be < high_fraction "
                             f"({self.high_fraction})")

    def thresholds(self, kind: str) -> tuple[float, float]:
        """(low, high) sample thresholds for ``kind`` in tanh / sigmoid / relu / input /
        output."""
        if kind == "tanh":
            return -1.0 + 2.0 * self.low_fraction, -1.0 + 2.0 * self.high_fraction
        if kind == "sigmoid":
            return self.low_fraction, self.high_fraction
        if kind == "relu":
            return 0.0, 0.0  # above 0 = positive; never positive ⇔ above == 0
        if kind == "input":
            return -self.input_high, self.input_high
        if kind == "output":
            return float("-inf"), float("inf")
        raise ValueError(f"kind must be tanh, sigmoid, relu, input or output, got {kind!r}")


@dataclass
class LayerExtrema:
    """Per-neuron verdicts for one layer over the window (all (C,) tensors)."""

    high: Tensor  # bool
    low: Tensor  # bool
    quiet: Tensor  # bool
    high_share: Tensor  # float: share of samples above the high threshold
    low_share: Tensor
    mean: Tensor
    range: Tensor  # max − min


class ExtremaDetector:
    """Accumulates extrema_stats of every layer over a window of training batches.

    Units: the window holds the last ``window_batches`` *sampled* batches; a batch is sampled
    every ``stride_steps`` optimizer steps (``step()`` returns whether this step is sampled),
    so the window spans window_batches × stride_steps steps (10 × 4 = 40 by default).
    Sampling keeps the per-step cost small: the hidden layers share their thresholds and are
    counted by one extrema_stats call on their concatenation, so a sampled batch costs three
    calls (input, hidden, output).

    ``update(network.activations)`` adds a batch; ``report(active_masks)`` gives one
    LayerExtrema per layer.
    """

    def __init__(self, activation: str, config: Optional[ExtremaConfig] = None):
        check_choice("activation", activation, EXTREMA_ACTIVATIONS)
        check_instance("config", config, ExtremaConfig, optional=True)
        self.activation, self.config = activation, config or ExtremaConfig()
        self.window: deque[list[ExtremaStats]] = deque(maxlen=self.config.window_batches)
        self._widths: Optional[list[int]] = None
        self._steps = 0

    def kinds(self, n_layers: int) -> list[str]:
        """Rule used per layer 0..n_layers."""
        return ["input"] + [self.activation] * (n_layers - 1) + ["output"]

    def step(self) -> bool:
        """Count one optimizer step; True when this step's batch should be sampled."""
        self._steps += 1
        return (self._steps - 1) % self.config.stride_steps == 0

    def update(self, activations: list[Tensor]) -> None:
        """Add one batch: ``activations[j]`` is layer j's (batch, width) output."""
        if not isinstance(activations, (list, tuple)) or len(activations) < 2:
            raise ValueError("activations must be the list of every layer's output (input first)")
        widths = [a.shape[-1] for a in activations]
        if self._widths is not None and widths != self._widths:
            self.window.clear()
        self._widths = widths
        c, hidden = self.config, activations[1:-1]
        groups = [extrema_stats(activations[0], *c.thresholds("input"))]
        if hidden:
            h = torch.cat(hidden, dim=-1) if len(hidden) > 1 else hidden[0]
            groups.append(extrema_stats(h, *c.thresholds(self.activation)))
        groups.append(extrema_stats(activations[-1], *c.thresholds("output")))
        self.window.append(groups)

    def reset(self) -> None:
        """Forget the window (after a structural change) and restart the stride count."""
        self.window.clear()
        self._steps = 0

    def __len__(self) -> int:
        return len(self.window)

    def combined(self) -> list[ExtremaStats]:
        """The window's statistics per layer: the batches merged as extrema_stats.combine does
        (counts add, count-weighted mean, min of mins, max of maxes), vectorised over the
        window."""
        if not self.window:
            raise RuntimeError("no batches in the window: call update() first")
        merged = []
        for g in range(len(self.window[0])):
            parts = [b[g] for b in self.window]
            cnt = torch.stack([p.count for p in parts])  # (W,)
            mean = torch.stack([p.mean for p in parts]).double()  # (W, C)
            n = cnt.sum()
            merged.append(ExtremaStats(
                torch.stack([p.below for p in parts]).sum(0),
                torch.stack([p.above for p in parts]).sum(0),
                ((mean * cnt[:, None].double()).sum(0) / n.clamp(min=1)).float(),
                torch.stack([p.min for p in parts]).amin(0),
                torch.stack([p.max for p in parts]).amax(0), n))
        if len(merged) == 2:  # no hidden layers
            return merged
        out, off = [merged[0]], 0
        for w in self._widths[1:-1]:  # split the hidden group back into layers
            out.append(ExtremaStats(*(t[off:off + w] if t.dim() else t for t in merged[1])))
            off += w
        return out + [merged[2]]

    def report(self, active: Optional[list[Tensor]] = None) -> list[LayerExtrema]:
        """Verdicts per layer; ``active[j]`` (bool) restricts them to the active neurons."""
        stats = self.combined()
        kinds = self.kinds(len(stats) - 1)
        out = []
        for j, (st, kind) in enumerate(zip(stats, kinds)):
            act = active[j] if active is not None else torch.ones_like(st.below, dtype=torch.bool)
            out.append(self._verdict(st, kind, act))
        return out

    def _verdict(self, st: ExtremaStats, kind: str, act: Tensor) -> LayerExtrema:
        c = self.config
        n = st.count.clamp(min=1).double()
        hi_share, lo_share = (st.above / n).float(), (st.below / n).float()
        rng = (st.max - st.min).nan_to_num(0.0)
        share = c.input_min_share if kind == "input" else c.min_share
        if kind == "relu":
            low = st.above == 0  # never positive in the window
            mu = st.mean[act]
            q = torch.quantile(mu, c.relu_high_quantile) if mu.numel() else torch.tensor(0.0)
            high = (st.mean >= q) & (st.mean > 0)
        elif kind == "output":
            high = low = torch.zeros_like(act)
        else:
            high, low = hi_share >= share, lo_share >= share
        high, low = high & act, low & act & ~high
        rest = act & ~high & ~low
        quiet = rest & (rng <= c.quiet_range)
        if rest.any():
            cut = torch.quantile(rng[rest], c.quiet_quantile)
            quiet |= rest & (rng <= cut)
        return LayerExtrema(high, low, quiet, hi_share, lo_share, st.mean, rng)
