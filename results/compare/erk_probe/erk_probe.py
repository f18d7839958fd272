"""Validation-only probe behind compare's ERK choice for the MNIST-1D CNN (session 6).

Every MorphoNet grid variant × 5 seeds with ``sparsity_distribution="erk"``; prints the mean
validation accuracy next to that of the global-ranking runs in a recorded compare.json (the
one of commit 35e308c: ``git show 35e308c:results/compare/compare.json > /tmp/base.json``).
Writes erk_probe.jsonl (validation accuracy and weights per run; no test figure is recorded).

    OMP_NUM_THREADS=1 python results/compare/erk_probe/erk_probe.py /tmp/base.json
"""

import json
import statistics
import sys
from pathlib import Path

import torch

from morphonet.data import load_dataset
from morphonet.masks.compare import FULL_CASES, grid, run_morphonet


def main(base: str, dist: str = "erk") -> None:
    torch.set_num_threads(1)
    old = json.load(open(base))["runs"]
    out = open(Path(__file__).with_name("erk_probe.jsonl"), "w")
    for case in FULL_CASES:
        for name, ov in grid("morphonet", case.epochs):
            ov = {**ov, "sparsity_distribution": dist}
            vals = []
            for seed in range(5):
                r = run_morphonet(case, load_dataset(case.dataset, seed=seed), seed, ov, name)
                vals.append(r.val_acc)
                out.write(json.dumps({"dataset": case.dataset, "arch": case.arch,
                                      "variant": name, "seed": seed, "val_acc": r.val_acc,
                                      "weights": r.weights}) + "\n")
                out.flush()
            g = [r["val_acc"] for r in old if (r["dataset"], r["arch"], r["method"],
                 r["variant"]) == (case.dataset, case.arch, "morphonet", name)]
            print(f"{case.dataset}/{case.arch} [{name}] val {dist} {statistics.fmean(vals):.4f}"
                  f"  global {statistics.fmean(g):.4f}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
