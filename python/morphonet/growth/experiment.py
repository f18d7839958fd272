"""The ``morpho grow`` experiment: Structure Net against RigL, SET and static sparse training at
equal final density, on digits and MNIST-1D, several seeds.

Protocol (identical for every method): same widths, tanh, Adam (same learning rate), same
batch size and epochs, same shuffling seed; every decision (growth, snapshots, snapshot choice)
uses the validation split; the test split is only evaluated at the end. The peers are given the
structure net's *final* number of connections (per seed), ERK-allocated over the same widths.
Test accuracy is that of the final model. Snapshot comparison: the best single snapshot *by
validation accuracy* against the ensemble of the top-3 snapshots by validation accuracy, both
evaluated on the test split.

Timing: one intra-op thread (these layers are tiny; two threads only add synchronisation), the
kernels warmed up once before the first run (the first extrema_stats / sparse_linear call loads
the extension, ~1 s, a one-off process cost that is not growth bookkeeping).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch

from ..checks import check_device
from ..config import Config, int_dict, int_list, ints, names, one_of, reals, setting
from ..data import load_dataset
from ..files import (
    append_record,
    atomic_write,
    load_torch,
    read_json,
    read_records,
    save_torch,
    write_json,
)
from ..loop import accuracy, shuffled_batches, torch_threads
from .extrema import EXTREMA_ACTIVATIONS, ExtremaConfig
from .peers import SparsePeer, make_peer_network, train_peer_epoch
from .router import RouterConfig
from .scheduler import SchedulerConfig
from .trainer import create_multi_scale_network

METHODS = ("structure", "rigl", "set", "static")


GROW_DATASETS = ("digits", "mnist1d")


def _cpu_only(name: str, v) -> str:
    """The seed's ``--device`` flag: Structure Net's growth bookkeeping (extrema windows, the
    router's target space) is written for CPU tensors, so "auto" means the CPU here and a GPU
    is refused by name rather than half supported."""
    check_device(name, v)
    if v not in ("auto", "cpu"):
        raise ValueError(f"{name}={v!r}: Structure Net runs on the CPU in this version (its "
                         f"growth bookkeeping is not written for CUDA tensors); use 'cpu' or "
                         f"'auto'")
    return "cpu"


@dataclass
class GrowExperimentConfig(Config):
    """Settings of the experiment (the defaults are the full run; ``quick()`` the short one).

    Epoch counts are per dataset; phase boundaries (coarse / medium / fine) are given as
    fractions of the epochs (2/15 and 1/3: the seed's 50 / 100 of a 375-epoch run scaled to a
    short run); every other unit is in the configs of the growth pieces."""

    datasets: tuple = setting(GROW_DATASETS, names(*GROW_DATASETS))
    seeds: int = setting(5, ints(1))
    epochs: dict = setting(check=int_dict(1), factory=lambda: {"digits": 80, "mnist1d": 40})
    hidden: tuple = setting((160, 80), int_list(1, as_tuple=True))
    activation: str = setting("tanh", one_of(*EXTREMA_ACTIVATIONS))
    sparsity: float = setting(1e-4, reals(0, 1))
    batch_size: int = setting(32, ints(1))
    lr: float = setting(1e-2, reals(0, lo_open=True))
    phase_fractions: tuple = setting((2 / 15, 1 / 3), lambda n, v: tuple(
        reals(0, 1)(f"{n}[{i}]", x) for i, x in enumerate(v)))
    methods: tuple = setting(METHODS, names(*METHODS))
    out_dir: str = setting("results/grow")
    device: str = setting("cpu", _cpu_only)

    @classmethod
    def quick(cls, **kw) -> GrowExperimentConfig:
        """A run of under two minutes on 2 CPU cores: 2 seeds, fewer epochs."""
        base = dict(seeds=2, epochs={"digits": 30, "mnist1d": 10})
        base.update(kw)
        return cls(**base)

    def check(self) -> None:
        for d in self.datasets:
            if d not in self.epochs:
                raise ValueError(f"epochs has no entry for dataset {d!r}")


def growth_configs(epochs: int, phase_fractions: tuple[float, float] = (2 / 15, 1 / 3)
                   ) -> tuple[SchedulerConfig, ExtremaConfig, RouterConfig]:
    """The growth settings of this experiment, chosen on its validation split before the
    package's defaults moved to suit the seed's documented 50-epoch loop: phases scaled to the
    run, stabilisation of 40 steps, single-neuron structures (5 / 10 / 25 an event), the seed
    README's saturation rule and a 1-std input threshold (standardised inputs). With the
    package defaults instead (multi-scale bundles, the seed code's quantile rule, scale-free
    inputs) its Structure Nets end at 9.2% (digits) and 11.5% (MNIST-1D) connectivity rather
    than 4.5% and 5.6% (validation 96.5% / 48.6% on one seed, against 95.2% / 39.2%), beyond
    the ≤ 5% this experiment is about."""
    pe = (round(epochs * phase_fractions[0]), round(epochs * phase_fractions[1]))
    return (SchedulerConfig(cooldown_steps=40, phase_epochs=pe, structures_per_event=(5, 10, 25)),
            ExtremaConfig(rule="saturation", input_high=1.0), RouterConfig(bundle=(1, 1, 1)))


def run_structure(ds, seed: int, cfg: GrowExperimentConfig, snap_dir: str,
                  log: Optional[Callable[[str], None]] = None,
                  checkpoint: Optional[str] = None) -> dict:
    """Train one Structure Net; returns its record (history, snapshots, timing, test).

    ``checkpoint``: a file written atomically (checksummed) after every epoch with the run's
    full state: the network with its grown structure, the growth pieces (scheduler, extrema
    window, router generator), the optimizer, the shuffling generator, torch's RNG and how
    many snapshots exist. When the file exists, the run continues after the epoch it holds
    (the snapshots written after it are forgotten and written again), ending as an
    uninterrupted run would, bit for bit (timings aside)."""
    torch.manual_seed(seed)
    epochs = cfg.epochs[ds.name]
    scheduler, extrema, router = growth_configs(epochs, cfg.phase_fractions)
    model = create_multi_scale_network(
        ds.n_features, list(cfg.hidden), ds.n_classes, sparsity=cfg.sparsity,
        activation=cfg.activation, scheduler=scheduler, extrema=extrema, router=router,
        snapshot_dir=snap_dir, val_data=(ds.val.x, ds.val.y), seed=seed)
    start = model.network.get_connectivity_stats()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)  # created once, kept through growth
    crit = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    first = 0
    if checkpoint is not None and os.path.exists(checkpoint):
        st = load_torch(checkpoint, "checkpoint")
        model.load_training_state(st["model"])  # the structure first: then the moments fit
        opt.load_state_dict(st["optimizer"])
        gen.set_state(st["generator"])
        torch.set_rng_state(st["torch_rng"])
        first = st["epoch"] + 1
    for ep in range(first, epochs):
        r = model.train_epoch(shuffled_batches(ds.train.x, ds.train.y, cfg.batch_size, gen), opt,
                              crit, ep)
        if checkpoint is not None:
            save_torch(checkpoint, {"epoch": ep, "model": model.training_state(),
                                    "optimizer": opt.state_dict(), "generator": gen.get_state(),
                                    "torch_rng": torch.get_rng_state()}, "checkpoint")
        if log:
            log(f"[{ds.name} s{seed} structure] epoch {ep + 1}/{epochs} {r['phase']:6s} "
                f"val {r['val_acc']:.3f} conn {r['connectivity']:.4f} "
                f"({r['connections']} edges) growth {r['growth_events']}")
    snaps = model.snapshots
    final_val = model.evaluate(ds.val.x, ds.val.y)
    snaps.save(model.network, model.scheduler.phase(epochs - 1), epochs - 1, "final", final_val)
    ranked = sorted(snaps.index, key=lambda e: (e["val_acc"] or 0.0, e["id"]), reverse=True)
    best, top3 = ranked[0]["id"], [e["id"] for e in ranked[:3]]
    stats = model.network.get_connectivity_stats()
    t = model.timing
    return {
        "method": "structure", "dataset": ds.name, "seed": seed,
        "test_acc": model.evaluate(ds.test.x, ds.test.y), "val_acc": final_val,
        "start_connectivity": start["connectivity_ratio"],
        "start_connections": start["total_active_connections"],
        "connectivity": stats["connectivity_ratio"],
        "connections": stats["total_active_connections"],
        "skip_connections": stats["skip_connections"], "layer_sizes": stats["layer_sizes"],
        "neurons_added": stats["neurons_added"],
        "growth_events": len(model.growth_log), "growth_log": model.growth_log,
        "structures_by_phase": dict(model.scheduler.used),
        "history": [{k: v for k, v in h.items()} for h in model.history],
        "snapshots": {
            "count": len(snaps.index), "by_phase": snaps.by_phase(),
            "bytes": sum(e["bytes"] for e in snaps.index),
            "full_bytes": sum(e["full_bytes"] for e in snaps.index),
            "best_single_id": best, "ensemble_ids": top3,
            "best_single_test": accuracy(snaps.load(best), ds.test.x, ds.test.y),
            "ensemble_test": snaps.ensemble_accuracy(top3, ds.test.x, ds.test.y),
            "all_ensemble_test": snaps.ensemble_accuracy([e["id"] for e in snaps.index],
                                                         ds.test.x, ds.test.y)},
        "train_s": t["train_s"], "bookkeeping_s": t["bookkeeping_s"],
        "bookkeeping_fraction": t["bookkeeping_s"] / t["train_s"],
        "snapshot_s": t["snapshot_s"]}


def run_peer(ds, seed: int, method: str, total: int, cfg: GrowExperimentConfig,
             log: Optional[Callable[[str], None]] = None) -> dict:
    """Train RigL / SET / static with ``total`` connections (ERK) on the same widths."""
    torch.manual_seed(seed)
    epochs = cfg.epochs[ds.name]
    sizes = [ds.n_features, *cfg.hidden, ds.n_classes]
    net = make_peer_network(sizes, total, cfg.activation, seed=seed)
    steps = epochs * -(-len(ds.train.y) // cfg.batch_size)
    every = 50 if method == "rigl" else -(-len(ds.train.y) // cfg.batch_size)
    peer = SparsePeer(net, method, update_every=every, end_step=max(1, int(0.75 * steps)),
                      seed=seed)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    crit = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for ep in range(epochs):
        train_peer_epoch(net, peer, shuffled_batches(ds.train.x, ds.train.y, cfg.batch_size, gen),
                         opt, crit, ep)
    stats = net.get_connectivity_stats()
    if log:
        log(f"[{ds.name} s{seed} {method}] {epochs} epochs, "
            f"val {accuracy(net, ds.val.x, ds.val.y):.3f}")
    return {"method": method, "dataset": ds.name, "seed": seed,
            "test_acc": accuracy(net, ds.test.x, ds.test.y),
            "val_acc": accuracy(net, ds.val.x, ds.val.y),
            "connectivity": stats["connectivity_ratio"],
            "connections": stats["total_active_connections"],
            "train_s": time.perf_counter() - t0}


def _warm_up() -> None:
    from morpho_kernels import extrema_stats

    extrema_stats(torch.zeros(2, 3), -1.0, 1.0)
    net = make_peer_network([3, 4, 2], 4)
    net(torch.zeros(2, 3, requires_grad=True)).sum().backward()


def run_grow_experiment(cfg: GrowExperimentConfig, progress: bool = True,
                        log: Optional[Callable[[str], None]] = print,
                        resume: bool = False) -> dict:
    """Run every dataset × seed × method, write ``results.json``, ``table.md`` and
    ``timeline.png`` under ``cfg.out_dir``; returns the results dict.

    Every finished run is appended to ``runs.partial.jsonl`` (one checksummed line each,
    `morphonet.files.append_record`), and the Structure Net run in progress keeps a checkpoint
    (and its snapshots) under ``work/<dataset>_s<seed>/`` (`run_structure`). With ``resume``,
    the runs already recorded are taken from that file instead of being trained again, and
    the run in progress continues from its checkpoint: a job killed at any point and resumed
    writes the results an uninterrupted one would (timings aside). Without ``resume`` both are
    discarded first. A peer (RigL / SET / static) run killed midway is run again from its
    start. Both files go once ``results.json`` is written.

    Runs on one torch thread (the timings it records are per-thread figures) and gives the
    caller's thread count back afterwards."""
    with torch_threads(1):
        return _run_grow_experiment(cfg, progress, log, resume)


def _run_key(r: dict) -> tuple:
    return r["dataset"], r["seed"], r["method"]


def _run_grow_experiment(cfg: GrowExperimentConfig, progress: bool,
                         log: Optional[Callable[[str], None]], resume: bool = False) -> dict:
    _warm_up()
    os.makedirs(cfg.out_dir, exist_ok=True)
    partial = os.path.join(cfg.out_dir, "runs.partial.jsonl")
    work = os.path.join(cfg.out_dir, "work")
    job = os.path.join(cfg.out_dir, "runs.partial.job.json")  # what the partial runs belong to
    # the runs' training settings (methods may change: runs are keyed by method)
    settings = json.loads(json.dumps({k: v for k, v in cfg.to_dict().items()
                                      if k not in ("out_dir", "methods")}))
    if resume and (os.path.exists(partial) or os.path.exists(work)):
        old = read_json(job) if os.path.exists(job) else None
        if old != settings:
            diff = (sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                    if old is not None else ["unknown: no " + os.path.basename(job)])
            raise ValueError(f"resume: {partial} and {work} belong to a job with other "
                             f"settings ({', '.join(diff)}); rerun with that job's flags, or "
                             f"without --resume to start afresh")
    if not resume:
        for path in (partial, work, job):
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    write_json(job, settings)
    done = {_run_key(r): r for r in read_records(partial)} if os.path.exists(partial) else {}
    runs = []
    tasks = [(d, s) for d in cfg.datasets for s in range(cfg.seeds)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks) * len(cfg.methods), desc="morpho grow", unit="run")
    say = (bar.write if bar is not None else log) if log else None
    if say and done:
        say(f"resuming: {len(done)} finished runs taken from {partial}")
    t0 = time.perf_counter()

    def finished(rec: dict) -> dict:
        append_record(partial, rec)
        runs.append(rec)
        if bar is not None:
            bar.update(1)
        return rec

    for name, seed in tasks:
        ds = load_dataset(name, seed)
        rec = done.get((name, seed, "structure"))
        if rec is not None:
            runs.append(rec)
            if bar is not None:
                bar.update(1)
        else:
            rec = finished(_structure_run(ds, seed, cfg, work, say))
            shutil.rmtree(os.path.join(work, f"{name}_s{seed}"), ignore_errors=True)
            if say:
                say(f"[{name} s{seed} structure] test {rec['test_acc']:.3f} at conn "
                    f"{rec['connectivity']:.4f}, {rec['growth_events']} growth events, "
                    f"bookkeeping {100 * rec['bookkeeping_fraction']:.1f}%")
        for m in cfg.methods:
            if m == "structure":
                continue
            if (name, seed, m) in done:
                runs.append(done[(name, seed, m)])
                if bar is not None:
                    bar.update(1)
                continue
            finished(run_peer(ds, seed, m, rec["connections"], cfg, log=say))
    if bar is not None:
        bar.close()
    res = {"config": cfg.to_dict(), "runs": runs, "summary": summarise(runs),
           "wall_s": time.perf_counter() - t0, "torch_threads": torch.get_num_threads()}
    write_json(os.path.join(cfg.out_dir, "results.json"), res)
    atomic_write(os.path.join(cfg.out_dir, "table.md"), format_table(res).encode())
    plot_timeline(runs, os.path.join(cfg.out_dir, "timeline.png"))
    for path in (partial, work, job):  # everything is in results.json now
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    return res


def _structure_run(ds, seed: int, cfg: GrowExperimentConfig, work: str,
                   say: Optional[Callable[[str], None]]) -> dict:
    """One Structure Net run with its checkpoint under ``work/<dataset>_s<seed>/``: seed 0
    keeps its snapshots under ``out_dir/snapshots/<dataset>``, other seeds in the work folder
    (removed with it once the run is recorded)."""
    run_dir = os.path.join(work, f"{ds.name}_s{seed}")
    ckpt = os.path.join(run_dir, "structure.ckpt")
    os.makedirs(run_dir, exist_ok=True)
    snap_dir = (os.path.join(cfg.out_dir, "snapshots", ds.name) if seed == 0
                else os.path.join(run_dir, "snaps"))
    if not os.path.exists(ckpt) and os.path.exists(snap_dir):  # a fresh start: no old ones
        shutil.rmtree(snap_dir)
    return run_structure(ds, seed, cfg, snap_dir, log=say if seed == 0 else None,
                         checkpoint=ckpt)


def _ms(v: list[float]) -> dict:
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
            "n": len(v)}


def summarise(runs: list[dict]) -> dict:
    """Mean ± std per dataset and method (and the snapshot figures of the structure net)."""
    out: dict = {}
    for r in runs:
        out.setdefault(r["dataset"], {}).setdefault(r["method"], []).append(r)
    summ: dict = {}
    for d, by in out.items():
        summ[d] = {}
        for m, rs in by.items():
            s = {k: _ms([r[k] for r in rs]) for k in ("test_acc", "connectivity", "connections")}
            if m == "structure":
                s["growth_events"] = _ms([r["growth_events"] for r in rs])
                s["start_connectivity"] = _ms([r["start_connectivity"] for r in rs])
                s["neurons_added"] = _ms([r["neurons_added"] for r in rs])
                s["bookkeeping_fraction"] = _ms([r["bookkeeping_fraction"] for r in rs])
                for k in ("best_single_test", "ensemble_test", "all_ensemble_test"):
                    s[k] = _ms([r["snapshots"][k] for r in rs])
            summ[d][m] = s
    return summ


def _pm(s: dict, scale: float = 100.0, digits: int = 1) -> str:
    return f"{scale * s['mean']:.{digits}f} ± {scale * s['std']:.{digits}f}"


def format_table(res: dict) -> str:
    """Markdown tables of the summary."""
    lines = ["# morpho grow: Structure Net vs RigL / SET / static at equal final density", "",
             f"seeds: {res['config']['seeds']}, epochs: {res['config']['epochs']}, hidden: "
             f"{res['config']['hidden']}, wall {res['wall_s']:.0f} s (1 thread, 2-core CPU)",
             "", "| dataset | method | test acc % (mean ± std) | final connectivity % | "
             "connections | growth events |", "|---|---|---|---|---|---|"]
    for d, by in res["summary"].items():
        for m, s in by.items():
            ge = _pm(s["growth_events"], 1.0) if "growth_events" in s else ""
            lines.append(f"| {d} | {m} | {_pm(s['test_acc'])} | "
                         f"{_pm(s['connectivity'], 100.0, 2)} | "
                         f"{s['connections']['mean']:.0f} | {ge} |")
    lines += ["", "## Structure Net snapshots (test split; choices made on validation)", "",
              "| dataset | start connectivity % | best single (by val) % | top-3 ensemble % | "
              "all-snapshot ensemble % | neurons added | bookkeeping % of training |",
              "|---|---|---|---|---|---|---|"]
    for d, by in res["summary"].items():
        s = by.get("structure")
        if s:
            lines.append(f"| {d} | {_pm(s['start_connectivity'], 100.0, 3)} | "
                         f"{_pm(s['best_single_test'])} | {_pm(s['ensemble_test'])} | "
                         f"{_pm(s['all_ensemble_test'])} | {_pm(s['neurons_added'], 1.0)} | "
                         f"{_pm(s['bookkeeping_fraction'], 100.0, 2)} |")
    return "\n".join(lines) + "\n"


def plot_timeline(runs: list[dict], path: str) -> None:
    """Connectivity, validation accuracy and growth events over epochs (seed 0 of each
    dataset), one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = [r for r in runs if r["method"] == "structure" and r["seed"] == 0]
    fig, axes = plt.subplots(1, max(1, len(first)), figsize=(6 * max(1, len(first)), 4),
                             squeeze=False)
    for ax, r in zip(axes[0], first):
        ep = [h["epoch"] + 1 for h in r["history"]]
        ax.plot(ep, [100 * h["connectivity"] for h in r["history"]], color="tab:blue",
                label="connectivity %")
        ax.set_xlabel("epoch")
        ax.set_ylabel("connectivity % (active / dense graph)", color="tab:blue")
        for g in r["growth_log"]:
            ax.axvline(g["epoch"] + 1, color="tab:gray", alpha=0.3, lw=1)
        ax2 = ax.twinx()
        ax2.plot(ep, [100 * h["val_acc"] for h in r["history"]], color="tab:red",
                 label="val accuracy %")
        ax2.set_ylabel("validation accuracy %", color="tab:red")
        ax.set_title(f"{r['dataset']} (seed 0): {r['growth_events']} growth events (grey)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
