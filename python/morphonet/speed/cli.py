"""``morpho speed``: the speed experiment and the latency budget from the command line.

``add_speed_parser(subparsers)`` registers the subcommand on the ``morpho`` parser;
``python -m morphonet.speed.cli speed ...`` runs it standalone through :func:`main`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from ..commands import add_command, standalone


def _speed(args: argparse.Namespace) -> int:
    from ..files import read_records
    from .experiment import SpeedConfig, format_report, render, run_speed

    kw: dict = {}
    if args.out is not None:
        kw["out_dir"] = args.out
    if args.tasks is not None:
        kw["tasks"] = tuple(args.tasks)
    if args.batches is not None:
        kw["batches"] = list(args.batches)
    for flag in ("rounds", "threads", "seed"):
        if getattr(args, flag) is not None:
            kw[flag] = getattr(args, flag)
    if args.target_speedup is not None or args.latency_ms is not None:
        kw["target_speedup"], kw["latency_ms"] = args.target_speedup, args.latency_ms
    if args.budget_task is not None:
        kw["budget_task"] = args.budget_task
    try:
        cfg = SpeedConfig.quick(**kw) if args.quick else SpeedConfig(**kw)
    except (TypeError, ValueError) as e:
        print(f"morpho speed: {e}", file=sys.stderr)
        return 2
    if args.render:
        paths = [os.path.join(cfg.out_dir, f) for f in ("runs.jsonl", "timing.jsonl")]
        if not all(os.path.exists(p) for p in paths):
            print(f"--render: no records in {cfg.out_dir}/ (runs.jsonl, timing.jsonl)",
                  file=sys.stderr)
            return 2
        runs, timings = (read_records(p) for p in paths)
        cfg = _recorded_config(cfg, runs, timings)
        summary = render(cfg, runs, timings)
    else:
        try:
            summary = run_speed(cfg, log=None if args.quiet else print)
        except ValueError as e:  # settings that differ from the records in --out, a bad budget
            print(f"morpho speed: {e}", file=sys.stderr)
            return 2
    print(format_report(summary))
    print(f"results in {cfg.out_dir}/ (speed.md, speed.json, speed.png, runs.jsonl, "
          f"timing.jsonl, costmodel.json)")
    return 0


def _recorded_config(cfg, runs: list, timings: list):
    """The settings the records in ``cfg.out_dir`` were made with (its ``settings.json``;
    tasks and batches as the records hold them), so ``--render`` judges them by their own
    batch sizes and budget, whatever flags it was given; ``cfg`` where no settings.json
    exists."""
    from ..files import read_json
    from .experiment import TASKS, SpeedConfig

    path = os.path.join(cfg.out_dir, "settings.json")
    if not os.path.exists(path):
        return cfg
    kw = dict(read_json(path), out_dir=cfg.out_dir, rounds=cfg.rounds)
    kw["tasks"] = tuple(t for t in TASKS if any(r["task"] == t for r in runs)) or cfg.tasks
    kw["batches"] = sorted({int(t["batch"]) for t in timings}) or list(cfg.batches)
    return SpeedConfig.from_dict(kw)


def add_speed_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``speed`` on an ``argparse`` subparsers object; returns the new parser (its
    ``func`` default runs the experiment)."""
    p = add_command(
        subparsers, "speed",
        help="learned structure → exported → measured CPU/GPU speed against the dense twin; "
             "a latency budget that chooses the structure",
        description="Trains MorphoNet models with learned structure (element, block, neuron "
                    "masks) and their dense twins the same way, exports them (edge list, "
                    "block-sparse, shrink), times them interleaved with the twin and writes "
                    "speed.md, speed.json and speed.png. With --target-speedup / "
                    "--latency-ms one more run lets the measured kernel speeds of this "
                    "machine choose granularity, block size and per-layer density. A killed "
                    "run continues where it stopped.")
    p.add_argument("--tasks", nargs="+", default=None, choices=["mlp", "gpt"])
    p.add_argument("--batches", type=int, nargs="+", default=None,
                   help="batch sizes timed (default 1 256; quick 1 64)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (7)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (1)")
    p.add_argument("--seed", type=int, default=None)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--target-speedup", type=float, default=None,
                        help="latency budget as a speed-up over the dense twin (default 3)")
    budget.add_argument("--latency-ms", type=float, default=None,
                        help="latency budget in ms per batch on this machine")
    p.add_argument("--budget-task", default=None, choices=["mlp", "gpt", "none"],
                   help="which task gets the budget run (default mlp; none: no budget run)")
    p.add_argument("--quick", action="store_true", help="tiny run (well under a minute)")
    p.add_argument("--render", action="store_true",
                   help="only rewrite speed.md / speed.json / speed.png from the records")
    p.add_argument("--out", default=None,
                   help="results directory (default results/speed; quick results/speed-quick)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_speed)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """Standalone entry point: ``python -m morphonet.speed.cli speed [...]``."""
    return standalone(add_speed_parser, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
