"""Extrema detection: which neurons sit at the ends of their activation's range, over a window of
training batches, counted by morpho_kernels.extrema_stats (one pass per layer and batch).

Rules (ExtremaConfig, all configurable):

* tanh / sigmoid, ``rule="quantile"`` (default; the seed's code): on the window's mean
  activation of each neuron, *high* = above the layer's ``high_quantile`` (0.85) of means and
  above a floor (tanh 0.2, sigmoid 0.6), *low* = below its ``low_quantile`` (0.15) and below
  a floor (tanh −0.2, sigmoid 0.4). ``rule="saturation"`` (the seed's README): a sample is
  high in the top ``1 − high_fraction`` of the saturating range and low in the bottom
  ``low_fraction`` (0.95 / 0.05: tanh > 0.9 / < −0.9), and a neuron is a high / low extremum
  when at least ``min_share`` of its window's samples are. A barely connected network has few
  saturated neurons; the quantile rule finds its most active ones.
* ReLU: *low* (dead) = never positive over the whole window; *high* = the neuron's window mean
  is at or above the layer's ``relu_high_quantile`` (0.9) of means, and positive.
* input layer (layer 0, no activation): a feature is high when at least ``input_min_share``
  (0.1) of its samples are above the ``input_quantiles[1]`` (0.85) quantile of all the batch's
  input values pooled, low likewise below ``input_quantiles[0]``: the same features whether the
  inputs are standardised or scaled to [0, 1] (``input_high`` fixes the thresholds at
  ±input_high instead).
* output layer (logits): never an extremum (no saturating range); may be *quiet*.

A **quiet** neuron is an active neuron that is neither, whose window range max − min is ≤
``quiet_range`` or among the ``quiet_quantile`` smallest of its layer: it carries (almost) no
signal, the router's fallback target.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from morpho_kernels import ExtremaStats, extrema_stats
from morpho_kernels.distributed import group_reduce

from ..checks import check_choice, check_instance
from ..config import Config, fraction, ints, one_of, reals, setting

# the activations with extrema rules (the hidden layers of a MinimalNetwork use one of them)
EXTREMA_ACTIVATIONS = ("tanh", "sigmoid", "relu")
EXTREMA_RULES = ("quantile", "saturation")
# floors of the quantile rule on mean activations: (low below, high above)
_MEAN_FLOORS = {"tanh": (-0.2, 0.2), "sigmoid": (0.4, 0.6)}


def _pair(name: str, v) -> tuple:
    if isinstance(v, str) or not isinstance(v, (list, tuple)) or len(v) != 2:
        raise TypeError(f"{name} must be a pair (low, high), got {v!r}")
    return tuple(v)


@dataclass
class ExtremaConfig(Config):
    """Thresholds of the extrema rules (see the module docstring); fractions in [0, 1]."""

    rule: str = setting("quantile", one_of(*EXTREMA_RULES))
    high_quantile: float = setting(0.85, fraction())
    low_quantile: float = setting(0.15, fraction())
    high_fraction: float = setting(0.95, fraction())
    low_fraction: float = setting(0.05, fraction())
    min_share: float = setting(0.5, fraction())
    input_high: Optional[float] = setting(None, reals(0, lo_open=True, optional=True))
    input_quantiles: tuple = setting((0.15, 0.85), lambda n, v: tuple(
        fraction()(f"{n}[{i}]", x) for i, x in enumerate(_pair(n, v))))
    input_min_share: float = setting(0.1, fraction())
    relu_high_quantile: float = setting(0.9, fraction())
    quiet_range: float = setting(1e-6, reals())
    quiet_quantile: float = setting(0.25, fraction())
    window_batches: int = setting(10, ints(1))  # sampled batches kept in the window
    stride_steps: int = setting(4, ints(1))  # optimizer steps between two sampled batches

    def check(self) -> None:
        for lo, hi in (("low_fraction", "high_fraction"), ("low_quantile", "high_quantile")):
            if getattr(self, lo) >= getattr(self, hi):
                raise ValueError(f"{lo} ({getattr(self, lo)}) must be < {hi} "
                                 f"({getattr(self, hi)})")
        if self.input_quantiles[0] >= self.input_quantiles[1]:
            raise ValueError(f"input_quantiles must be (low, high) with low < high, got "
                             f"{self.input_quantiles}")

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
            if self.input_high is None:
                raise ValueError("the input thresholds are quantiles of each batch "
                                 "(input_high=None): ExtremaDetector computes them")
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
        groups = [extrema_stats(activations[0], *self._input_thresholds(activations[0]))]
        if hidden:
            h = torch.cat(hidden, dim=-1) if len(hidden) > 1 else hidden[0]
            groups.append(extrema_stats(h, *c.thresholds(self.activation)))
        groups.append(extrema_stats(activations[-1], *c.thresholds("output")))
        self.window.append(groups)

    def _input_thresholds(self, x: Tensor) -> tuple[float, float]:
        """(low, high) for the input layer: fixed ±input_high, or the batch's pooled
        quantiles (a scale-free rule: the same features for [0, 1] or standardised inputs)."""
        c = self.config
        if c.input_high is not None:
            return c.thresholds("input")
        v = x.detach().reshape(-1).float()
        if v.numel() > 1 << 20:  # a strided sample keeps torch.quantile within its size limit
            v = v[:: v.numel() // (1 << 20) + 1]
        lo, hi = torch.quantile(v, torch.tensor(c.input_quantiles)).tolist()
        return lo, hi

    def reset(self) -> None:
        """Forget the window (after a structural change) and restart the stride count."""
        self.window.clear()
        self._steps = 0

    def __len__(self) -> int:
        return len(self.window)

    def state_dict(self) -> dict:
        """The open window (its batches' statistics), the layer widths and the stride count,
        for a checkpoint; `load_state_dict` restores them."""
        return {"window": [[tuple(st) for st in batch] for batch in self.window],
                "widths": self._widths, "steps": self._steps}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""
        self.window.clear()
        for batch in state["window"]:
            self.window.append([ExtremaStats(*st) for st in batch])
        self._widths = None if state["widths"] is None else list(state["widths"])
        self._steps = state["steps"]

    def combined(self, group: Any = None) -> list[ExtremaStats]:
        """The window's statistics per layer: the batches merged as extrema_stats.combine does
        (counts add, count-weighted mean, min of mins, max of maxes), vectorised over the
        window; with a process ``group`` (data-parallel replicas, each with its own batches),
        then merged the same way over the group's ranks, so every rank gets the same
        statistics (every rank must call)."""
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
        if group is not None:
            merged = [_merge_ranks(st, group) for st in merged]
        if len(merged) == 2:  # no hidden layers
            return merged
        out, off = [merged[0]], 0
        for w in self._widths[1:-1]:  # split the hidden group back into layers
            out.append(ExtremaStats(*(t[off:off + w] if t.dim() else t for t in merged[1])))
            off += w
        return out + [merged[2]]

    def report(self, active: Optional[list[Tensor]] = None,
               group: Any = None) -> list[LayerExtrema]:
        """Verdicts per layer; ``active[j]`` (bool) restricts them to the active neurons;
        ``group``: the statistics merged over a process group first (`combined`)."""
        stats = self.combined(group)
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
        elif kind in _MEAN_FLOORS and c.rule == "quantile":
            mu = st.mean[act]
            if mu.numel():
                q_lo, q_hi = torch.quantile(mu, torch.tensor(
                    [c.low_quantile, c.high_quantile])).tolist()
            else:
                q_lo = q_hi = 0.0
            f_lo, f_hi = _MEAN_FLOORS[kind]
            high, low = st.mean > max(q_hi, f_hi), st.mean < min(q_lo, f_lo)
        else:
            high, low = hi_share >= share, lo_share >= share
        high, low = high & act, low & act & ~high
        rest = act & ~high & ~low
        quiet = rest & (rng <= c.quiet_range)
        if rest.any():
            cut = torch.quantile(rng[rest], c.quiet_quantile)
            quiet |= rest & (rng <= cut)
        return LayerExtrema(high, low, quiet, hi_share, lo_share, st.mean, rng)


def _merge_ranks(st: ExtremaStats, group: Any) -> ExtremaStats:
    """``st`` merged over the ranks of ``group`` as the window merges batches: counts add,
    count-weighted mean (in fp64), min of mins, max of maxes."""
    n = group_reduce(st.count, group, "sum")
    wsum = group_reduce(st.mean.double() * st.count.double(), group, "sum")  # (fp64 stays)
    return ExtremaStats(group_reduce(st.below, group, "sum"), group_reduce(st.above, group, "sum"),
                        (wsum / n.clamp(min=1).double()).float(),
                        group_reduce(st.min, group, "min").to(st.min.dtype),
                        group_reduce(st.max, group, "max").to(st.max.dtype), n)
