"""The ``morpho`` command line."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    r = run_demo(epochs=args.epochs, seed=args.seed)
    print(f"\nbest validation accuracy  {r.best_val_acc:.3f}")
    print(f"test accuracy             {r.test_acc:.3f} (soft masks)")
    print(f"test accuracy, pruned     {r.test_acc_pruned:.3f} (mask values < 0.5 removed)")
    print(f"density                   {r.density:.3f} of connections live")
    print(f"training time             {r.seconds:.1f} s on the {r.backend} backend")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="morpho", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a masked MLP on generated data (end to end)")
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
