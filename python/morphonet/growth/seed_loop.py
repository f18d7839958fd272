"""The seed's documented Structure Net loop, run as written, with the package's defaults.

The seed's README trains a network with ``create_multi_scale_network(input_size,
hidden_sizes=[256, 128], output_size=10, sparsity=0.0001..0.001, activation='tanh')``,
``optim.Adam(network.parameters(), lr=0.001)``, ``nn.CrossEntropyLoss()`` and
``network.train_epoch(train_loader, optimizer, criterion, epoch)`` for 50 epochs, and promises
5–15 growth events, connectivity rising to 1–5% and accuracy competitive with dense networks.
`run_seed_loop` runs exactly that on digits (a ``DataLoader`` of batch 32, shuffled), with the
inputs scaled to [0, 1] and standardised, over several seeds, and reports the growth events,
the final connectivity and the test accuracy (``morpho grow --seed-loop``; nothing is chosen
on the test split).
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..checks import check_int
from ..data import load_dataset, train_val_test_split
from ..files import atomic_write, write_json
from ..loop import accuracy, torch_threads
from .trainer import create_multi_scale_network

SCALINGS = ("unit", "standardised")


def digits_splits(scaling: str, seed: int):
    """Digits train / validation / test splits (the split of `morphonet.data.load_dataset`),
    the pixels scaled to [0, 1] (``"unit"``: /16) or standardised on the training split."""
    if scaling == "standardised":
        ds = load_dataset("digits", seed=seed)
        return ds.train, ds.val, ds.test
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    return train_val_test_split(x, torch.tensor(d.target, dtype=torch.int64), seed=seed)


def seed_loop_run(scaling: str, seed: int, epochs: int = 50, batch_size: int = 32,
                  hidden_sizes: tuple[int, ...] = (256, 128), sparsity: float = 0.001) -> dict:
    """One run of the documented loop; returns its figures."""
    torch.manual_seed(seed)
    tr, va, te = digits_splits(scaling, seed)
    train_loader = DataLoader(TensorDataset(tr.x, tr.y), batch_size=batch_size, shuffle=True)
    network = create_multi_scale_network(input_size=64, hidden_sizes=list(hidden_sizes),
                                         output_size=10, sparsity=sparsity, activation="tanh")
    optimizer = torch.optim.Adam(network.parameters(), lr=0.001)
    criterion = nn.CrossEntropyLoss()
    start = network.network.get_connectivity_stats()
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(epochs):
            network.train_epoch(train_loader, optimizer, criterion, epoch)
    stats = network.network.get_connectivity_stats()
    return {"scaling": scaling, "seed": seed, "epochs": epochs, "batch_size": batch_size,
            "growth_events": len(network.growth_log),
            "event_epochs": [g["epoch"] for g in network.growth_log],
            "connections_added": sum(g["connections_added"] for g in network.growth_log),
            "start_connectivity": start["connectivity_ratio"],
            "connectivity": stats["connectivity_ratio"],
            "connections": stats["total_active_connections"],
            "terminated": network.scheduler.terminated,
            "val_acc": accuracy(network, va.x, va.y), "test_acc": accuracy(network, te.x, te.y),
            "seconds": time.perf_counter() - t0,
            "warnings": [str(w.message) for w in caught]}


def _ms(v: list[float]) -> tuple[float, float]:
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def run_seed_loop(out_dir: str = "results/grow", seeds: int = 5, epochs: int = 50,
                  batch_size: int = 32, log: Optional[Callable[[str], None]] = print) -> dict:
    """Every scaling × seed; writes ``seed_loop.json`` and ``seed_loop.md`` under
    ``out_dir``; returns the results (one torch thread, as ``morpho grow``)."""
    check_int("seeds", seeds, 1)
    with torch_threads(1):
        runs = []
        for scaling in SCALINGS:
            for seed in range(seeds):
                r = seed_loop_run(scaling, seed, epochs, batch_size)
                runs.append(r)
                if log:
                    log(f"[{scaling} s{seed}] {r['growth_events']} growth events at epochs "
                        f"{r['event_epochs']}, connectivity {100 * r['connectivity']:.2f}%, "
                        f"test {100 * r['test_acc']:.1f}%")
    res = {"seeds": seeds, "epochs": epochs, "batch_size": batch_size, "runs": runs,
           "summary": summarise_seed_loop(runs)}
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "seed_loop.json"), res)
    atomic_write(os.path.join(out_dir, "seed_loop.md"), seed_loop_table(res).encode())
    return res


def summarise_seed_loop(runs: list[dict]) -> dict[str, dict[str, Any]]:
    """Per scaling: (mean, std) of the growth events, final connectivity, test and validation
    accuracy over the seeds, and the fewest growth events of any seed."""
    out = {}
    for scaling in SCALINGS:
        rs = [r for r in runs if r["scaling"] == scaling]
        if rs:
            out[scaling] = {k: _ms([float(r[k]) for r in rs]) for k in
                            ("growth_events", "connectivity", "test_acc", "val_acc")}
            out[scaling]["min_events"] = min(r["growth_events"] for r in rs)
    return out


def seed_loop_table(res: dict) -> str:
    """The results as Markdown, with the seed's promises checked."""
    lines = [f"# The seed's documented loop on digits ({res['seeds']} seeds, {res['epochs']} "
             f"epochs, Adam 1e-3, batch {res['batch_size']}, defaults)", "",
             "| inputs | growth events | final connectivity % | test accuracy % | "
             "validation accuracy % |", "|---|---|---|---|---|"]
    for sc, s in res["summary"].items():
        ev, cn, te, va = (s[k] for k in ("growth_events", "connectivity", "test_acc",
                                         "val_acc"))
        lines.append(f"| {sc} | {ev[0]:.1f} ± {ev[1]:.1f} (min {s['min_events']}) | "
                     f"{100 * cn[0]:.2f} ± {100 * cn[1]:.2f} | {100 * te[0]:.1f} ± "
                     f"{100 * te[1]:.1f} | {100 * va[0]:.1f} ± {100 * va[1]:.1f} |")
    lines.append("")
    for sc, s in res["summary"].items():
        checks = [("≥ 5 growth events", s["min_events"] >= 5),
                  ("final connectivity in 1–5%", 0.01 <= s["connectivity"][0] <= 0.05),
                  ("≥ 95% test accuracy (mean)", s["test_acc"][0] >= 0.95)]
        lines.append(f"- {sc}: " + "; ".join(f"{'MET' if ok else 'MISSED'} {name}"
                                            for name, ok in checks))
    return "\n".join(lines) + "\n"


