"""Benchmark of morpho::masked_linear against its peers, measured in the same run.

impl:
  morpho               mk.masked_linear with the backend chosen per call (recorded in `backend`)
  morpho_fused         GPU only: the fused sigmoid-prologue kernel forced (crossover study)
  morpho_materialized  GPU only: materialise W ⊙ σ(M/T) then the vendor GEMM, forced
  eager                F.linear(x, W * sigmoid(M / T), b) with autograd
  dense                F.linear(x, W, b) on the same weight (the floor)
mode: fwd (inference, no autograd graph) and fwd+bwd (forward, then backward to x, W, M, b;
every impl's gradients, the dense peer's included, are reset to None after each iteration, so
each allocates fresh ones and none pays an accumulation).
timing: per_call (one call between two synchronisations: host time included, as a caller
that waits sees it) and steady (ITERS calls back to back per synchronisation, the time per
call: host work overlaps the queued kernels, as in a training loop). peak_mem_mb: the
allocator's peak above the inputs during one call (CUDA only).

Usage:
  python bench/bench_masked_linear.py              # this machine's default grid
  python bench/bench_masked_linear.py --quick      # a few small CPU cases (make demo)
  python bench/bench_masked_linear.py --device cuda  # full GPU grid incl. the issue's target
  python bench/bench_masked_linear.py --targets    # issue 22's case only: bf16, 8192 × 4096²,
                                                   # fwd+bwd, morpho / dense / eager (seconds)
Records go to bench/results/masked_linear.jsonl; a ratio summary is printed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Recorder, peak_mem_mb, saved_mb, steady_ms, time_ms  # noqa: E402

import morpho_kernels as mk  # noqa: E402
from morpho_kernels.ops.masked_linear import DISPATCH  # noqa: E402

T = 0.7
GRIDS = {
    # (tokens, n = k, dtypes): CPU grids sized for 2 cores
    "quick": ([16, 256], [1024], [torch.float32]),
    "cpu": ([16, 256, 2048], [1024, 2048, 4096], [torch.float32]),
    "cuda": ([16, 64, 256, 1024, 4096, 8192, 16384], [1024, 4096, 8192],
             [torch.bfloat16, torch.float32]),
}


ITERS = 20  # calls per synchronisation in steady-state timing
TARGET = (8192, 4096, torch.bfloat16)  # issue 22: tokens, n = k, dtype


def _steady(fn, device: str) -> tuple[float, float, float]:
    """Steady-state time per call: ITERS calls per timed window (_common.steady_ms)."""
    return steady_ms(fn, device, ITERS)


@contextlib.contextmanager
def _env(name: str, value: str | None):
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _impls(device: str, targets: bool = False) -> dict:
    def morpho(x, w, m, t, b):
        return mk.masked_linear(x, w, m, t, b)

    def eager(x, w, m, t, b):
        return F.linear(x, w * torch.sigmoid(m / t), b)

    def dense(x, w, m, t, b):
        return F.linear(x, w, b)

    impls = {"morpho": (morpho, None), "eager": (eager, None), "dense": (dense, None)}
    if device.startswith("cuda") and not targets:
        impls["morpho_fused"] = (morpho, "1000000000")
        impls["morpho_materialized"] = (morpho, "0")
    return impls


def bench_case(rec: Recorder, device: str, tokens: int, n: int, dtype: torch.dtype,
               targets: bool = False) -> list[dict]:
    """Records of every impl, mode and timing for one case (``targets``: fwd+bwd of morpho,
    dense and eager only)."""
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(tokens, n, device=device, dtype=dtype, generator=g)
    w = (torch.randn(n, n, device=device, dtype=dtype, generator=g) / n**0.5).requires_grad_()
    m = (torch.randn(n, n, device=device, dtype=dtype, generator=g) * 2).requires_grad_()
    b = torch.zeros(n, device=device, dtype=dtype, requires_grad=True)
    xg = x.clone().requires_grad_()
    t = torch.tensor(T, device=device)
    grad = torch.randn(tokens, n, device=device, dtype=dtype, generator=g)
    shape = {"tokens": tokens, "n": n, "k": n}
    out = []
    for impl, (fn, fused_max) in _impls(device, targets).items():
        with _env("MORPHO_FUSED_MAX_TOKENS", fused_max):

            def fwd(fn=fn):
                with torch.no_grad():
                    return fn(x, w, m, t, b)

            def fwd_bwd(fn=fn):
                y = fn(xg, w, m, t, b)
                torch.autograd.backward(y, grad)
                xg.grad = w.grad = m.grad = b.grad = None  # every impl, dense included

            modes = (("fwd+bwd", fwd_bwd),) if targets else (("fwd", fwd), ("fwd+bwd", fwd_bwd))
            for mode, run in modes:
                peak = peak_mem_mb(run, device)
                saved = (saved_mb(lambda fn=fn: fn(xg, w, m, t, b), (xg, w, m, t, b))
                         if mode == "fwd+bwd" else 0.0)
                for timing, timer in (("per_call", time_ms), ("steady", _steady)):
                    med, p20, p80 = timer(run, device)
                    backend = DISPATCH.last if impl.startswith("morpho") else None
                    out.append(rec.add(
                        op="masked_linear", impl=impl, mode=mode, timing=timing,
                        iters_per_sync=ITERS if timing == "steady" else 1,
                        dtype=str(dtype).replace("torch.", ""), shape=shape, median_ms=med,
                        p20_ms=p20, p80_ms=p80, peak_mem_mb=peak, saved_mb=saved,
                        backend=backend,
                    ))
    return out


def summarize(records: list[dict]) -> str:
    """Markdown table: morpho against dense and eager for each case and timing of one run
    (records from before timings were split count as per call)."""
    by: dict = {}
    for r in records:
        key = (r["dtype"], r["shape"]["n"], r["shape"]["tokens"], r["mode"],
               r.get("timing", "per_call"))
        by.setdefault(key, {})[r["impl"]] = r
    lines = ["| dtype | n=k | tokens | mode | timing | morpho ms | dense ms | eager ms | "
             "morpho/dense | eager/morpho | extra saved MiB morpho/eager | "
             "peak MiB morpho/eager/dense | backend |",
             "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for key in sorted(by):
        c = by[key]
        mo, de, ea = c.get("morpho"), c.get("dense"), c.get("eager")
        if not (mo and de and ea):
            continue
        peak = (f"{mo['peak_mem_mb']:.0f} / {ea['peak_mem_mb']:.0f} / {de['peak_mem_mb']:.0f}"
                if mo["peak_mem_mb"] is not None else "n/a (CPU)")
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {key[4]} | {mo['median_ms']:.3f} | "
            f"{de['median_ms']:.3f} | {ea['median_ms']:.3f} | "
            f"{mo['median_ms'] / de['median_ms']:.2f} | {ea['median_ms'] / mo['median_ms']:.2f} | "
            f"{mo['saved_mb']:.0f} / {ea['saved_mb']:.0f} | {peak} | {mo['backend']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small CPU grid (seconds)")
    p.add_argument("--targets", action="store_true",
                   help="issue 22's case only: bf16 8192 x 4096^2 fwd+bwd, morpho / dense / "
                        "eager, per call and steady state, peak memory (the GPU script's stage)")
    p.add_argument("--tokens", type=int, nargs="*", help="override the token counts")
    p.add_argument("--sizes", type=int, nargs="*", help="override n = k")
    p.add_argument("--dtypes", nargs="*", help="override dtypes, e.g. bfloat16 float32")
    p.add_argument("--out", help="records file (default bench/results/masked_linear.jsonl)")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    tokens, sizes, dtypes = GRIDS["quick" if args.quick else
                                  ("cuda" if args.device.startswith("cuda") else "cpu")]
    if args.targets:
        tokens, sizes, dtypes = [TARGET[0]], [TARGET[1]], [TARGET[2]]
    tokens, sizes = args.tokens or tokens, args.sizes or sizes
    dtypes = [getattr(torch, d) for d in args.dtypes] if args.dtypes else dtypes
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for every impl
    rec = Recorder("masked_linear", args.device, args.out)
    cases = [(d, t, n) for d in dtypes for n in sizes for t in tokens]
    print(f"masked_linear benchmark on {rec.common['device']} ({len(cases)} cases), "
          f"run_id {rec.common['run_id']}", flush=True)
    for i, (dtype, tok, n) in enumerate(cases, 1):
        print(f"  [{i}/{len(cases)}] {str(dtype).replace('torch.', '')} tokens={tok} n=k={n}",
              flush=True)
        bench_case(rec, args.device, tok, n, dtype, targets=args.targets)
    print(summarize(rec.records))
    print(f"records: {rec.path}")


if __name__ == "__main__":
    main()
