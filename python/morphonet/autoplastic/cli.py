"""``morpho autoplastic``: the Autoplastic experiment from the command line.

``add_autoplastic_parser(subparsers)`` registers the subcommand on the ``morpho`` parser;
``python -m morphonet.autoplastic.cli autoplastic ...`` runs it standalone through `main`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from ..commands import add_command, standalone


def _autoplastic(args: argparse.Namespace) -> int:
    from .experiment import AutoplasticExperimentConfig, format_report, run_experiment, run_tune

    kw = dict(datasets=tuple(args.datasets), out_dir=args.out)
    for key in ("seeds", "first_seed", "epochs"):
        if getattr(args, key) is not None:
            kw[key] = getattr(args, key)
    if args.methods is not None:
        kw["methods"] = tuple(args.methods)
    if args.gate_kind is not None:
        kw["gate_kind"] = args.gate_kind
    if args.penalty is not None:
        kw["penalties"] = {d: list(args.penalty) for d in args.datasets}
    cfg = (AutoplasticExperimentConfig.quick(**kw) if args.quick
           else AutoplasticExperimentConfig(**kw))
    if args.latency:
        from .experiment import remeasure_latency

        if not Path(cfg.out_dir, "results.json").exists():
            print(f"--latency: no results.json in {cfg.out_dir}/ (run morpho autoplastic "
                  "first)", file=sys.stderr)
            return 2

        remeasure_latency(cfg, log=None if args.no_progress else print)
        print(Path(cfg.out_dir, "table.md").read_text())
        return 0
    if args.tune:
        res = run_tune(cfg, progress=not args.no_progress)
        print(f"chosen (λ, λ_C): {res['chosen']}")
        print(f"results in {cfg.out_dir}/ (tune.json, tune.md)")
        return 0
    res = run_experiment(cfg, progress=not args.no_progress)
    print("\n" + format_report(res))
    print(f"results in {cfg.out_dir}/ (results.json, table.md, tradeoff.png, gates_*.png, "
          "epoch_log_*.txt)")
    return 0


def add_autoplastic_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``autoplastic`` on an ``argparse`` subparsers object; returns the new parser
    (its ``func`` default runs the experiment)."""
    p = add_command(
        subparsers, "autoplastic",
        help="Autoplastic: learned depth / channel / mix gates vs the seed's rules, the full "
             "network and a static network of equal FLOPs",
        description="Autoplastic networks on MNIST-1D and digits: learned gates (hard-concrete "
                    "L0, exported statically) against the seed's rule gates, the full-width "
                    "network and the export's architecture trained from scratch, paired by "
                    "seed; writes results.json, table.md and plots. --tune chooses the "
                    "penalties on validation first (tune.json, tune.md).")
    p.add_argument("--datasets", nargs="+", default=["mnist1d", "digits"],
                   choices=["mnist1d", "digits"])
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 6)")
    p.add_argument("--first-seed", dest="first_seed", type=int, default=None,
                   help="first seed (default 0)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs for every dataset (default: 30)")
    p.add_argument("--methods", nargs="+", default=None,
                   choices=["full", "learned", "rules", "static"])
    p.add_argument("--penalty", type=float, nargs=2, default=None, metavar=("LAMBDA", "LAMBDA_C"),
                   help="the learned gates' λ (expected FLOPs) and λ_C (expected channels) for "
                   "every dataset (default: the values chosen by --tune)")
    p.add_argument("--gate-kind", dest="gate_kind", default=None,
                   choices=["hard_concrete", "sigmoid_st"],
                   help="the learned gates (default hard_concrete)")
    p.add_argument("--tune", action="store_true",
                   help="choose (λ, λ_C) per dataset on validation (seeds 100, 101)")
    p.add_argument("--latency", action="store_true",
                   help="time the learned exports of results.json in --out again against the "
                        "full network (e.g. on an idle machine; latency.jsonl)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, 3 epochs")
    p.add_argument("--out", default="results/autoplastic", help="results directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_autoplastic)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """Standalone entry point: ``python -m morphonet.autoplastic.cli autoplastic [...]``."""
    return standalone(add_autoplastic_parser, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
