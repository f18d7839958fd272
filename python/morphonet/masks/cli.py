"""``morpho compare`` (the main job: dense vs MorphoNet vs magnitude pruning) and ``morpho demo``
(drop-in MaskedLinear layers), registered on the ``morpho`` parser by `add_parsers`."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ..files import append_record, read_json, write_json


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    r = run_demo(epochs=args.epochs, seed=args.seed)
    print(f"\nbest validation accuracy  {r.best_val_acc:.3f}")
    print(f"test accuracy             {r.test_acc:.3f} (soft masks)")
    print(f"test accuracy, pruned     {r.test_acc_pruned:.3f} (mask values < 0.5 removed)")
    print(f"density                   {r.density:.3f} of connections live")
    print(f"training time             {r.seconds:.1f} s on the {r.backend} backend")
    return 0


def _render(cmp, out: Path) -> int:
    """Rewrite compare.md / compare.json of an earlier run from its compare.json, or from the
    runs an interrupted run finished (runs.partial.jsonl); no training."""
    path, partial = out / "compare.json", out / "runs.partial.jsonl"
    # an interrupted run leaves its partial records beside an older compare.json: the newer
    if path.exists() and not (partial.exists()
                              and partial.stat().st_mtime > path.stat().st_mtime):
        results, meta = cmp.load_runs(path)
    elif partial.exists():
        results = cmp.load_partial(partial)
        meta = {"command": f"(interrupted run: the {len(results)} runs it finished)"}
        print(f"no {path}: rendering the {len(results)} runs {partial} holds", file=sys.stderr)
    else:
        print(f"--render: no {path} (run `morpho compare --out {out}` first)", file=sys.stderr)
        return 2
    md, js = cmp.write_outputs(results, out, meta)
    rows = cmp.summarise(cmp.select(results)[0])
    print(cmp.markdown_table(rows) + "\n")
    for v in cmp.verdicts(rows):
        print(v)
    print(f"\nrewritten from the {len(results)} recorded runs: {md} and {js}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from . import compare as cmp

    if args.render:
        extra = [f"--{k.replace('_', '-')}" for k in ("quick", "no_tune", "seeds", "epochs",
                                                        "datasets", "resume")
                 if getattr(args, k) is not None and getattr(args, k) is not False]
        if extra:
            print(f"--render trains nothing and takes only --out; drop {' '.join(extra)}",
                  file=sys.stderr)
            return 2
        return _render(cmp, Path(args.out))
    cases = cmp.quick_cases() if args.quick else list(cmp.FULL_CASES)
    if args.datasets:
        unknown = sorted(set(args.datasets) - {c.dataset for c in cmp.FULL_CASES})
        if unknown:
            print(f"unknown dataset(s) {unknown}", file=sys.stderr)
            return 2
        cases = [c for c in cases if c.dataset in args.datasets]
    if args.epochs is not None:
        cases = [c.replace(epochs=args.epochs) for c in cases]
    seeds = list(range(args.seeds if args.seeds is not None else (2 if args.quick else 5)))
    command = "morpho " + " ".join(sys.argv[1:] if args.argv is None else args.argv)
    tune = not (args.quick or args.no_tune)
    mode = "tune" if tune else ("chosen" if args.quick else "default")
    n_var = cmp.GRID_SIZE if tune else 1
    which = {"tune": "variants", "chosen": "variant (the one validation chose in the full run)",
             "default": "variant (the default)"}[mode]
    print(f"{len(cases)} cases × {len(seeds)} seeds × {len(cmp.METHODS)} methods × {n_var} "
          f"{which}; writing to {args.out}", flush=True)
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "runs.partial.jsonl"  # every finished run, kept if the job is interrupted
    job = out / "runs.partial.job.json"  # what the partial runs belong to
    settings = {"cases": [c.to_dict() for c in cases], "seeds": seeds, "variants": mode}
    done = []
    if args.resume and partial.exists():
        if not job.exists() or read_json(job) != settings:
            print(f"--resume: {partial} belongs to another job (other cases, seeds or "
                  f"variants than these; see {job}); rerun with that job's flags, or without "
                  "--resume to start afresh", file=sys.stderr)
            return 2
        done = cmp.load_partial(partial)
        print(f"resuming: {len(done)} finished runs taken from {partial}", flush=True)
    else:
        partial.unlink(missing_ok=True)
        write_json(job, settings)

    def keep(r) -> None:
        append_record(partial, asdict(r))

    results = cmp.compare(cases, seeds, on_result=keep, mode=mode, done=done)
    meta = {"command": command.strip(), "seconds": time.perf_counter() - t0, "tuned": tune,
            "variants": mode, "cases": [c.to_dict() for c in cases]}
    md, js = cmp.write_outputs(results, out, meta)
    partial.unlink(missing_ok=True)  # everything is in compare.json now
    job.unlink(missing_ok=True)
    rows = cmp.summarise(cmp.select(results)[0])
    print("\n" + cmp.markdown_table(rows) + "\n")
    if not tune or len(seeds) < 5 or any(c.epochs != 100 for c in cases):
        print("(a shortened run: the verdicts below are of this run only; the issue's figures "
              "come from the full `morpho compare`, 5 seeds, 100 epochs, tuned on validation)")
    for v in cmp.verdicts(rows):
        print(v)
    print(f"\nwritten: {md} and {js} ({meta['seconds']:.0f} s)")
    return 0


def add_parsers(sub) -> None:
    """Register ``compare`` (the main job) and ``demo`` on the ``morpho`` parser's
    subparsers."""
    demo = sub.add_parser("demo", help="drop-in MaskedLinear layers learn their connectivity "
                          "on generated data (end to end, on the training loop)")
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    cmp = sub.add_parser("compare", help="dense vs MorphoNet vs magnitude pruning on moons, "
                         "blobs-5c, digits and MNIST-1D (the main job)")
    cmp.add_argument("--quick", action="store_true",
                     help="MLP cases only, 30 epochs, 2 seeds, each method's variant as "
                     "validation chose it in the full run (about 1 minute on 2 cores)")
    cmp.add_argument("--no-tune", action="store_true",
                     help="run only each method's default variant (no selection on validation)")
    cmp.add_argument("--seeds", type=int, default=None, help="number of seeds (default 5)")
    cmp.add_argument("--epochs", type=int, default=None, help="override every case's epochs")
    cmp.add_argument("--datasets", nargs="+", default=None,
                     help="subset of: moons blobs-5c digits mnist1d")
    cmp.add_argument("--out", default="results/compare", help="output directory")
    cmp.add_argument("--resume", action="store_true",
                     help="continue an interrupted job in --out: the runs it finished "
                     "(runs.partial.jsonl) are taken as they are, not trained again; the "
                     "flags must be the interrupted job's (checked); without it the partial "
                     "runs are discarded")
    cmp.add_argument("--render", action="store_true",
                     help="train nothing: rewrite compare.md / .json in --out from the runs "
                     "recorded in its compare.json (takes only --out)")
    cmp.set_defaults(func=_compare)
