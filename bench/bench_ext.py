"""Benchmark of the graph ops (issue 5) against their peers, measured in the same run.

ops and impls:
  extrema_stats       morpho (mk extrema_stats, backend per call), five_pass (five PyTorch
                      reductions in the input dtype), reference (reference_graph), and on GPU
                      copy (x copied into a preallocated buffer: the copy bandwidth, bytes
                      read + written, measured in the same run). On GPU morpho and copy are
                      timed per call and in steady state (20 calls per timed window, record
                      field timing); morpho's copy_fraction = its GB/s over the copy's.
  insert_connections  morpho (EdgeList insert, backend per call), reference (sorts all keys)
  sparse_linear       morpho (mk sparse_linear), dense (nn.Linear with the same weight; the
                      outputs are compared: max_err), torch_csr (CSR weight @ xᵀ), reference
mode: fwd (no autograd graph); sparse_linear also fwd+bwd (morpho and dense).

Usage:
  python bench/bench_ext.py                 # CPU grid: the issue's targets (8192x4096 fp32,
                                            # 100k into 1M edges, 4096x4096 x 256 tokens)
  python bench/bench_ext.py --quick         # seconds-long CPU grid
  python bench/bench_ext.py --device cuda   # GPU grid: 65536x4096 bf16 vs copy bandwidth,
                                            # 1M candidates into 10M edges
  python bench/bench_ext.py --device cuda --targets   # only extrema bf16 65536x4096 vs copy
Records go to bench/results/ext.jsonl (--out to change); a summary is printed at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Recorder, peak_mem_mb, steady_ms, time_ms  # noqa: E402

from morpho_kernels import reference_graph  # noqa: E402
from morpho_kernels.formats import EdgeList  # noqa: E402
from morpho_kernels.nn import SparseLinear  # noqa: E402
from morpho_kernels.ops import edges as edges_ops  # noqa: E402
from morpho_kernels.ops import extrema as extrema_ops  # noqa: E402
from morpho_kernels.ops import sparse_linear as sl_ops  # noqa: E402

GRIDS = {
    # extrema (rows, C, dtype); insert (n = k, edges, candidates); sparse (tokens, n = k, densities)
    "quick": {"extrema": [(1024, 1024, torch.float32)], "insert": [(1024, 100_000, 10_000)],
              "sparse": [(64, 1024, [0.01, 0.1])]},
    "cpu": {"extrema": [(8192, 4096, torch.float32), (8192, 4096, torch.bfloat16)],
            "insert": [(4096, 1_000_000, 100_000)],
            "sparse": [(256, 4096, [0.0001, 0.001, 0.01, 0.1]), (16, 4096, [0.01])]},
    "targets": {"extrema": [(65536, 4096, torch.bfloat16)], "insert": [], "sparse": []},
    "cuda": {"extrema": [(65536, 4096, torch.bfloat16), (65536, 4096, torch.float32)],
             "insert": [(16384, 10_000_000, 1_000_000)],
             "sparse": [(256, 4096, [0.001, 0.01, 0.1]), (4096, 4096, [0.01, 0.1])]},
}
LOW, HIGH = -1.0, 1.0


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _add(rec, device, op, impl, mode, dtype, shape, fn, dispatch=None, nbytes=None, calls=1,
         finish=None, **extra):
    """Time fn and write its record; `backend` is read from the dispatcher after the calls,
    `gbps` is nbytes / median time, both per call. fn makes one call; calls > 1 times it in
    steady state (`_common.steady_ms`: `calls` queued per timed window). finish(fields) may
    add fields computed from the timing before the record is written."""
    med, p20, p80 = steady_ms(fn, device, calls) if calls > 1 else time_ms(fn, device)
    if dispatch is not None:
        extra["backend"] = dispatch.last
    if nbytes is not None:
        extra["gbps"] = nbytes / med / 1e6
    fields = dict(op=op, impl=impl, mode=mode, dtype=_dt(dtype), shape=shape, median_ms=med,
                  p20_ms=p20, p80_ms=p80, peak_mem_mb=peak_mem_mb(fn, device), **extra)
    if finish is not None:
        finish(fields)
    return rec.add(**fields)


STEADY_CALLS = 20  # calls per timed window in steady state (launch overhead hidden by the queue)


def bench_extrema(rec, device, rows, c, dtype, peers=True):
    """extrema_stats against its peers; on GPU also the device copy of x (bytes read + written,
    into a preallocated buffer) measured in the same run, per call and in steady state, and each
    morpho record's `copy_fraction`: its bandwidth (bytes read) over the copy's."""
    x = torch.randn(rows, c, device=device).to(dtype)
    shape = {"rows": rows, "c": c}
    nbytes = x.numel() * x.element_size()
    cuda = device.startswith("cuda")
    copy_gbps = {}
    if cuda:
        dst = torch.empty_like(x)
        for timing, n in (("per_call", 1), ("steady", STEADY_CALLS)):
            r = _add(rec, device, "extrema_stats", "copy", "fwd", dtype, shape,
                     lambda: dst.copy_(x), nbytes=2 * nbytes, calls=n, timing=timing)
            copy_gbps[timing] = r["gbps"]
        del dst

    def five_pass():
        return ((x < LOW).sum(0), (x > HIGH).sum(0), x.mean(0, dtype=torch.float32), x.amin(0),
                x.amax(0))

    def morpho():
        return extrema_ops.extrema_stats(x, LOW, HIGH)

    for timing, n in (("per_call", 1), ("steady", STEADY_CALLS)) if cuda else (("per_call", 1),):
        _add(rec, device, "extrema_stats", "morpho", "fwd", dtype, shape, morpho,
             dispatch=extrema_ops.DISPATCH, nbytes=nbytes, calls=n, timing=timing,
             copy_fraction=None, finish=lambda f, t=timing: _copy_fraction(f, copy_gbps, t))
    if not peers:
        return
    impls = {"five_pass": five_pass,
             "reference": lambda: reference_graph.extrema_stats(x.view(rows, c, 1), LOW, HIGH)}
    for impl, fn in impls.items():  # gbps: bytes read / time
        _add(rec, device, "extrema_stats", impl, "fwd", dtype, shape, fn, nbytes=nbytes)


def _copy_fraction(fields: dict, copy_gbps: dict, timing: str) -> None:
    if timing in copy_gbps:
        fields["copy_fraction"] = fields["gbps"] / copy_gbps[timing]


def bench_insert(rec, device, n, n_edges, n_cand):
    g = torch.Generator(device=device).manual_seed(0)
    keys = torch.randperm(n * n, device=device, generator=g)[:n_edges + n_cand]
    el = EdgeList.from_coo(keys[:n_edges] % n, keys[:n_edges] // n, n, n,
                           capacity=n_edges + n_cand)
    # half new connections, a quarter duplicates of existing edges, a quarter in-batch repeats
    new = keys[n_edges:n_edges + n_cand // 2]
    dup = keys[:n_cand // 4]
    cand = torch.cat([new, dup, new[:n_cand - new.numel() - dup.numel()]])
    cand = cand[torch.randperm(cand.numel(), device=device, generator=g)]
    src, dst = cand % n, cand // n
    values = torch.randn(el.capacity, device=device)
    shape = {"n": n, "k": n, "edges": n_edges, "candidates": n_cand}
    _add(rec, device, "insert_connections", "morpho", "fwd", torch.int64, shape,
         lambda: edges_ops.insert_connections(el, src, dst, 0.0, values=values),
         dispatch=edges_ops.DISPATCH)
    _add(rec, device, "insert_connections", "reference", "fwd", torch.int64, shape,
         lambda: reference_graph.insert_connections(el.row_ptr, el.col, src, dst, n))


def bench_sparse(rec, device, tokens, n, density, dtype=torch.float32):
    torch.manual_seed(0)
    lin = torch.nn.Linear(n, n, device=device, dtype=dtype)
    layer = SparseLinear.from_linear(lin, density=density)
    dense = layer.to_linear()  # the same weights, dense
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta"
        w_csr = dense.weight.detach().to_sparse_csr()
    x = torch.randn(tokens, n, device=device, dtype=dtype)
    xg = x.clone().requires_grad_()
    gy = torch.randn(tokens, n, device=device, dtype=dtype)
    shape = {"tokens": tokens, "n": n, "k": n, "density": density}
    with torch.no_grad():
        err = float((layer(x) - dense(x)).abs().max())
    el, v, b = layer.edges, layer.values.detach(), layer.bias.detach()

    def nograd(f):
        def run():
            with torch.no_grad():
                return f()
        return run

    impls = {"morpho": nograd(lambda: layer(x)), "dense": nograd(lambda: dense(x)),
             "torch_csr": nograd(lambda: (w_csr @ x.t()).t() + b),
             "reference": nograd(lambda: reference_graph.sparse_linear(x, el.row_ptr, el.col, v,
                                                                       b))}
    for impl, fn in impls.items():
        _add(rec, device, "sparse_linear", impl, "fwd", dtype, shape, fn,
             dispatch=sl_ops.DISPATCH if impl == "morpho" else None,
             max_err=err if impl == "morpho" else None)
    for impl, mod in (("morpho", layer), ("dense", dense)):
        def fwd_bwd(mod=mod):
            torch.autograd.backward(mod(xg), gy)
            xg.grad = None
            mod.zero_grad(set_to_none=True)
        _add(rec, device, "sparse_linear", impl, "fwd+bwd", dtype, shape, fwd_bwd,
             dispatch=sl_ops.DISPATCH if impl == "morpho" else None)


def summarize(records: list[dict]) -> str:
    """Markdown: morpho against each peer, per op, case and mode (and timing, per call or steady
    state, for runs that record it: the table of earlier runs renders as it always did)."""
    timed = any("timing" in r for r in records)
    by: dict = {}
    for r in records:
        key = (r["op"], r["dtype"], tuple(sorted(r["shape"].items())), r["mode"],
               r.get("timing", "per_call"))
        by.setdefault(key, {})[r["impl"]] = r
    lines = ["| op | dtype | shape | mode |" + (" timing |" if timed else "") +
             " morpho ms | peer | peer ms | peer/morpho | note |",
             "|---|---|---|---|" + ("---|" if timed else "") + "---:|---|---:|---:|---|"]
    for (op, dtype, shape, mode, timing), c in by.items():
        mo = c.get("morpho")
        if mo is None:
            continue
        note = f"backend {mo.get('backend')}"
        if mo.get("gbps"):
            note += f", {mo['gbps']:.0f} GB/s"
            if mo.get("copy_fraction") is not None:  # issue 22: >= 70% (stretch 85%)
                note += f" = {mo['copy_fraction']:.0%} of copy"
            elif "copy" in c:  # runs before copy_fraction was recorded
                note += f" = {mo['gbps'] / c['copy']['gbps']:.0%} of copy"
        if mo.get("max_err") is not None:
            note += f", max |y - dense| {mo['max_err']:.1e}"
        sh = ", ".join(f"{k}={v}" for k, v in shape)
        for peer, r in c.items():
            if peer == "morpho":
                continue
            lines.append(f"| {op} | {dtype} | {sh} | {mode} | " +
                         (f"{timing} | " if timed else "") +
                         f"{mo['median_ms']:.3f} | {peer} | "
                         f"{r['median_ms']:.3f} | {r['median_ms'] / mo['median_ms']:.2f} | "
                         f"{note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--quick", action="store_true", help="small CPU grid (seconds)")
    p.add_argument("--ops", nargs="*", default=["extrema", "insert", "sparse"],
                   help="subset of: extrema insert sparse")
    p.add_argument("--out", help="records file (default bench/results/ext.jsonl)")
    p.add_argument("--targets", action="store_true",
                   help="issue 22's target case only: extrema_stats bf16 65536x4096 against the\n"
                        "device copy, per call and steady state, no other peers (GPU)")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    if args.targets and not args.device.startswith("cuda"):
        p.error("--targets is the GPU target case: use it with --device cuda")
    grid = GRIDS["targets" if args.targets else "quick" if args.quick else
                 ("cuda" if args.device.startswith("cuda") else "cpu")]
    if args.targets:
        args.ops = ["extrema"]
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for every impl
    rec = Recorder("ext", args.device, args.out)
    print(f"graph-ops benchmark on {rec.common['device']}, run_id {rec.common['run_id']}",
          flush=True)
    if "extrema" in args.ops:
        for rows, c, dtype in grid["extrema"]:
            print(f"  extrema_stats {rows}x{c} {_dt(dtype)}", flush=True)
            bench_extrema(rec, args.device, rows, c, dtype, peers=not args.targets)
    if "insert" in args.ops:
        for n, e, cands in grid["insert"]:
            print(f"  insert_connections {cands} into {e} ({n}x{n})", flush=True)
            bench_insert(rec, args.device, n, e, cands)
    if "sparse" in args.ops:
        for tokens, n, dens in grid["sparse"]:
            for d in dens:
                print(f"  sparse_linear tokens={tokens} n=k={n} density={d}", flush=True)
                bench_sparse(rec, args.device, tokens, n, d)
    print(summarize(rec.records))
    print(f"records: {rec.path}")


if __name__ == "__main__":
    main()
