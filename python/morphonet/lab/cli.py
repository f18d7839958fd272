"""``morpho lab run FILE``: run a hypothesis file (TOML or YAML) with the Neural Architecture
Lab, write the report, print the results.

``add_lab_parser(subparsers)`` registers the subcommand on the ``morpho`` parser;
``python -m morphonet.lab.cli lab run FILE`` runs it standalone through :func:`main`.
Running the same command again after it finished trains nothing (every experiment is a
finished Optuna trial) and prints the same figures; after a kill it continues.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from ..commands import add_command, standalone


def _run(args: argparse.Namespace) -> int:
    from .lab import NeuralArchitectureLab
    from .spec import read_lab_file

    try:
        cfg, hypotheses = read_lab_file(args.file)
    except ValueError as e:
        print(f"morpho lab run: {e}", file=sys.stderr)
        return 2
    changes = {k: v for k, v in (("results_dir", args.results_dir),
                                 ("max_parallel_experiments", args.workers),
                                 ("storage", args.storage), ("device", args.device))
               if v is not None}
    if args.quiet:
        changes["verbose"] = False
    cfg = cfg.replace(**changes)
    if args.hypothesis:
        unknown = sorted(set(args.hypothesis) - {h.id for h in hypotheses})
        if unknown:
            print(f"morpho lab run: {args.file} has no hypothesis {unknown} (it has "
                  f"{[h.id for h in hypotheses]})", file=sys.stderr)
            return 2
        hypotheses = [h for h in hypotheses if h.id in args.hypothesis]
    lab = NeuralArchitectureLab(cfg)
    for h in hypotheses:
        lab.register_hypothesis(h, source=args.file)
    lab.run()
    lab.extract_insights()
    if args.follow_ups and lab.follow_ups:
        lab.run(list(lab.follow_ups))
    lab.generate_report()
    print(lab.summary())
    print(f"report: {cfg.results_dir}/report.md (storage {lab.storage})")
    return 0


def add_lab_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``lab`` (with its subcommand ``run``) on an ``argparse`` subparsers object;
    returns the ``lab`` parser."""
    p = add_command(subparsers, "lab",
                    help="Neural Architecture Lab: test hypotheses against a control arm",
                    description="Hypotheses about architectures, tested against a named "
                                "control arm paired by seed (Wilcoxon signed-rank, BCa "
                                "intervals, Holm), run as Optuna trials; resumable.")
    sub = p.add_subparsers(dest="lab_command", required=True)
    r = sub.add_parser("run", help="run a hypothesis file (TOML or YAML) and write the report",
                       description="Run every hypothesis of FILE (or those named by "
                                   "--hypothesis), continue a killed run, write "
                                   "<results_dir>/report.md and print each comparison.")
    r.add_argument("file", help="hypothesis file (.toml, .yaml, .yml, .json)")
    r.add_argument("--hypothesis", nargs="+", default=None, help="only these hypotheses")
    r.add_argument("--results-dir", default=None, help="override [lab] results_dir")
    r.add_argument("--workers", type=int, default=None,
                   help="worker processes on this machine (max_parallel_experiments)")
    r.add_argument("--storage", default=None,
                   help="Optuna storage: a journal file path or an RDB URL "
                        "(postgresql://user:pw@host/db) shared by several machines")
    r.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    r.add_argument("--follow-ups", action="store_true",
                   help="also run the follow-up hypotheses the results propose")
    r.add_argument("--quiet", action="store_true", help="no progress lines")
    r.set_defaults(func=_run)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m morphonet.lab.cli lab run FILE``."""
    return standalone(add_lab_parser, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
