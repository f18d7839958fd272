"""A lab worker process: ``python -m morphonet.lab.worker PLANS.pkl`` runs the waiting trials
of the pickled plans (`morphonet.lab.engine.work`) until none is left. Started by the lab
(``max_parallel_experiments`` of them); not a user command."""

from __future__ import annotations

import pickle
import sys


def main(argv: list[str]) -> int:
    from .engine import work

    if len(argv) != 1:
        print("usage: python -m morphonet.lab.worker PLANS.pkl", file=sys.stderr)
        return 2
    with open(argv[0], "rb") as f:
        spec, plans, device, workdir, threads = pickle.load(f)
    work(spec, plans, device, workdir, threads)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
