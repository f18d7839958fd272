"""``morpho evolve``: the evolution-system experiment from the command line.

``add_evolve_parser(subparsers)`` registers the subcommand on the ``morpho`` parser;
``python -m morphonet.evolution.cli evolve ...`` runs it standalone through :func:`main`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from ..commands import add_command, standalone


def _evolve(args: argparse.Namespace) -> int:
    from .experiment import EvolveExperimentConfig, format_table, run_evolve_experiment

    kw: dict = dict(datasets=tuple(args.datasets), out_dir=args.out)
    for key in ("seeds", "iterations", "batch_size", "lr", "start_sparsity"):
        if getattr(args, key) is not None:
            kw[key] = getattr(args, key)
    if args.hidden is not None:
        kw["hidden"] = tuple(args.hidden)
    if args.methods is not None:
        kw["methods"] = tuple(args.methods)
    if args.epochs is not None:
        kw["epochs"] = {d: args.epochs for d in args.datasets}
    cfg = EvolveExperimentConfig.quick(**kw) if args.quick else EvolveExperimentConfig(**kw)
    res = run_evolve_experiment(cfg, progress=not args.no_progress)
    print(format_table(res))
    print(f"results in {cfg.out_dir}/ (results.json, table.md, timeline.png)")
    return 0


def add_evolve_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``evolve`` on an ``argparse`` subparsers object; returns the new parser (its
    ``func`` default runs the experiment)."""
    from .experiment import DATASETS, EVOLVE_METHODS

    p = add_command(
        subparsers, "evolve",
        help="Structure Net gen. 2: the evolution system vs growth / RigL / SET / static",
        description="The standard evolution system and the chosen pipeline against "
                    "first-generation growth and RigL, SET and static sparse training at the "
                    "pipeline's final connections, paired by seed; writes results.json, "
                    "table.md and timeline.png.")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--methods", nargs="+", default=None, choices=list(EVOLVE_METHODS))
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 6; quick 2)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs for every dataset (default: digits 80, mnist1d 40)")
    p.add_argument("--iterations", type=int, default=None,
                   help="evolution iterations (default 10; the epochs are split evenly)")
    p.add_argument("--hidden", type=int, nargs="+", default=None,
                   help="hidden widths (default 160 80)")
    p.add_argument("--start-sparsity", dest="start_sparsity", type=float, default=None,
                   help="connected fraction at start, ERK-allocated (default 0.04)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    p.add_argument("--learning-rate", "--lr", dest="lr", type=float, default=None)
    p.add_argument("--quick", action="store_true", help="2 seeds, a quarter of the epochs")
    p.add_argument("--out", default="results/evolve", help="results directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_evolve)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """Standalone entry point: ``python -m morphonet.evolution.cli evolve [...]``."""
    return standalone(add_evolve_parser, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
