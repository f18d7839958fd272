"""Validation-only probe behind Structure Net's defaults (docs/structure-net.md).

Part 1, the seed's documented loop (create_multi_scale_network(64, [256, 128], 10,
sparsity=0.001, activation='tanh'), Adam 1e-3, batch 32, 50 epochs) on digits with inputs
scaled to [0, 1] and standardised, 5 seeds each, validation accuracy only (its own split:
270 test rows set aside, 270 validation, the rest training; the test rows are never read):
the package defaults against one change at a time.

Part 2 (``--experiment``), the ``morpho grow`` experiment's Structure Nets (structure method
only) with the package defaults against the settings the experiment keeps
(`morphonet.growth.experiment.growth_configs`): validation accuracy and final connectivity.

    OMP_NUM_THREADS=1 .venv/bin/python results/grow/defaults_probe/probe.py [--experiment]
"""

import json
import sys
import warnings

import torch
from sklearn.datasets import load_digits
from structure_net import create_multi_scale_network
from torch.utils.data import DataLoader, TensorDataset

from morphonet.growth import ExtremaConfig, RouterConfig, SchedulerConfig

CANDIDATES = {
    "defaults": {},
    "single-neuron structures, 5 an event (the first version)":
        {"sched": {"structures_per_event": [5, 10, 25]}, "router": {"bundle": [1, 1, 1]}},
    "README saturation rule": {"extrema": {"rule": "saturation"}},
    "fixed 1-std input threshold": {"extrema": {"input_high": 1.0}},
}


def split(scaling, seed):
    d = load_digits()
    x, y = torch.tensor(d.data, dtype=torch.float32), torch.tensor(d.target)
    p = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    va, tr = p[270:540], p[540:]  # p[:270] is this probe's test part: never read
    if scaling == "unit":
        x = x / 16.0
    else:
        m, s = x[tr].mean(0), x[tr].std(0).clamp_min(1e-6)
        x = (x - m) / s
    return (x[tr], y[tr]), (x[va], y[va])


def run(scaling, seed, sched=None, router=None, extrema=None):
    torch.manual_seed(seed)
    tr, va = split(scaling, seed)
    loader = DataLoader(TensorDataset(*tr), batch_size=32, shuffle=True)
    net = create_multi_scale_network(64, [256, 128], 10, sparsity=0.001, activation="tanh",
                                     scheduler=SchedulerConfig(**(sched or {})),
                                     router=RouterConfig(**(router or {})),
                                     extrema=ExtremaConfig(**(extrema or {})))
    opt = torch.optim.Adam(net.parameters(), lr=0.001)
    for epoch in range(50):
        net.train_epoch(loader, opt, torch.nn.CrossEntropyLoss(), epoch)
    with torch.no_grad():
        acc = float((net(va[0]).argmax(1) == va[1]).float().mean())
    return acc, net.network.get_connectivity_stats()["connectivity_ratio"], len(net.growth_log)


def part1():
    for label, kw in CANDIDATES.items():
        out = {}
        for scaling in ("unit", "standardised"):
            rs = [run(scaling, s, **kw) for s in range(5)]
            out[scaling] = {"val_acc": round(100 * sum(r[0] for r in rs) / 5, 1),
                            "connectivity_pct": [round(100 * min(r[1] for r in rs), 2),
                                                 round(100 * max(r[1] for r in rs), 2)],
                            "growth_events": [min(r[2] for r in rs), max(r[2] for r in rs)]}
        print(json.dumps({"candidate": label, **out}), flush=True)


def part2():
    import morphonet.growth.experiment as E

    for label, configs in (("growth_configs (the experiment's)", E.growth_configs),
                           ("package defaults", lambda epochs, fr=None: (
                               SchedulerConfig(cooldown_steps=40, phase_epochs=(
                                   round(epochs * 2 / 15), round(epochs / 3))),
                               ExtremaConfig(), RouterConfig()))):
        E.growth_configs = configs
        cfg = E.GrowExperimentConfig(out_dir=f"/tmp/defaults_probe_{len(label)}",
                                     methods=("structure",))
        res = E.run_grow_experiment(cfg, progress=False, log=None)
        for d in cfg.datasets:
            rs = [r for r in res["runs"] if r["dataset"] == d]
            print(json.dumps({"experiment": label, "dataset": d,
                              "val_acc": round(100 * sum(r["val_acc"] for r in rs) / len(rs), 1),
                              "connectivity_pct": round(
                                  100 * sum(r["connectivity"] for r in rs) / len(rs), 2)}),
                  flush=True)


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    part2() if "--experiment" in sys.argv else part1()
