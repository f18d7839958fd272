"""``morpho grow``: the Structure Net experiment from the command line.

``add_grow_parser(subparsers)`` registers the subcommand on the ``morpho`` parser;
``python -m morphonet.growth.cli grow ...`` runs it standalone through :func:`main`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from ..commands import add_command, standalone


def _grow(args: argparse.Namespace) -> int:
    from .experiment import GrowExperimentConfig, run_grow_experiment

    if args.seed_loop:
        from .seed_loop import run_seed_loop, seed_loop_table

        extra = [f"--{k.replace('_', '-')}" for k in ("lr", "sparsity", "activation", "hidden",
                                                        "device", "methods")
                 if getattr(args, k) is not None] + (["--quick"] if args.quick else []) + (
                     ["--resume"] if args.resume else [])
        if extra:
            print(f"--seed-loop runs the seed's loop as written (its own sizes, learning rate "
                  f"and activation); drop {' '.join(extra)}", file=sys.stderr)
            return 2
        res = run_seed_loop(args.out, seeds=5 if args.seeds is None else args.seeds,
                            epochs=50 if args.epochs is None else args.epochs,
                            batch_size=32 if args.batch_size is None else args.batch_size)
        print("\n" + seed_loop_table(res))
        print(f"results in {args.out}/ (seed_loop.json, seed_loop.md)")
        return 0
    kw = dict(datasets=tuple(args.datasets), out_dir=args.out)
    for flag, key in (("seeds", "seeds"), ("batch_size", "batch_size"), ("lr", "lr"),
                      ("sparsity", "sparsity"), ("activation", "activation"),
                      ("device", "device"), ("methods", "methods")):
        if getattr(args, flag) is not None:
            kw[key] = getattr(args, flag)
    if args.hidden is not None:
        kw["hidden"] = tuple(args.hidden)
    cfg = GrowExperimentConfig.quick(**kw) if args.quick else GrowExperimentConfig(**kw)
    if args.epochs is not None:
        cfg = cfg.replace(epochs={d: args.epochs for d in cfg.datasets})
    try:
        res = run_grow_experiment(cfg, progress=not args.no_progress, resume=args.resume)
    except ValueError as e:
        if not str(e).startswith("resume:"):
            raise
        print(e, file=sys.stderr)
        return 2
    from .experiment import format_table

    print(format_table(res))
    print(f"results in {cfg.out_dir}/ (results.json, table.md, timeline.png)")
    return 0


def add_grow_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``grow`` on an ``argparse`` subparsers object; returns the new parser (its
    ``func`` default runs the experiment)."""
    p = add_command(
        subparsers, "grow",
        help="Structure Net: grow from <=0.1%% connectivity, compare with RigL/SET/static",
        description="Structure Net on digits and MNIST-1D against RigL, SET and static sparse "
                    "training at equal final density; writes results.json, table.md and "
                    "timeline.png.")
    p.add_argument("--datasets", nargs="+", default=["digits", "mnist1d"],
                   choices=["digits", "mnist1d"])
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 5; quick 2)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs for every dataset (default: digits 80, mnist1d 40)")
    p.add_argument("--hidden", "--hidden-sizes", dest="hidden", type=int, nargs="+",
                   default=None, help="hidden widths (default 160 80)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None,
                   help="batch size (default 32)")
    p.add_argument("--learning-rate", "--lr", dest="lr", type=float, default=None,
                   help="Adam learning rate (default 0.01)")
    p.add_argument("--sparsity", type=float, default=None,
                   help="connected fraction at start (default 1e-4 = 0.01%%)")
    p.add_argument("--activation", default=None, choices=["tanh", "sigmoid", "relu"],
                   help="hidden activation (default tanh)")
    p.add_argument("--device", default=None,
                   help="auto or cpu (Structure Net runs on the CPU in this version)")
    p.add_argument("--seed-loop", dest="seed_loop", action="store_true",
                   help="run the seed's documented loop as written on digits ([0, 1] and "
                   "standardised inputs; --seeds, --epochs and --batch-size apply) and check "
                   "its promises; writes seed_loop.json / seed_loop.md")
    p.add_argument("--methods", nargs="+", default=None,
                   choices=["structure", "rigl", "set", "static"],
                   help="methods to run (default all; the peers take their size from the "
                   "structure run of the same seed, which always runs)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out: finished runs are taken from "
                   "runs.partial.jsonl, the Structure Net run in progress from its checkpoint "
                   "(work/); without it both are discarded first")
    p.add_argument("--quick", action="store_true", help="short run (< 2 min on 2 CPU cores)")
    p.add_argument("--out", default="results/grow", help="results directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_grow)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """Standalone entry point: ``python -m morphonet.growth.cli grow [...]``."""
    return standalone(add_grow_parser, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
