"""The measured cost model of the latency budget: how long one layer takes on *this* machine in
each execution format at each density.

For every layer shape (out, in) and number of input rows, `measure_costs` times an
``nn.Linear`` (dense), a `SparseLinear` (edge list, ``edge``) and a `BlockSparseLinear` per
block size (``block16`` … ``block128``) at a grid of densities (`DENSITIES`), interleaved in
one `morphonet.timing.time_models` call, and caches the figures in a JSON file keyed by the
machine (CPU model and capability, torch version, threads) and the shape, so a second plan on
the same machine measures nothing. `CostModel.layer_ms` fits the points of a format with a
non-decreasing curve (isotonic: more live weights never cost less) and interpolates it
linearly in density (below the smallest density: its time, never extrapolated down). Each
figure is the fastest of its interleaved rounds, since load only ever adds time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from morpho_kernels.checks import check_choice, check_fraction, check_int
from morpho_kernels.formats import BLOCK_SIZES
from morpho_kernels.info import cpu_name
from morpho_kernels.nn import BlockSparseLinear, SparseLinear

from ..files import CorruptFileError, read_json, write_json
from ..timing import time_models

__all__ = ["DENSITIES", "FORMATS", "CostModel", "LayerShape", "machine_key", "measure_costs"]

# densities timed per format: dense down to 1% (edge lists pay off below ~10% on this CPU)
DENSITIES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)
FORMATS = ("edge",) + tuple(f"block{b}" for b in BLOCK_SIZES)


@dataclass(frozen=True)
class LayerShape:
    """A linear layer to plan: its name and (out_features, in_features)."""

    name: str
    out_features: int
    in_features: int

    def __post_init__(self) -> None:
        check_int("out_features", self.out_features, 1)
        check_int("in_features", self.in_features, 1)

    @property
    def params(self) -> int:
        """Weights of the layer (its connections)."""
        return self.out_features * self.in_features


def machine_key(threads: int, device: str = "cpu") -> str:
    """What the measured figures are valid for: the device's name, the CPU's vector
    capability, torch's version and the thread count."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = f"{cpu_name()} ({torch.backends.cpu.get_cpu_capability()})"
    return f"{name} | torch {torch.__version__} | threads={threads}"


def _shape_key(shape: LayerShape, rows: int, dtype: torch.dtype) -> str:
    return f"{shape.out_features}x{shape.in_features}|rows={rows}|{str(dtype).split('.')[-1]}"


class CostModel:
    """Milliseconds of one layer call per format and density, from measured points.

    Args:
        entries: ``{shape_key: {"dense": ms, "<format>": [[density, ms], ...]}}`` (what
            `measure_costs` returns; tests may give their own).
        rows: input rows of each call (batch × sequence length).
        dtype: the dtype timed.
        machine: `machine_key` of the machine that measured them.
    """

    def __init__(self, entries: dict[str, dict[str, Any]], rows: int,
                 dtype: torch.dtype = torch.float32, machine: str = ""):
        self.entries, self.rows, self.dtype, self.machine = entries, rows, dtype, machine

    @classmethod
    def from_figures(cls, figures: dict[LayerShape, dict[str, Any]], rows: int,
                     dtype: torch.dtype = torch.float32, machine: str = "given") -> CostModel:
        """A cost model from figures per shape (``{"dense": ms, "<format>": [[density, ms],
        ...]}``), e.g. measured elsewhere or made up for a test."""
        return cls({_shape_key(s, rows, dtype): dict(e) for s, e in figures.items()}, rows,
                   dtype, machine)

    def entry(self, shape: LayerShape) -> dict[str, Any]:
        """The measured figures of ``shape`` (KeyError naming it when not measured)."""
        key = _shape_key(shape, self.rows, self.dtype)
        if key not in self.entries:
            raise KeyError(f"the cost model has no figures for {shape.name} ({key}); measure "
                           f"it with measure_costs")
        return self.entries[key]

    def formats(self, shape: LayerShape) -> list[str]:
        """The sparse formats measured for ``shape``."""
        return [f for f in self.entry(shape) if f != "dense"]

    def dense_ms(self, shape: LayerShape) -> float:
        """The ``nn.Linear`` time of ``shape``, at most any format's time at density 1: a
        sparse kernel holding every weight does not beat the dense GEMM (on the development
        CPU b64 at 100% took 1.4× nn.Linear at 512², 64 rows), so a dense figure above one is
        load, not speed."""
        e = self.entry(shape)
        full = [t for f, pts in e.items() if f != "dense" for d, t in pts if d >= 1.0]
        return float(min([e["dense"]] + full))

    def layer_ms(self, shape: LayerShape, fmt: str, density: float) -> float:
        """Predicted ms of ``shape`` in format ``fmt`` ("dense", "edge", "block<b>") at
        ``density`` (fraction of live connections), interpolated linearly between the
        measured densities; below the smallest one its time (never extrapolated down)."""
        density = check_fraction("density", density, lo_open=True)
        if fmt == "dense":
            return self.dense_ms(shape)
        e = self.entry(shape)
        if fmt not in e:
            raise KeyError(f"format {fmt!r} was not measured for {shape.name} (measured: "
                           f"{sorted(e)})")
        pts = _monotone(sorted((float(d), float(t)) for d, t in e[fmt]))
        if density <= pts[0][0]:
            return pts[0][1]
        for (d0, t0), (d1, t1) in zip(pts, pts[1:]):
            if density <= d1:
                return t0 + (t1 - t0) * (density - d0) / (d1 - d0)
        return pts[-1][1]


def _monotone(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The least-squares non-decreasing fit of times over densities (pool adjacent
    violators): more live weights never cost less, so a point below its neighbours is timing
    noise (on the loaded 2-core machine single figures scattered by 2-3×)."""
    blocks: list[list[float]] = []  # [sum, count]
    for _, t in pts:
        blocks.append([t, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s_, c = blocks.pop()
            blocks[-1][0] += s_
            blocks[-1][1] += c
    fitted = [b[0] / b[1] for b in blocks for _ in range(int(b[1]))]
    return [(d, t) for (d, _), t in zip(pts, fitted)]


def _candidates(shape: LayerShape, formats: Sequence[str], densities: Sequence[float],
                dtype: torch.dtype) -> dict[str, nn.Module]:
    n, k = shape.out_features, shape.in_features
    # the dense figure is the reference of every decision: three instances, three times the
    # samples, so one unlucky stretch of load cannot inflate it
    mods: dict[str, nn.Module] = {f"dense#{i}": nn.Linear(k, n, dtype=dtype) for i in range(3)}
    for fmt in formats:
        for d in densities:
            if fmt == "edge":
                m: nn.Module = SparseLinear(k, n, density=d, dtype=dtype)
            else:
                m = BlockSparseLinear(k, n, block_size=int(fmt[5:]), density=d, pad=True,
                                      dtype=dtype)
            mods[f"{fmt}@{d:g}"] = m
    return mods


def measure_costs(shapes: Sequence[LayerShape], rows: int, *,
                  formats: Sequence[str] = ("edge", "block16", "block32", "block64"),
                  densities: Sequence[float] = DENSITIES, dtype: torch.dtype = torch.float32,
                  threads: int = 1, rounds: int = 15, cache: Optional[str] = None,
                  log: Optional[Callable[[str], None]] = None) -> CostModel:
    """Time every shape in every format at every density on this machine's CPU (module
    docstring); figures already in ``cache`` (a JSON file) for this machine are reused, new
    ones added to it. Returns the `CostModel`."""
    rows = check_int("rows", rows, 1)
    for f in formats:
        check_choice("formats", f, FORMATS)
    for d in densities:
        check_fraction("densities", d, lo_open=True)
    machine = machine_key(threads)
    store: dict[str, Any] = {}
    if cache is not None and os.path.exists(cache):
        try:
            store = read_json(cache)
        except CorruptFileError as e:  # a damaged cache is measured again, said plainly
            if log:
                log(f"cost model cache unreadable, measuring again: {e}")
            store = {}
    mine = store.setdefault(machine, {})
    x_cache: dict[int, torch.Tensor] = {}
    for shape in shapes:
        key = _shape_key(shape, rows, dtype)
        have = mine.get(key, {})
        # a format cached at other densities is timed again (its figures replaced)
        missing = [f for f in formats if f not in have
                   or sorted(float(d) for d, _ in have[f]) != sorted(map(float, densities))]
        if "dense" in have and not missing:
            continue
        torch.manual_seed(0)
        mods = _candidates(shape, missing, densities, dtype)
        x = x_cache.setdefault(shape.in_features, torch.randn(rows, shape.in_features,
                                                              dtype=dtype))
        if log:
            log(f"cost model: timing {shape.name} ({shape.out_features}×{shape.in_features}, "
                f"{rows} rows) in {len(mods)} variants")
        # short samples (0.5 ms) fit inside a scheduler time slice: on a loaded machine more of
        # them run unpreempted, and the fastest round is the machine's own speed
        res = time_models(mods, x, rounds=rounds, threads=threads, min_sample_ms=0.5)
        entry = dict(have)
        # the fastest round: load on a shared machine only ever adds time (a preempted
        # sample of a few ms can double; on the loaded 2-core machine p20 still caught them)
        entry["dense"] = min(min(res[f"dense#{i}"]["samples_ms"]) for i in range(3))
        for fmt in missing:
            entry[fmt] = [[d, min(res[f"{fmt}@{d:g}"]["samples_ms"])] for d in densities]
        mine[key] = entry
        if cache is not None:
            write_json(cache, store)
    return CostModel(mine, rows, dtype, machine)
