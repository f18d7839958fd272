"""Benchmark of morpho::block_sparse_linear against its peers, measured in the same run.

impl:
  morpho     mk.block_sparse_linear with the backend chosen per call (recorded in `backend`)
  dense      F.linear(x, W) on the densified weight (cuBLAS / MKL): the peer to beat
  torch_bsr  F.linear(x, W.to_sparse_bsr(b)) (forward only: torch has no BSR backward); on
             CUDA torch's BSR Triton kernel runs its default meta-parameters, tuned on A100s:
             its records say `note: untuned on H100`
  torch_csr  CPU only: F.linear(x, W.to_sparse_csr()) (forward only)
  regrow     one BlockSparseLinear.regrow of 10% of the blocks (mode `regrow`), with the
             morpho fwd+bwd step of the same case to compare against; on CUDA also mode
             `regrow_graphed`: the same regrow replayed from one CUDA graph (GraphedRegrow);
             mode `train_step+regrow`: a training step (fwd+bwd + AdamW step) with one regrow
             after it, timed alternately with the plain step (`step_ms`): `regrow_marginal_ms`
             is what the regrow adds to a training loop (on GPU its launches overlap the
             step's queued kernels); `train_step+regrow_graphed` likewise with GraphedRegrow
mode: fwd (no autograd graph), fwd+bwd (forward, backward to x, values / weight and bias).
Every fwd+bwd sets the gradients of its parameters to None after each iteration, morpho's and
the dense peer's alike (an accumulating peer would pay an extra add per parameter). morpho and
dense records carry `tflops` (the live blocks' FLOPs: 2·tokens·n·k·density per GEMM, three
GEMMs for fwd+bwd).

Usage:
  python bench/bench_block_sparse.py                  # CPU grid (fp32, 256 tokens)
  python bench/bench_block_sparse.py --quick          # seconds
  python bench/bench_block_sparse.py --device cuda    # GPU grid incl. the issue's targets
  python bench/bench_block_sparse.py --targets        # only issue 22's targets (bf16, b128,
      8192 tokens, 8192², 90% and 50%; morpho and dense, fwd and fwd+bwd, no regrow), the
      kernels tuned among block_sparse.GPU_SCRIPT_CONFIGS only (2-3 each): minutes on an H100
  python bench/bench_block_sparse.py --regrow-targets # the 90% case's fwd+bwd and regrow modes
Records go to bench/results/block_sparse.jsonl; a ratio summary is printed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Recorder, peak_mem_mb, time_ms, time_pair_ms  # noqa: E402

from morpho_kernels.nn import BlockSparseLinear  # noqa: E402
from morpho_kernels.ops.block_sparse_linear import DISPATCH  # noqa: E402
from morpho_kernels.ops.regrow import DISPATCH as REGROW_DISPATCH  # noqa: E402

# grid: (tokens, sizes n = k, blocks, sparsities, dtypes)
GRIDS = {
    "quick": (256, [1024], [32], [0.9], [torch.float32]),
    "cpu": (256, [2048, 4096], [32, 64, 128], [0.5, 0.75, 0.9, 0.95], [torch.float32]),
    # largest first: the first four cases are the targets (bf16, 8192², block 128), so
    # a run cut short by a time limit still measures them
    "cuda": (8192, [8192, 4096, 2048], [128, 64, 32], [0.5, 0.75, 0.9, 0.95],
             [torch.bfloat16, torch.float32]),
    # issue 22's targets: fwd+bwd ≥ 5× dense at 90% block sparsity, ≥ 1.6× at 50%
    "targets": (8192, [8192], [128], [0.9, 0.5], [torch.bfloat16]),
    # one regrow of 10% of the blocks inside a training step: < 2% of the step's device time
    "regrow": (8192, [8192], [128], [0.9], [torch.bfloat16]),
}


def _layer(n: int, block: int, sparsity: float, dtype, device) -> BlockSparseLinear:
    torch.manual_seed(0)
    layer = BlockSparseLinear(n, n, bias=True, block_size=block, density=1.0 - sparsity,
                              device=device, dtype=dtype)
    return layer


def _dense_trainable(layer: BlockSparseLinear):
    """(F.linear on a dense copy of the layer, its parameters): the fwd+bwd peer."""
    wd = layer.dense_weight().clone().requires_grad_()
    bd = layer.bias.detach().clone().requires_grad_()
    return (lambda x: F.linear(x, wd, bd)), [wd, bd]


def _peers(layer: BlockSparseLinear, device: str, targets_only: bool = False) -> dict:
    """Forward peers: dense, and unless ``targets_only`` torch's BSR (CSR on CPU)."""
    w = layer.dense_weight()
    b = layer.bias.detach()
    peers = {"dense": lambda x: F.linear(x, w, b)}
    if targets_only:
        return peers
    for name, conv in (("torch_bsr", lambda: w.to_sparse_bsr(layer.block_size)),
                       ("torch_csr", lambda: w.to_sparse_csr())):
        if name == "torch_csr" and device != "cpu":
            continue
        try:
            ws = conv()
            F.linear(torch.zeros(8, w.shape[1], device=device, dtype=w.dtype), ws, b)
            peers[name] = lambda x, ws=ws: F.linear(x, ws, b)
        except (RuntimeError, NotImplementedError) as exc:
            print(f"    {name} unavailable: {type(exc).__name__}: {str(exc)[:100]}")
    return peers


def bench_case(rec: Recorder, device: str, tokens: int, n: int, block: int, sparsity: float,
               dtype: torch.dtype, only: str | None = None) -> None:
    """Time one case: every impl and mode, or with ``only="targets"`` morpho and dense in fwd
    and fwd+bwd, with ``only="regrow"`` morpho's fwd+bwd and the regrow modes."""
    layer = _layer(n, block, sparsity, dtype, device)
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(tokens, n, device=device, dtype=dtype, generator=g)
    xg = x.clone().requires_grad_()
    grad = torch.randn(tokens, n, device=device, dtype=dtype, generator=g)
    shape = {"tokens": tokens, "n": n, "k": n, "block": block, "sparsity": sparsity,
             "blocks": layer.values.shape[0]}
    common = {"op": "block_sparse_linear", "dtype": str(dtype).replace("torch.", "")}

    def record(impl, mode, fn, backend=None, shape=shape, extra=lambda med: {}):
        med, p20, p80 = time_ms(fn, device)
        backend = DISPATCH.last if backend == "morpho" else None  # read after the calls
        if backend == "triton" and not mode.startswith("regrow"):
            from morpho_kernels.triton import block_sparse as tbs

            tuned = {"tuned": tbs.tuned_configs(tokens, shape["blocks"])}  # autotune's choice
            if mode == "fwd+bwd":
                tuned["sdd_split"] = tbs.last_sdd_split  # token chunks of the dW launch
            tuned["tma"] = dict(tbs.last_tma)  # TMA descriptors or the pointer path, per kernel
        else:
            tuned = {}
        if impl in ("morpho", "dense") and mode in ("fwd", "fwd+bwd"):
            gemms = 1 if mode == "fwd" else 3
            flops = 2 * tokens * n * n * (1.0 - sparsity) * gemms
            extra_tflops = {"tflops": flops / (med * 1e-3) / 1e12}
        else:
            extra_tflops = {}
        if impl == "torch_bsr" and device.startswith("cuda"):
            extra_tflops["note"] = "untuned on H100 (torch's BSR Triton kernel, default meta)"
        rec.add(**common, shape=shape, impl=impl, mode=mode, median_ms=med, p20_ms=p20,
                p80_ms=p80, peak_mem_mb=peak_mem_mb(fn, device), backend=backend,
                **tuned, **extra_tflops, **extra(med))
        return med

    def fwd(fn):
        def run():
            with torch.no_grad():
                return fn(x)
        return run

    def fwd_bwd(fn, params):
        def run():
            y = fn(xg)
            torch.autograd.backward(y, grad)
            xg.grad = None
            for p in params:
                p.grad = None
        return run

    if only != "regrow":
        record("morpho", "fwd", fwd(layer), "morpho")
        for name, fn in _peers(layer, device, only == "targets").items():
            record(name, "fwd", fwd(fn))
    step = record("morpho", "fwd+bwd", fwd_bwd(layer, list(layer.parameters())), "morpho")
    if only != "regrow":
        dense, dense_params = _dense_trainable(layer)
        record("dense", "fwd+bwd", fwd_bwd(dense, dense_params))  # grads reset like morpho's
    if only == "targets":
        return
    # one regrow of 10% of the blocks, scores fixed (the layout keeps changing across reps)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-4)
    fwd_bwd(layer, [])()
    opt.step()
    k = max(1, layer.values.shape[0] // 10)
    nbr, nbc = layer.layout.grid
    k = min(k, nbr * nbc - layer.values.shape[0])
    if k > 0:
        scores = torch.rand(nbr, nbc, device=device, generator=g)
        # regrow_backend: the regrow dispatcher's choice (three Triton kernels on CUDA, or the
        # ATen path it fell back to), read after the calls
        record("morpho", "regrow", lambda: layer.regrow(k, scores, optimizer=opt),
               shape={**shape, "regrow_blocks": k},
               extra=lambda med: {"regrow_over_step": med / step,
                                  "regrow_backend": REGROW_DISPATCH.last})
        graphed = None
        if device.startswith("cuda"):  # the same regrow replayed from one CUDA graph
            from morpho_kernels.nn import GraphedRegrow

            graphed = GraphedRegrow(layer, k, optimizer=opt)
            record("morpho", "regrow_graphed", lambda: graphed(scores),
                   shape={**shape, "regrow_blocks": k},
                   extra=lambda med: {"regrow_over_step": med / step,
                                      "regrow_backend": REGROW_DISPATCH.last})
        # What a training loop pays: a training step (fwd+bwd, optimizer step) with and
        # without one regrow after it, timed in alternation. On a GPU the regrow's host-side
        # launches overlap the step's queued kernels (nothing synchronises), so the difference
        # is the device time the regrow adds, unlike `regrow` above, which times it alone.
        params = list(layer.parameters())

        def train_step():
            fwd_bwd(layer, [])()
            opt.step()
            for p in params:
                p.grad = None

        variants = {"eager": lambda: layer.regrow(k, scores, optimizer=opt)}
        if graphed is not None:
            variants["graphed"] = lambda: graphed(scores)
        for variant, regrow in variants.items():
            def train_step_regrow(regrow=regrow):
                train_step()
                regrow()

            plain, with_regrow = time_pair_ms(train_step, train_step_regrow, device)
            mode = "train_step+regrow" + ("_graphed" if variant == "graphed" else "")
            rec.add(**common, shape={**shape, "regrow_blocks": k}, impl="morpho", mode=mode,
                    median_ms=with_regrow,
                    step_ms=plain, regrow_marginal_ms=with_regrow - plain,
                    regrow_over_train_step=(with_regrow - plain) / plain, backend=None,
                    regrow_backend=REGROW_DISPATCH.last)


def summarize(records: list[dict]) -> str:
    """Markdown table: morpho against its peers for each case of one run."""
    by: dict = {}
    for r in records:
        s = r["shape"]
        key = (r["dtype"], s["n"], s["block"], s["sparsity"])
        by.setdefault(key, {})[(r["impl"], r["mode"])] = r
    lines = ["| dtype | n=k | block | sparsity | fwd ms | dense fwd ms | dense/morpho fwd | "
             "bsr/morpho fwd | csr/morpho fwd | fwd+bwd ms | dense/morpho fwd+bwd | "
             "regrow ms (% of step) | graphed regrow ms (% of step) | "
             "regrow in a training step ms (% of it) | graphed, in a training step | backend |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]

    def ratio(c, peer, mode):
        return (f"{c[(peer, mode)]['median_ms'] / c[('morpho', mode)]['median_ms']:.2f}"
                if (peer, mode) in c and ("morpho", mode) in c else "n/a")

    for key in sorted(by):
        c = by[key]
        mf, mb = c.get(("morpho", "fwd")), c.get(("morpho", "fwd+bwd"))
        if not mb:  # --regrow-targets has no fwd rows: their cells read n/a
            continue
        df = c.get(("dense", "fwd"))
        mf_s, df_s = (f"{r['median_ms']:.3f}" if r else "n/a" for r in (mf, df))
        rg_s, rgg_s = (
            f"{r['median_ms']:.3f} ({100 * r['median_ms'] / mb['median_ms']:.1f}%)" if r else "n/a"
            for r in (c.get(("morpho", "regrow")), c.get(("morpho", "regrow_graphed"))))
        in_step = (
            f"{r['regrow_marginal_ms']:.3f} ({100 * r['regrow_over_train_step']:.1f}%)"
            if r else "n/a"
            for r in (c.get(("morpho", "train_step+regrow")),
                      c.get(("morpho", "train_step+regrow_graphed"))))
        st_s, stg_s = in_step
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {key[3]:.2f} | {mf_s} | "
            f"{df_s} | {ratio(c, 'dense', 'fwd')} | "
            f"{ratio(c, 'torch_bsr', 'fwd')} | {ratio(c, 'torch_csr', 'fwd')} | "
            f"{mb['median_ms']:.3f} | {ratio(c, 'dense', 'fwd+bwd')} | {rg_s} | {rgg_s} | "
            f"{st_s} | {stg_s} | "
            f"{mb['backend']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="one small CPU case (seconds)")
    p.add_argument("--tokens", type=int, help="override the token count")
    p.add_argument("--sizes", type=int, nargs="*", help="override n = k")
    p.add_argument("--blocks", type=int, nargs="*", help="override block sizes")
    p.add_argument("--sparsities", type=float, nargs="*", help="override block sparsities")
    p.add_argument("--dtypes", nargs="*", help="override dtypes, e.g. bfloat16 float32")
    p.add_argument("--out", help="records file (default bench/results/block_sparse.jsonl)")
    p.add_argument("--targets", action="store_true",
                   help="only issue 22's target cases, kernels tuned among "
                        "block_sparse.GPU_SCRIPT_CONFIGS (a GPU run; --device cpu for a check)")
    p.add_argument("--regrow-targets", action="store_true",
                   help="only issue 22's regrow target: the 90%% case's fwd+bwd and regrow modes "
                        "(one regrow inside a training step), kernels tuned as --targets")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    grid = "quick" if args.quick else ("cuda" if args.device.startswith("cuda") else "cpu")
    only = "targets" if args.targets else ("regrow" if args.regrow_targets else None)
    if args.targets and args.regrow_targets:
        p.error("give --targets or --regrow-targets, not both")
    tokens, sizes, blocks, sparsities, dtypes = GRIDS[only or grid]
    tokens = args.tokens or tokens
    sizes, blocks = args.sizes or sizes, args.blocks or blocks
    sparsities = args.sparsities or sparsities
    dtypes = [getattr(torch, d) for d in args.dtypes] if args.dtypes else dtypes
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for every impl
    rec = Recorder("block_sparse", args.device, args.out)
    cases = [(d, n, b, s) for d in dtypes for n in sizes for b in blocks for s in sparsities]
    print(f"block_sparse benchmark on {rec.common['device']} ({len(cases)} cases, {tokens} "
          f"tokens), run_id {rec.common['run_id']}", flush=True)
    with contextlib.ExitStack() as stack:
        if only:  # 2-3 configs per kernel, tuned at each case (MORPHO_AUTOTUNE=1)
            from morpho_kernels.triton import block_sparse as tbs

            for kernel, allowed in tbs.GPU_SCRIPT_CONFIGS.items():
                stack.enter_context(tbs.candidate_configs(kernel, *allowed))
        for i, (dtype, n, b, s) in enumerate(cases, 1):
            print(f"  [{i}/{len(cases)}] {str(dtype).replace('torch.', '')} n=k={n} block={b} "
                  f"sparsity={s}", flush=True)
            bench_case(rec, args.device, tokens, n, b, s, dtype, only)
    print(summarize(rec.records))
    print(f"records: {rec.path}")


if __name__ == "__main__":
    main()
