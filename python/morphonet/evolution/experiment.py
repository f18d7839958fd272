"""The ``morpho evolve`` experiment: the composable evolution system (the standard system and a
chosen pipeline) against first-generation growth and RigL / SET / static sparse training, on
digits and MNIST-1D, several seeds, paired by seed.

Protocol (as ``morpho grow``'s, whose runners it reuses for the first generation and the
peers): the same widths, tanh, Adam at the same learning rate, batch size, epochs and
shuffling seed; every decision uses the validation split; the test split is evaluated once at
the end. The evolution systems run ``iterations`` iterations of ``epochs / iterations`` epochs
each, starting from an ERK network at ``start_sparsity``; the peers get the *pipeline's*
final number of connections per seed (ERK over the same widths); the standard system and
first-generation growth end where their rules take them (their connections are reported).
Paired intervals: the pipeline minus each other method, test accuracy, over the seeds
(`morphonet.stats.paired`). Every iteration's analyzer metrics are in the records.

Bookkeeping share: (analysis + growth seconds) / training seconds of the evolution systems,
after a one-off kernel warm-up (the extension load is a process cost, not bookkeeping).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..config import Config, int_dict, int_list, ints, names, reals, setting
from ..data import load_dataset
from ..files import atomic_write, write_json
from ..loop import evaluate, torch_threads
from ..stats import interval, paired
from .adaptive_lr import ExponentialBackoffScheduler
from .analyzers import SimpleInformationFlowAnalyzer, StandardExtremaAnalyzer
from .components import create_standard_evolution_system
from .interfaces import NetworkContext
from .network import create_standard_network
from .rewiring import RigLRewiring
from .strategies import (
    ExtremaGrowthStrategy,
    HybridGrowthStrategy,
    InformationFlowGrowthStrategy,
    PruningGrowthStrategy,
)
from .system import ComposableEvolutionSystem
from .trainer import StandardNetworkTrainer

__all__ = ["EVOLVE_METHODS", "EvolveExperimentConfig", "build_pipeline", "format_table",
           "pipeline_hooks", "plot_timeline", "run_evolve_experiment", "run_evolution",
           "summarise"]

EVOLVE_METHODS = ("standard", "pipeline", "growth", "rigl", "set", "static")
DATASETS = ("digits", "mnist1d")


@dataclass
class EvolveExperimentConfig(Config):
    """Settings of the experiment (defaults: the full run; ``quick()``: a short one)."""

    datasets: tuple = setting(DATASETS, names(*DATASETS))
    seeds: int = setting(6, ints(1))
    epochs: dict = setting(check=int_dict(1), factory=lambda: {"digits": 80, "mnist1d": 40})
    iterations: int = setting(10, ints(1))
    hidden: tuple = setting((160, 80), int_list(1, as_tuple=True))
    start_sparsity: float = setting(0.04, reals(0, 1, lo_open=True))
    batch_size: int = setting(32, ints(1))
    lr: float = setting(1e-2, reals(0, lo_open=True))
    methods: tuple = setting(EVOLVE_METHODS, names(*EVOLVE_METHODS))
    out_dir: str = setting("results/evolve")

    @classmethod
    def quick(cls, **kw: Any) -> EvolveExperimentConfig:
        """Two seeds, a quarter of the epochs."""
        base: dict = dict(seeds=2, epochs={"digits": 20, "mnist1d": 10}, iterations=5)
        base.update(kw)
        return cls(**base)

    def check(self) -> None:
        """Epochs for every dataset, a multiple of the iterations; the pipeline present when
        peers are (they take its connections)."""
        for d in self.datasets:
            if d not in self.epochs:
                raise ValueError(f"epochs has no entry for dataset {d!r}")
            if self.epochs[d] % self.iterations:
                raise ValueError(f"epochs[{d!r}] ({self.epochs[d]}) must be a multiple of "
                                 f"iterations ({self.iterations})")
        if "pipeline" not in self.methods and {"rigl", "set", "static"} & set(self.methods):
            raise ValueError("the peers are matched to the pipeline's connections: keep "
                             "'pipeline' in methods")


def build_pipeline(epochs: int, lr: float, batch_size: int) -> ComposableEvolutionSystem:
    """The pipeline this experiment compares (chosen on the validation split in an
    unrecorded sweep, see docs/evolution.md): extrema and information-flow analysis; pruning
    of dead edges, then extrema growth (revival and relief, no new layers), then GradMax
    widening of information bottlenecks; training with the context's hooks
    (`pipeline_hooks`). At the experiment's widths the binned information estimate
    saturates (every layer at H(Y)), so no bottleneck is found and the widening never fires
    (in the sweep it fired on float rounding, a defect since fixed)."""
    system = ComposableEvolutionSystem()
    system.add_component(StandardExtremaAnalyzer())
    system.add_component(SimpleInformationFlowAnalyzer(min_loss=0.0))
    system.add_component(HybridGrowthStrategy([
        PruningGrowthStrategy(),
        ExtremaGrowthStrategy(patch_size=40),
        InformationFlowGrowthStrategy(widen_fraction=0.1, init="gradmax")]))
    system.add_component(StandardNetworkTrainer(epochs=epochs, learning_rate=lr,
                                                batch_size=batch_size))
    return system


def pipeline_hooks(network, total_steps: int, seed: int) -> list:
    """The pipeline's training hooks: the learning rate × 0.97^epoch and RigL rewiring of
    the stage layers on the RigL peer's schedule (every 50 steps until 3/4 of the run)."""
    return [ExponentialBackoffScheduler(gamma=0.97),
            RigLRewiring(network, "rigl", update_every=50,
                         end_step=max(1, int(0.75 * total_steps)), seed=seed)]


def run_evolution(ds, seed: int, method: str, cfg: EvolveExperimentConfig,
                  log: Optional[Callable[[str], None]] = None) -> dict:
    """One evolution run (``"standard"`` or ``"pipeline"``); returns its record."""
    torch.manual_seed(seed)
    epochs = cfg.epochs[ds.name]
    per = epochs // cfg.iterations
    net = create_standard_network([ds.n_features, *cfg.hidden, ds.n_classes],
                                  cfg.start_sparsity, "tanh", seed=seed, allocation="erk")
    ctx = NetworkContext(net, (ds.train.x, ds.train.y), val_data=(ds.val.x, ds.val.y),
                         seed=seed, batch_size=cfg.batch_size)
    if method == "standard":
        system = create_standard_evolution_system(epochs=per, learning_rate=cfg.lr)
        system.trainers[0].config = system.trainers[0].config.replace(batch_size=cfg.batch_size)
    else:
        system = build_pipeline(per, cfg.lr, cfg.batch_size)
        steps = epochs * -(-len(ds.train.y) // cfg.batch_size)
        ctx.hooks.extend(pipeline_hooks(net, steps, seed))
    start = net.get_network_stats()["total_connections"]
    ctx = system.evolve_network(ctx, cfg.iterations)
    final = ctx.network
    stats = final.get_network_stats()
    book = sum(r["analysis_s"] + r["growth_s"] for r in ctx.evolution_log)
    train = sum(r["train_s"] for r in ctx.evolution_log)
    rec = {"method": method, "dataset": ds.name, "seed": seed,
           "test_acc": evaluate(final, ds.test.x, ds.test.y)[1],
           "val_acc": evaluate(final, ds.val.x, ds.val.y)[1],
           "start_connections": start, "connections": stats["total_connections"],
           "connectivity": stats["connectivity"], "architecture": stats["architecture"],
           "residual_blocks": stats["residual_blocks"],
           "growth_events": sum(len(r["events"]) for r in ctx.evolution_log),
           "max_output_change": max((e["output_change"] or 0.0 for r in ctx.evolution_log
                                     for e in r["events"]), default=0.0),
           "evolution_log": ctx.evolution_log,
           "history": [{k: h.get(k) for k in ("epoch", "loss", "val_acc", "connections",
                                              "iteration")} for h in ctx.history],
           "train_s": train, "bookkeeping_s": book, "bookkeeping_fraction": book / train}
    if log:
        log(f"[{ds.name} s{seed} {method}] test {rec['test_acc']:.3f} val {rec['val_acc']:.3f} "
            f"connections {start} -> {rec['connections']} {rec['architecture']} "
            f"bookkeeping {100 * rec['bookkeeping_fraction']:.1f}%")
    return rec


def _grow_config(cfg: EvolveExperimentConfig):
    from ..growth.experiment import GrowExperimentConfig

    return GrowExperimentConfig(datasets=cfg.datasets, seeds=cfg.seeds, epochs=cfg.epochs,
                                hidden=cfg.hidden, batch_size=cfg.batch_size, lr=cfg.lr,
                                out_dir=cfg.out_dir)


def _warm_up() -> None:
    """Load the kernels once (~1-2 s: a process cost, not evolution bookkeeping)."""
    net = create_standard_network([3, 4, 2], 0.5, "tanh", seed=0)
    ctx = NetworkContext(net, (torch.zeros(4, 3), torch.zeros(4).long()))
    StandardExtremaAnalyzer(max_batches=1).analyze(ctx)
    StandardNetworkTrainer(epochs=1).train(ctx)


def run_evolve_experiment(cfg: EvolveExperimentConfig, progress: bool = True,
                          log: Optional[Callable[[str], None]] = print) -> dict:
    """Every dataset × seed × method; writes ``results.json``, ``table.md`` and
    ``timeline.png`` under ``cfg.out_dir`` and returns the results. One torch thread (the
    caller's count is given back)."""
    from ..growth.experiment import run_peer, run_structure

    with torch_threads(1):
        _warm_up()
        os.makedirs(cfg.out_dir, exist_ok=True)
        gcfg = _grow_config(cfg)
        tasks = [(d, s) for d in cfg.datasets for s in range(cfg.seeds)]
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(tasks) * len(cfg.methods), desc="morpho evolve", unit="run")
        say = (bar.write if bar is not None else log) if log else None
        runs, t0 = [], time.perf_counter()
        for name, seed in tasks:
            ds = load_dataset(name, seed)
            target = None
            for m in cfg.methods:
                if m in ("standard", "pipeline"):
                    rec = run_evolution(ds, seed, m, cfg, say)
                    target = rec["connections"] if m == "pipeline" else target
                elif m == "growth":
                    import tempfile

                    with tempfile.TemporaryDirectory() as tmp:
                        rec = run_structure(ds, seed, gcfg, tmp)
                    rec = {k: v for k, v in rec.items() if k not in ("snapshots", "growth_log")}
                    rec["method"] = "growth"
                else:
                    rec = run_peer(ds, seed, m, target, gcfg, say)
                runs.append(rec)
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        res = {"config": cfg.to_dict(), "runs": runs, "summary": summarise(runs),
               "wall_s": time.perf_counter() - t0}
        write_json(os.path.join(cfg.out_dir, "results.json"), res)
        atomic_write(os.path.join(cfg.out_dir, "table.md"), format_table(res).encode())
        plot_timeline(runs, os.path.join(cfg.out_dir, "timeline.png"))
        return res


def summarise(runs: list[dict]) -> dict:
    """Per dataset and method: `interval` of test accuracy, connections and (evolution)
    bookkeeping share; per dataset, `paired` pipeline − method on test accuracy."""
    by: dict = {}
    for r in runs:
        by.setdefault(r["dataset"], {}).setdefault(r["method"], {})[r["seed"]] = r
    out: dict = {}
    for d, methods in by.items():
        s: dict = {"methods": {}, "pipeline_minus": {}}
        for m, rs in methods.items():
            v = list(rs.values())
            s["methods"][m] = {"test_acc": interval([r["test_acc"] for r in v]),
                               "connections": interval([r["connections"] for r in v])}
            if "bookkeeping_fraction" in v[0]:
                s["methods"][m]["bookkeeping_fraction"] = interval(
                    [r["bookkeeping_fraction"] for r in v])
        pipe = methods.get("pipeline")
        if pipe:
            for m, rs in methods.items():
                if m != "pipeline":
                    s["pipeline_minus"][m] = paired(
                        {k: r["test_acc"] for k, r in pipe.items()},
                        {k: r["test_acc"] for k, r in rs.items()})
        out[d] = s
    return out


def format_table(res: dict) -> str:
    """Markdown tables of the summary."""
    c = res["config"]
    lines = ["# morpho evolve: the evolution system vs first-generation growth and RigL / SET / "
             "static", "", f"seeds {c['seeds']}, epochs {c['epochs']}, iterations "
             f"{c['iterations']}, hidden {c['hidden']}, start {c['start_sparsity']} (ERK), "
             f"wall {res['wall_s']:.0f} s (1 thread)", "",
             "| dataset | method | test acc % (mean ± std) | connections | bookkeeping % |",
             "|---|---|---|---|---|"]
    for d, s in res["summary"].items():
        for m, v in s["methods"].items():
            t, n = v["test_acc"], v["connections"]
            b = v.get("bookkeeping_fraction")
            book = "" if b is None else f"{100 * b['mean']:.1f}"
            lines.append(f"| {d} | {m} | {100 * t['mean']:.1f} ± {100 * t['std']:.1f} | "
                         f"{n['mean']:.0f} | {book} |")
    lines += ["", "## pipeline − method, test accuracy (paired by seed, 95% t-interval)", "",
              "| dataset | method | mean (points) | interval | wins / pairs |",
              "|---|---|---|---|---|"]
    for d, s in res["summary"].items():
        for m, p in s["pipeline_minus"].items():
            if p:
                lines.append(f"| {d} | {m} | {100 * p['mean']:+.2f} | [{100 * p['lo']:+.2f}, "
                             f"{100 * p['hi']:+.2f}] | {p['wins']} / {p['pairs']} |")
    return "\n".join(lines) + "\n"


def plot_timeline(runs: list[dict], path: str) -> None:
    """Connections and validation accuracy per epoch of the evolution systems (seed 0), one
    panel per dataset; growth iterations marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = [r for r in runs if r["seed"] == 0 and "evolution_log" in r]
    sets = sorted({r["dataset"] for r in first})
    fig, axes = plt.subplots(1, max(1, len(sets)), figsize=(6 * max(1, len(sets)), 4),
                             squeeze=False)
    for ax, d in zip(axes[0], sets):
        ax2 = ax.twinx()
        for r, color in zip([r for r in first if r["dataset"] == d], ["tab:blue", "tab:green"]):
            ep = [h["epoch"] + 1 for h in r["history"]]
            ax.plot(ep, [h["connections"] for h in r["history"]], color=color,
                    label=f"{r['method']} connections")
            ax2.plot(ep, [100 * (h["val_acc"] or 0) for h in r["history"]], color=color,
                     ls="--", label=f"{r['method']} val acc")
        ax.set_xlabel("epoch")
        ax.set_ylabel("connections")
        ax2.set_ylabel("validation accuracy % (dashed)")
        ax.set_title(f"{d} (seed 0)")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
