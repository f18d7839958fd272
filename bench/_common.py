"""Timing and records shared by the benchmarks (DESIGN.md convention 7).

Every record is one JSON object per line in bench/results/<op>.jsonl with run_id, op, impl,
mode, dtype, shape, median_ms, p20_ms, p80_ms, peak_mem_mb, device, torch, triton, commit, time.
Peak memory is measured on CUDA (allocator peak above the inputs); on CPU there is no allocator
peak to read, so peak_mem_mb is null and saved_mb (bytes saved for backward, measured through
saved-tensor hooks, beyond the inputs and parameters) is recorded for every device.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Optional

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _once_ms(fn: Callable[[], object], device: str) -> float:
    """One call of fn, in ms: CUDA events on GPU (fn's device time as queued), wall clock on
    CPU."""
    if device.startswith("cuda"):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_ms(fn: Callable[[], object], device: str, min_reps: int = 5, max_reps: int = 200,
            budget_s: Optional[float] = None, warmup: int = 2) -> tuple[float, float, float]:
    """Median, 20th and 80th percentile of fn's wall time in ms (CUDA events on GPU).

    Repeats until both min_reps and budget_s (default 0.25 s on GPU, 1 s on CPU) are reached."""
    if budget_s is None:
        budget_s = 0.25 if device.startswith("cuda") else 1.0
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    def more() -> bool:
        return len(times) < min_reps or time.perf_counter() - start < budget_s

    while len(times) < max_reps and more():
        times.append(_once_ms(fn, device))
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else times * 9
    return statistics.median(times), q[1], q[7]


def steady_ms(fn: Callable[[], object], device: str, calls: int = 20,
              **kwargs) -> tuple[float, float, float]:
    """`time_ms` per call of ``calls`` calls of fn queued back to back in each timed window
    (steady state: host work overlaps the queued kernels, as in a training loop); kwargs go to
    `time_ms`."""
    def window() -> None:
        for _ in range(calls):
            fn()

    med, p20, p80 = time_ms(window, device, **kwargs)
    return med / calls, p20 / calls, p80 / calls


def time_pair_ms(fa: Callable[[], object], fb: Callable[[], object], device: str,
                 min_reps: int = 20, budget_s: Optional[float] = None,
                 warmup: int = 2) -> tuple[float, float]:
    """Medians (ms) of fa and fb timed rep by rep in alternation (CUDA events on GPU), so that
    drift (clocks, a shared machine) hits both alike: for small differences between two
    nearly equal calls, e.g. a training step with and without one extra operation."""
    if budget_s is None:
        budget_s = 1.0 if device.startswith("cuda") else 2.0
    for _ in range(warmup):
        fa()
        fb()
    _sync(device)
    times: tuple[list[float], list[float]] = ([], [])
    start = time.perf_counter()
    while len(times[0]) < min_reps or time.perf_counter() - start < budget_s:
        for fn, out in ((fa, times[0]), (fb, times[1])):
            out.append(_once_ms(fn, device))
        if len(times[0]) >= 2000:
            break
    return statistics.median(times[0]), statistics.median(times[1])


def peak_mem_mb(fn: Callable[[], object], device: str) -> Optional[float]:
    """Allocator peak above what was allocated before fn (CUDA only; None on CPU)."""
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def saved_mb(fn: Callable[[], object], exclude: tuple = ()) -> float:
    """MiB that autograd keeps alive for backward beyond `exclude` (the inputs and parameters,
    which exist anyway) while fn runs; each storage counted once."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()) / 2**20


def device_name(device: str) -> str:
    from morpho_kernels.info import device_name as _name

    return _name(device)


def _commit() -> str:
    if os.environ.get("MORPHO_BENCH_COMMIT"):  # set where the tree travels without .git
        return os.environ["MORPHO_BENCH_COMMIT"]
    try:
        root = os.path.dirname(RESULTS)
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, text=True, capture_output=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Recorder:
    """Appends records of one invocation (one run_id) to bench/results/<name>.jsonl."""

    def __init__(self, name: str, device: str, out: Optional[str] = None):
        try:
            import triton

            triton_version = triton.__version__
        except Exception:  # noqa: BLE001
            triton_version = None
        self.path = out or os.path.join(RESULTS, f"{name}.jsonl")
        self.common = {
            "run_id": uuid.uuid4().hex[:12],
            "device": device_name(device),
            "torch": torch.__version__,
            "triton": triton_version,
            "commit": _commit(),
        }
        self.records: list[dict] = []
        os.makedirs(os.path.dirname(self.path), exist_ok=True)

    def add(self, **fields) -> dict:
        rec = {**self.common, **fields,
               "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        self.records.append(rec)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        return rec
