"""The one latency helper: interleaved, paired timing of several models on the same input.

Timing models one after another on a shared machine biases their ratio: load that comes and
goes slows whichever model is being timed at the moment. `time_models` runs the models in
*rounds*: every round times each model once, in an order that rotates from round to round,
so background load falls on every model alike, and each round gives one *paired* ratio to the
reference model (its time in that round over the model's). Per model it reports the median and
the 20 / 80 % quantiles of its samples; per model and reference, the median ratio with its
20 / 80 % quantiles over rounds (the interval of the speed-up).

Small calls (a batch of one through a small model: ~0.1 ms) are repeated ``number`` times per
sample, ``number`` chosen in warmup so one sample lasts at least ``min_sample_ms``; a sample is
then the mean of those calls. Everything runs under ``torch.inference_mode`` in eval mode (the
models' modes are given back), on ``threads`` torch threads; CUDA inputs are synchronised
around every sample.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from .checks import check_int, check_real
from .loop import torch_threads

__all__ = ["quantiles", "time_models"]

Inputs = Union[Tensor, Sequence[Any]]


def quantiles(values: Sequence[float]) -> dict[str, float]:
    """``{"median", "p20", "p80"}`` of ``values`` (a single value is its own quantiles)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("values must not be empty")
    if len(vals) == 1:
        return {"median": vals[0], "p20": vals[0], "p80": vals[0]}
    q = statistics.quantiles(vals, n=10, method="inclusive")
    return {"median": statistics.median(vals), "p20": q[1], "p80": q[7]}


def _sync(device: Optional[torch.device]) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_of(inputs: tuple) -> Optional[torch.device]:
    for t in inputs:
        if isinstance(t, Tensor):
            return t.device
    return None


def _sample(fn: Callable[..., Any], inputs: tuple, number: int,
            device: Optional[torch.device]) -> float:
    """Seconds per call, averaged over ``number`` calls."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(number):
        fn(*inputs)
    _sync(device)
    return (time.perf_counter() - t0) / number


def time_models(models: Mapping[str, Callable[..., Any]], inputs: Inputs, *,
                reference: Optional[str] = None, rounds: int = 15, warmup: int = 2,
                threads: Optional[int] = 1, min_sample_ms: float = 2.0,
                log: Optional[Callable[[str], None]] = None) -> dict[str, dict[str, Any]]:
    """Interleaved, paired latency of each model on the same ``inputs`` (module docstring).

    Args:
        models: ``{name: model}``; each is called as ``model(*inputs)`` (modules are put in
            eval mode for the timing, their mode given back after).
        inputs: one tensor or a sequence of positional arguments, shared by every model.
        reference: the name whose time the others are compared with (None: no ratios).
        rounds: samples per model (each round times every model once).
        warmup: untimed calls per model before the first round (also used to choose how many
            calls one sample averages).
        threads: torch threads while timing (None: as set).
        min_sample_ms: a sample lasts at least this long (calls repeated, then averaged).
        log: called with one line per model when done (e.g. ``print``).

    Returns:
        ``{name: {"median_ms", "p20_ms", "p80_ms", "samples_ms", "number", "rounds"}}``; with
        ``reference``, every entry also has ``"speedup"``: ``{"median", "p20", "p80"}`` of the
        per-round ratio reference time / this model's time (the reference's own is 1), and
        ``"fastest_ratio"``: the reference's fastest sample / this model's fastest (on a
        heavily loaded machine, where most samples are preempted, the fastest of each is the
        closest to the machine's own speed).
    """
    if not isinstance(models, Mapping):
        raise TypeError(f"models must be a mapping {{name: callable}}, got "
                        f"{type(models).__name__}")
    if not models:
        raise ValueError("models must be a non-empty mapping {name: callable}, got {}")
    for name, m in models.items():
        if not callable(m):
            raise TypeError(f"models[{name!r}] must be callable, got {type(m).__name__}")
    if reference is not None and reference not in models:
        raise ValueError(f"reference must be one of {sorted(models)}, got {reference!r}")
    rounds = check_int("rounds", rounds, 1)
    warmup = check_int("warmup", warmup, 0)
    min_sample = check_real("min_sample_ms", min_sample_ms, 0) / 1e3
    args = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    device = _device_of(args)
    names = list(models)
    modes = {n: m.training for n, m in models.items() if isinstance(m, nn.Module)}
    samples: dict[str, list[float]] = {n: [] for n in names}
    number: dict[str, int] = {}
    ctx = torch_threads(threads) if threads is not None else contextlib.nullcontext()
    try:
        for m in models.values():
            if isinstance(m, nn.Module):
                m.eval()
        with ctx, torch.inference_mode():
            for n in names:
                once = _sample(models[n], args, 1, device)  # first call: also a warmup
                for _ in range(max(0, warmup - 1)):
                    once = min(once, _sample(models[n], args, 1, device))
                number[n] = max(1, int(min_sample / max(once, 1e-9)) + 1) if min_sample else 1
            for r in range(rounds):
                k = r % len(names)  # rotate the order: no model always runs first / last
                for n in names[k:] + names[:k]:
                    samples[n].append(_sample(models[n], args, number[n], device))
    finally:
        for n, was in modes.items():
            models[n].train(was)
    out: dict[str, dict[str, Any]] = {}
    for n in names:
        q = quantiles([1e3 * s for s in samples[n]])
        out[n] = {"median_ms": q["median"], "p20_ms": q["p20"], "p80_ms": q["p80"],
                  "samples_ms": [1e3 * s for s in samples[n]], "number": number[n],
                  "rounds": rounds}
        if reference is not None:
            out[n]["speedup"] = quantiles([a / b for a, b in zip(samples[reference],
                                                                 samples[n])])
            out[n]["fastest_ratio"] = min(samples[reference]) / min(samples[n])
        if log is not None:
            sp = (f", {out[n]['speedup']['median']:.2f}× {reference}" if reference is not None
                  else "")
            log(f"  {n}: {q['median']:.3f} ms [{q['p20']:.3f}, {q['p80']:.3f}]{sp}")
    return out

