"""``morpho morph``: the MorphNet experiment from the command line.

``add_morph_parser(subparsers)`` registers the subcommand on the ``morpho`` parser;
``python -m morphonet.morph.cli morph ...`` runs it standalone through :func:`main`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from ..commands import add_command, standalone


def _morph(args: argparse.Namespace) -> int:
    from ..files import read_records
    from .experiment import (
        TASKS,
        MorphExperimentConfig,
        format_report,
        remeasure_latency,
        render,
        run_morph_experiment,
    )

    kw: dict = dict(out_dir=args.out)
    for flag in ("tasks", "methods") + (() if args.latency else ("ratios",)):
        if getattr(args, flag) is not None:
            kw[flag] = tuple(getattr(args, flag))
    for flag in ("seeds", "device", "width"):
        if getattr(args, flag) is not None:
            kw[flag] = getattr(args, flag)
    cfg = MorphExperimentConfig.quick(**kw) if args.quick else MorphExperimentConfig(**kw)
    if args.epochs is not None:
        cfg = cfg.replace(epochs={t: args.epochs for t in TASKS})
    if args.render or args.latency:
        partial = os.path.join(cfg.out_dir, "runs.partial.jsonl")
        if not os.path.exists(partial):
            print(f"--render / --latency: no records in {cfg.out_dir}/ (runs.partial.jsonl)",
                  file=sys.stderr)
            return 2
        runs = read_records(partial)
        if args.latency:
            remeasure_latency(cfg, runs, log=None if args.quiet else print, ratios=args.ratios)
        summary = render(cfg, runs)
    else:
        summary = run_morph_experiment(cfg, log=None if args.quiet else print)
    print(format_report(summary))
    print(f"results in {cfg.out_dir}/ (report.md, morph.json, runs.jsonl, pareto.png, "
          f"widths.png)")
    return 0


def add_morph_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``morph`` on an ``argparse`` subparsers object; returns the new parser (its
    ``func`` default runs the experiment)."""
    p = add_command(
        subparsers, "morph",
        help="MorphNet: learned widths vs uniform scaling and Torch-Pruning at matched FLOPs",
        description="MorphNet's regularisers (batch-norm γ, group lasso, gates) against "
                    "uniform width scaling and Torch-Pruning's pruners at matched FLOPs on "
                    "MNIST-1D (1-D ResNet) and digits (CNN), paired by seed; writes report.md, "
                    "morph.json, runs.jsonl, pareto.png and widths.png. A killed run "
                    "continues where it stopped.")
    p.add_argument("--tasks", nargs="+", default=None, choices=["mnist1d", "digits"])
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 6; quick 2)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of every training run (default 30; quick 4)")
    p.add_argument("--ratios", type=float, nargs="+", default=None,
                   help="FLOP targets as fractions of the full model (default 0.5 0.25 0.125)")
    p.add_argument("--methods", nargs="+", default=None,
                   choices=["uniform", "gamma", "group_lasso", "gates", "tp_bnscale",
                            "tp_groupnorm"])
    p.add_argument("--width", type=int, default=None, help="base width of the models (32)")
    p.add_argument("--device", default=None, help="cpu (default), auto, cuda or cuda:N")
    p.add_argument("--quick", action="store_true", help="short run (about 2 min on 2 cores)")
    p.add_argument("--render", action="store_true",
                   help="only rewrite the report and plots from the records in --out")
    p.add_argument("--latency", action="store_true",
                   help="time every final model in --out again against the full model (e.g. "
                        "on an idle machine; latency.jsonl; with --ratios only those FLOP "
                        "targets), then rewrite the report")
    p.add_argument("--out", default="results/morph", help="results directory")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_morph)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """Standalone entry point: ``python -m morphonet.morph.cli morph [...]``."""
    return standalone(add_morph_parser, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
