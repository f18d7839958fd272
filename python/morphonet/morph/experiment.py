"""The ``morpho morph`` experiment: MorphNet's learned widths against uniform width scaling and
Torch-Pruning's pruners, at matched FLOPs, on MNIST-1D (a small 1-D ResNet) and digits (a
small CNN on 8×8 images), several seeds, paired by seed.

Protocol (identical for every method, per task and seed: the same split, the same
initialisation, the same optimiser, batch size and epochs):

1. **base**: the full-width model trained; its FLOPs per example F₀ and test accuracy are the
   reference ("unpruned").
2. **search** (one training run per method, from the base's initialisation): MorphNet trains
   with its regulariser (γ L1, group lasso or gates, FLOP cost, strength ``scale / initial
   FLOPs``), and its structure is the alive widths after `NetworkRegularizer.prune`;
   Torch-Pruning trains with its pruner's sparsity regularisation (``pruner.regularize`` after
   every backward, the pruner's default coefficients) and prunes the trained model globally,
   step by step, until its FLOPs are at most the target. Uniform scaling has no search.
3. **match**: every structure is scaled by one uniform factor to the target FLOPs r·F₀
   (`morphonet.morph.expand_widths`, MorphNet's expand step; uniform scaling is this applied
   to the base widths), so all methods meet the same FLOP budget.
4. **final**: each matched architecture is initialised afresh (the same seed for every method)
   and trained like the base; best epoch on validation, test accuracy of that epoch.

The MorphNet strength: the three regularisers respond to it very differently (gates close
within a few epochs at a scale where the group lasso hardly moves), so each is calibrated
once per task, as MorphNet's users do, on seed 0 and *without looking at any accuracy*: the
scale of ``strength_grid`` (walked from 1 towards the target, `_calibrate`) whose search run
learns the FLOP fraction closest (in log) to ``calibrate_flops``; the expand step then
corrects any miss. ``strength_scale`` (a dict
{regulariser: scale}) skips the calibration.

CPU latency: every final model against the full-width model, interleaved
(`morphonet.timing.time_models`, median of five rounds), batch ``latency_batch``, one thread.
Statistics: paired differences per seed with a 95% t-interval (`morphonet.stats.paired`).
Which MorphNet regulariser is reported as "MorphNet" is chosen on validation accuracy only.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ..checks import check_device, resolve_device
from ..config import Config, int_dict, ints, names, real_list, reals, setting
from ..data import load_dataset
from ..files import append_record, atomic_write, read_records, write_json
from ..loop import Hook, TrainLoop, accuracy, torch_threads
from ..stats import interval, paired
from ..timing import time_models
from .api import expand_widths
from .graph import trace
from .models import build
from .regularize import MorphNetHook, NetworkRegularizer
from .surgery import resize

__all__ = ["METHODS", "MORPHNET", "MorphExperimentConfig", "TASKS", "format_report",
           "run_morph_experiment", "summarise"]

TASKS = ("mnist1d", "digits")
MORPHNET = ("gamma", "group_lasso", "gates")
TP_METHODS = ("tp_bnscale", "tp_groupnorm")
METHODS = ("uniform",) + MORPHNET + TP_METHODS
LABELS = {"uniform": "uniform width", "gamma": "MorphNet γ-L1", "group_lasso":
          "MorphNet group lasso", "gates": "MorphNet gates", "tp_bnscale":
          "Torch-Pruning BN-scale", "tp_groupnorm": "Torch-Pruning group-norm"}


def _scales(name: str, v: Any) -> Optional[dict]:
    if v is None:
        return None
    if not isinstance(v, dict):
        raise TypeError(f"{name} must be None or a dict {{regulariser: scale}}, got {v!r}")
    bad = sorted(set(v) - set(MORPHNET))
    if bad:
        raise ValueError(f"{name} has unknown regularisers {bad} (known: {MORPHNET})")
    return {k: reals(0, lo_open=True)(f"{name}[{k!r}]", x) for k, x in v.items()}


@dataclass
class MorphExperimentConfig(Config):
    """Settings of ``morpho morph`` (module docstring for the protocol)."""

    tasks: tuple = setting(TASKS, names(*TASKS))
    seeds: int = setting(6, ints(1))
    epochs: dict = setting(check=int_dict(1), factory=lambda: {"mnist1d": 30, "digits": 30})
    width: int = setting(32, ints(1))
    batch_size: int = setting(64, ints(1))
    lr: float = setting(3e-3, reals(0, lo_open=True))
    weight_decay: float = setting(1e-4, reals(0))
    gate_lr: float = setting(0.02, reals(0, lo_open=True))
    strength_scale: Optional[dict] = setting(None, check=lambda n, v: _scales(n, v))
    strength_grid: tuple = setting((1 / 64, 1 / 16, 1 / 4, 1.0, 4.0, 16.0, 64.0, 256.0,
                                    1024.0), real_list(0, lo_open=True))
    calibrate_flops: float = setting(0.35, reals(0, 1, lo_open=True, hi_open=True))
    ratios: tuple = setting((0.5, 0.25, 0.125), real_list(0, 1, lo_open=True))
    methods: tuple = setting(METHODS, names(*METHODS))
    latency_batch: int = setting(256, ints(1))
    out_dir: str = setting("results/morph")
    device: str = setting("cpu", check_device)

    @classmethod
    def quick(cls, **kw: Any) -> MorphExperimentConfig:
        """A run of about two minutes on 2 CPU cores: digits only, 2 seeds, 4 epochs, the
        half-FLOPs target."""
        base: dict[str, Any] = dict(tasks=("digits",), seeds=2, epochs={"digits": 4,
                                                                        "mnist1d": 4},
                                    ratios=(0.5,), strength_scale={"gamma": 4.0,
                                                                   "group_lasso": 64.0,
                                                                   "gates": 0.25})
        base.update(kw)
        return cls(**base)

    def check(self) -> None:
        for t in self.tasks:
            if t not in self.epochs:
                raise ValueError(f"epochs has no entry for task {t!r}")


# ---------------------------------------------------------------------------- pieces


class _Data:
    def __init__(self, task: str, seed: int, model: nn.Module, device: torch.device):
        ds = load_dataset(task, seed=seed)
        self.train = tuple(t.to(device) for t in model.check_inputs(ds.train.x, ds.train.y))
        self.val = tuple(t.to(device) for t in model.check_inputs(ds.val.x, ds.val.y, "val"))
        self.test = tuple(t.to(device) for t in model.check_inputs(ds.test.x, ds.test.y,
                                                                   "test"))
        self.example = self.train[0][:64]


def _reinit(model: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()
    return model


class _TorchPruningRegularizer(Hook):
    """Torch-Pruning's sparsity training: ``pruner.regularize(model)`` after every backward."""

    def __init__(self, pruner: Any):
        self.pruner = pruner

    def after_backward(self, loop: TrainLoop) -> None:
        self.pruner.regularize(loop.model)


def _tp_pruner(method: str, model: nn.Module, example: torch.Tensor, head: nn.Module,
               steps: int = 200) -> Any:
    import torch_pruning as tp

    if method == "tp_bnscale":
        return tp.pruner.BNScalePruner(model, example, tp.importance.BNScaleImportance(),
                                       global_pruning=True, pruning_ratio=0.95,
                                       iterative_steps=steps, ignored_layers=[head])
    return tp.pruner.GroupNormPruner(model, example,
                                     tp.importance.GroupMagnitudeImportance(p=2),
                                     global_pruning=True, pruning_ratio=0.95,
                                     iterative_steps=steps, ignored_layers=[head])


def _head(model: nn.Module) -> nn.Module:
    return model.head if hasattr(model, "head") else model.out


def _widths_by_producer(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    return {g.producers[0]: g.size for g in trace(model, example).free_groups()}


def measure_latency(models: list[nn.Module], example: torch.Tensor, batch: int,
                    rounds: int = 5) -> list[float]:
    """Seconds of one forward of ``batch`` rows shaped like ``example`` for each model, on the
    CPU, one thread, eval mode, no gradients: the median of ``rounds`` interleaved rounds of
    `morphonet.timing.time_models` (each round times every model once, in a rotating order, so
    background load on the machine slows every model alike instead of biasing a ratio)."""
    x = torch.randn((batch,) + tuple(example.shape[1:]))
    ms = {str(i): copy.deepcopy(m).cpu().eval() for i, m in enumerate(models)}
    res = time_models(ms, x, rounds=rounds, threads=1)
    return [res[str(i)]["median_ms"] / 1e3 for i in range(len(models))]


class _Runner:
    def __init__(self, cfg: MorphExperimentConfig, log: Callable[[str], None]):
        self.cfg, self.log = cfg, log
        self.device = resolve_device(cfg.device)

    def loop(self, model: nn.Module, data: _Data, seed: int, hooks=(), extra=None,
             select: bool = True) -> TrainLoop:
        cfg = self.cfg
        groups = [{"params": list(model.parameters()), "weight_decay": cfg.weight_decay}]
        if extra:
            groups.append({"params": extra, "lr": cfg.gate_lr, "weight_decay": 0.0})
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
        gen = torch.Generator().manual_seed(seed)
        return TrainLoop(model, opt, hooks=hooks, batch_size=cfg.batch_size, generator=gen,
                         select="val_acc" if select else None, restore_best=select)

    def train(self, model: nn.Module, data: _Data, task: str, seed: int, **kw) -> dict:
        loop = self.loop(model, data, seed, **kw)
        t0 = time.perf_counter()
        res = loop.fit(data.train, data.val, epochs=self.cfg.epochs[task])
        return {"val_acc": accuracy(model, *data.val), "test_acc": accuracy(model, *data.test),
                "train_seconds": time.perf_counter() - t0, "best_epoch": res["best_epoch"]}

    # -- phases
    def base(self, task: str, seed: int) -> tuple[nn.Module, dict, _Data]:
        torch.manual_seed(seed)
        model = build(task, width=self.cfg.width).to(self.device)
        data = _Data(task, seed, model, self.device)
        return model, copy.deepcopy(model.state_dict()), data

    def search(self, method: str, task: str, seed: int, init: dict, data: _Data,
               targets: list[float], scale: float = 1.0) -> dict:
        """The searched structure: widths per group (MorphNet) or per target (Torch-Pruning),
        keyed by the groups' first producer."""
        cfg = self.cfg
        model = build(task, width=cfg.width).to(self.device)
        model.load_state_dict(init)
        if method in MORPHNET:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reg = NetworkRegularizer(model, data.example, method, "flops")
            hook = MorphNetHook(reg, reg.suggested_strength(scale))
            extra = list(reg.parameters()) if method == "gates" else None
            res = self.train(model, data, task, seed, hooks=[hook], extra=extra, select=False)
            widths = reg.prune()
            groups = reg.graph.groups
            learned = {groups[gid].producers[0]: w for gid, w in widths.items()
                       if groups[gid].frozen is None}
            return {"learned": learned, "learned_flops": reg.graph.flops(widths),
                    "learned_fraction": reg.graph.flops(widths) / reg.graph.flops(),
                    "scale": scale, "val_acc": accuracy(model, *data.val),
                    "train_seconds": res["train_seconds"]}
        head = _head(model)
        pruner = _tp_pruner(method, model, data.example, head)
        res = self.train(model, data, task, seed, hooks=[_TorchPruningRegularizer(pruner)],
                         select=False)
        f0 = trace(model, data.example).flops()
        per_target = {}
        for r in sorted(targets, reverse=True):
            m = copy.deepcopy(model).eval()
            pr = _tp_pruner(method, m, data.example, _head(m))
            for _ in range(pr.iterative_steps):
                pr.step()
                if trace(m, data.example).flops() <= r * f0:
                    break
            per_target[str(r)] = _widths_by_producer(m, data.example)
        return {"per_target": per_target, "train_seconds": res["train_seconds"],
                "val_acc": res["val_acc"]}

    def final(self, method: str, task: str, seed: int, widths_by_producer: dict[str, int],
              ratio: float, data: _Data, base_flops: float) -> dict:
        cfg = self.cfg
        ref = build(task, width=cfg.width).to(self.device)
        graph = trace(ref, data.example)
        start = {g.id: widths_by_producer[g.producers[0]] for g in graph.free_groups()}
        factor, widths = expand_widths(graph, ratio * base_flops, start)
        model = _reinit(resize(ref, data.example, widths=widths), seed + 10_000)
        res = self.train(model, data, task, seed)
        base_latency, latency = measure_latency([ref, model], data.example, cfg.latency_batch)
        res.update(flops=graph.flops(widths), params=graph.params(widths), factor=factor,
                   widths={graph.groups[g].producers[0]: w for g, w in widths.items()
                           if graph.groups[g].frozen is None},
                   latency=latency, base_latency=base_latency)
        return res


# ---------------------------------------------------------------------------- the run


def _calibrate(cfg: MorphExperimentConfig, runner: _Runner, task: str, method: str,
               done: dict, record: Callable[[dict], dict], log: Callable[[str], None]
               ) -> float:
    """The scale of ``strength_grid`` whose seed-0 search run learns the FLOP fraction
    closest (in log) to ``calibrate_flops`` (no accuracy is looked at). The grid is walked
    from the scale nearest 1 towards the target (larger scales while the learned fraction is
    above it, smaller while below), stopping once the target is crossed."""
    model, init, data = runner.base(task, 0)
    grid = sorted(cfg.strength_grid)
    got: dict[float, float] = {}

    def at(i: int) -> float:
        scale = grid[i]
        key = (task, 0, "calibrate", method, scale)
        if key not in done:
            res = runner.search(method, task, 0, init, data, list(cfg.ratios), scale)
            record(dict(task=task, seed=0, phase="calibrate", method=method, ratio=scale,
                        **res))
            log(f"[{task} calibrate {method}] scale {scale:g}: learned "
                f"{res['learned_fraction']:.1%} of the FLOPs")
        got[scale] = done[key]["learned_fraction"]
        return got[scale]

    i = min(range(len(grid)), key=lambda j: abs(math.log(grid[j])))
    step = 1 if at(i) > cfg.calibrate_flops else -1
    while 0 <= i + step < len(grid):
        i += step
        if (at(i) > cfg.calibrate_flops) != (step == 1):
            break  # crossed the target
    best = min(got, key=lambda s: abs(math.log(max(got[s], 1e-6) / cfg.calibrate_flops)))
    log(f"[{task} calibrate {method}] chosen scale {best:g} ({got[best]:.1%} of the FLOPs)")
    return best


def _key(r: dict) -> tuple:
    return (r["task"], r["seed"], r["phase"], r.get("method"), r.get("ratio"))


def _tp_available() -> bool:
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        return False
    return True


def run_morph_experiment(cfg: MorphExperimentConfig,
                         log: Optional[Callable[[str], None]] = print) -> dict:
    """Run (or continue) the experiment; every finished run is appended to
    ``<out_dir>/runs.partial.jsonl`` (checksummed lines), so a killed run continues where it
    stopped. Writes ``runs.jsonl``, ``morph.json`` (the summary), ``report.md`` and the plots;
    returns the summary."""
    cfg.validate()
    log = log or (lambda s: None)
    os.makedirs(cfg.out_dir, exist_ok=True)
    partial = os.path.join(cfg.out_dir, "runs.partial.jsonl")
    done = {_key(r): r for r in (read_records(partial) if os.path.exists(partial) else [])}
    methods = list(cfg.methods)
    skipped = []
    if any(m in TP_METHODS for m in methods) and not _tp_available():
        skipped = [m for m in methods if m in TP_METHODS]
        methods = [m for m in methods if m not in TP_METHODS]
        log(f"note: torch-pruning is not installed: {', '.join(skipped)} skipped "
            f"(pip install torch-pruning)")
    runner = _Runner(cfg, log)
    with torch_threads(1):
        _run(cfg, runner, methods, done, partial, log)
    runs = [done[k] for k in sorted(done, key=str)]
    return render(cfg, runs, skipped)


def _run(cfg: MorphExperimentConfig, runner: _Runner, methods: list[str], done: dict,
         partial: str, log: Callable[[str], None]) -> None:

    def record(r: dict) -> dict:
        if _key(r) not in done:
            append_record(partial, r)
            done[_key(r)] = r
        return done[_key(r)]

    for task in cfg.tasks:
        scales = dict(cfg.strength_scale or {})
        for method in (m for m in methods if m in MORPHNET and m not in scales):
            scales[method] = _calibrate(cfg, runner, task, method, done, record, log)
        for seed in range(cfg.seeds):
            model, init, data = runner.base(task, seed)
            f0 = trace(model, data.example).flops()
            tag = f"[{task} seed {seed}]"
            if (task, seed, "base", None, None) not in done:
                res = runner.train(model, data, task, seed)
                res.update(flops=f0, params=trace(model, data.example).params(),
                           latency=measure_latency([model], data.example,
                                                   cfg.latency_batch)[0],
                           widths=_widths_by_producer(model, data.example))
                record(dict(task=task, seed=seed, phase="base", **res))
                log(f"{tag} base: test {100 * res['test_acc']:.1f}% "
                    f"({res['train_seconds']:.0f} s)")
            searched = {"uniform": {"learned": done[(task, seed, "base", None, None)]
                                    ["widths"]}}
            for method in methods:
                if method == "uniform":
                    continue
                key = (task, seed, "search", method, None)
                cal = (task, 0, "calibrate", method, scales.get(method))
                if key not in done and seed == 0 and cal in done:  # the calibration's run
                    record(dict(done[cal], phase="search", ratio=None))
                if key not in done:
                    res = runner.search(method, task, seed, init, data, list(cfg.ratios),
                                        scales.get(method, 1.0))
                    record(dict(task=task, seed=seed, phase="search", method=method, **res))
                    what = (f"learned {res['learned_flops'] / f0:.0%} of the FLOPs"
                            if "learned" in res else "pruned to each target")
                    log(f"{tag} search {method}: {what} ({res['train_seconds']:.0f} s)")
                searched[method] = done[key]
            for ratio in cfg.ratios:
                for method in methods:
                    key = (task, seed, "final", method, ratio)
                    if key in done:
                        continue
                    s = searched[method]
                    widths = s["learned"] if "learned" in s else s["per_target"][str(ratio)]
                    res = runner.final(method, task, seed, widths, ratio, data, f0)
                    record(dict(task=task, seed=seed, phase="final", method=method,
                                ratio=ratio, **res))
                    log(f"{tag} {method} at {ratio:g}× FLOPs: test "
                        f"{100 * res['test_acc']:.1f}% ({res['train_seconds']:.0f} s)")


def remeasure_latency(cfg: MorphExperimentConfig, runs: list[dict],
                      log: Optional[Callable[[str], None]] = print,
                      ratios: Optional[list[float]] = None) -> int:
    """Time every final model of ``runs`` again against the full-width model (`measure_latency`,
    one thread), e.g. on an idle machine after a run shared the CPU with other work. A
    model's latency depends on its shapes only, so it is rebuilt from the record's widths
    (`resize` of the base, checked against the record's parameter count). Each measurement
    is appended to ``<out_dir>/latency.jsonl`` (checksummed; a killed call continues) and
    `render` uses it in place of the run's own. ``ratios``: only the final models at these FLOP
    targets (default: all). Returns how many models were timed."""
    log = log or (lambda s: None)
    path = os.path.join(cfg.out_dir, "latency.jsonl")
    done = {_key(r) for r in (read_records(path) if os.path.exists(path) else [])}
    finals = sorted((r for r in runs if r["phase"] == "final" and _key(r) not in done
                     and (ratios is None or r["ratio"] in ratios)), key=lambda r: str(_key(r)))
    examples: dict[str, torch.Tensor] = {}
    with torch_threads(1):
        for i, r in enumerate(finals):
            ref = build(r["task"], width=cfg.width)
            if r["task"] not in examples:
                examples[r["task"]] = _Data(r["task"], 0, ref, torch.device("cpu")).example
            x = examples[r["task"]]
            graph = trace(ref, x)
            widths = {g.id: r["widths"][g.producers[0]] for g in graph.free_groups()}
            if graph.params(widths) != r["params"]:
                raise ValueError(f"{path}: the widths of {_key(r)} rebuild a model of "
                                 f"{graph.params(widths)} parameters, the run had {r['params']}")
            model = resize(ref, x, widths=widths)
            base_latency, latency = measure_latency([ref, model], x, cfg.latency_batch)
            append_record(path, {"task": r["task"], "seed": r["seed"], "phase": "final",
                                 "method": r["method"], "ratio": r["ratio"],
                                 "latency": latency, "base_latency": base_latency})
            log(f"[latency {i + 1}/{len(finals)}] {r['task']} seed {r['seed']} {r['method']} "
                f"at {r['ratio']:g}×: {base_latency / latency:.2f}× the full model")
    return len(finals)


def _with_latency(cfg: MorphExperimentConfig, runs: list[dict]) -> list[dict]:
    path = os.path.join(cfg.out_dir, "latency.jsonl")
    if not os.path.exists(path):
        return runs
    again = {_key(r): r for r in read_records(path)}
    return [dict(r, latency=again[_key(r)]["latency"],
                 base_latency=again[_key(r)]["base_latency"], latency_remeasured=True)
            if _key(r) in again else r for r in runs]


def render(cfg: MorphExperimentConfig, runs: list[dict], skipped: Optional[list] = None
           ) -> dict:
    """Write ``runs.jsonl`` (sorted), ``morph.json``, ``report.md``, ``pareto.png`` and
    ``widths.png`` from the run records; returns the summary. Latencies re-measured by
    `remeasure_latency` (``latency.jsonl``) replace the runs' own, and the report says how
    many."""
    runs = _with_latency(cfg, runs)
    atomic_write(os.path.join(cfg.out_dir, "runs.jsonl"),
                 "".join(json.dumps(r) + "\n" for r in runs).encode())
    summary = summarise(runs)
    summary["config"] = cfg.to_dict()
    summary["skipped"] = list(skipped or [])
    finals = [r for r in runs if r["phase"] == "final"]
    summary["latency_remeasured"] = [sum(bool(r.get("latency_remeasured")) for r in finals),
                                     len(finals)]
    write_json(os.path.join(cfg.out_dir, "morph.json"), summary)
    atomic_write(os.path.join(cfg.out_dir, "report.md"), format_report(summary).encode())
    plot_pareto(summary, os.path.join(cfg.out_dir, "pareto.png"))
    plot_widths(runs, os.path.join(cfg.out_dir, "widths.png"))
    return summary


# ---------------------------------------------------------------------------- summary


def summarise(runs: list[dict]) -> dict:
    """Per task: the base, every method at every ratio (test / val accuracy, FLOPs, latency
    intervals over seeds), paired differences against uniform width and against the base,
    the MorphNet regulariser chosen on validation, and the speed check (latency speed-up /
    FLOP ratio)."""
    out: dict[str, Any] = {"tasks": {}}
    for task in sorted({r["task"] for r in runs}):
        rs = [r for r in runs if r["task"] == task]
        base = {r["seed"]: r for r in rs if r["phase"] == "base"}
        if not base:
            continue
        t: dict[str, Any] = {"base": {"test_acc": interval([b["test_acc"] for b in
                                                            base.values()]),
                                      "flops": next(iter(base.values()))["flops"],
                                      "latency": interval([b["latency"]
                                                           for b in base.values()])},
                             "ratios": {}}
        searches = [r for r in rs if r["phase"] == "search" and "learned" in r]
        t["search"] = {m: {"scale": next(r["scale"] for r in searches if r["method"] == m),
                           "learned_fraction": interval([r["learned_fraction"] for r in
                                                         searches if r["method"] == m])}
                       for m in MORPHNET if any(r["method"] == m for r in searches)}
        finals = [r for r in rs if r["phase"] == "final"]
        for ratio in sorted({r["ratio"] for r in finals}, reverse=True):
            at = {}
            for method in METHODS:
                fr = {r["seed"]: r for r in finals if r["ratio"] == ratio and
                      r["method"] == method}
                if not fr:
                    continue
                test = {s: 100 * r["test_acc"] for s, r in fr.items()}
                val = {s: 100 * r["val_acc"] for s, r in fr.items()}
                # the base measured in turn with each model (measure_latency)
                speed = {s: r["base_latency"] / r["latency"] for s, r in fr.items()}
                fratio = {s: base[s]["flops"] / r["flops"] for s, r in fr.items() if s in base}
                at[method] = {
                    "test": interval(test.values()), "val": interval(val.values()),
                    "flops": interval([r["flops"] for r in fr.values()]),
                    "speedup": interval(speed.values()),
                    "flop_reduction": interval(fratio.values()),
                    "speed_vs_flops": interval([speed[s] / fratio[s] for s in speed]),
                    "vs_base": paired(test, {s: 100 * b["test_acc"] for s, b in base.items()}),
                    "_test": test, "_val": val}
            uni = at.get("uniform")
            for method, a in at.items():
                a["vs_uniform"] = (paired(a["_test"], uni["_test"])
                                   if uni and method != "uniform" else None)
            morph = [m for m in MORPHNET if m in at]
            if morph:  # the regulariser reported as "MorphNet": the best on validation
                at["chosen_on_val"] = max(morph, key=lambda m: at[m]["val"]["mean"])
            for a in at.values():
                if isinstance(a, dict):
                    a.pop("_test", None)
                    a.pop("_val", None)
            t["ratios"][str(ratio)] = at
        out["tasks"][task] = t
    return out


def _f(i: Optional[dict], digits: int = 1) -> str:
    if i is None:
        return "–"
    return f"{i['mean']:.{digits}f} [{i['lo']:.{digits}f}, {i['hi']:.{digits}f}]"


def format_report(summary: dict) -> str:
    """The Markdown report of a summary: per task and FLOP target, each method's test
    accuracy, paired differences against uniform width and the unpruned base, the CPU
    speed-up and its ratio to the FLOP reduction."""
    lines = ["# morpho morph", "",
             "Test accuracy (%) with 95% t-intervals over seeds; differences are paired by "
             "seed (points). Every method is scaled to the same FLOPs and retrained the same "
             "way (python/morphonet/morph/experiment.py). speed-up: CPU latency of the base / "
             "of the model (batch 256, one thread); speed/FLOPs: speed-up ÷ FLOP reduction.",
             ""]
    again, finals = summary.get("latency_remeasured", [0, 0])
    if again:
        lines += [f"Latencies: {again} of {finals} models re-timed after the run "
                  "(`morpho morph --latency`, latency.jsonl), the rest as timed during it.", ""]
    for task, t in summary["tasks"].items():
        b = t["base"]
        lines += [f"## {task}", "",
                  f"Unpruned: {_f(_pct(b['test_acc']))} % at {b['flops'] / 1e6:.2f} MFLOPs "
                  f"per example.", ""]
        if t.get("search"):
            lines += ["MorphNet search runs (strength scale calibrated on seed 0 by FLOPs "
                      "alone; learned FLOP fraction before the expand step): " + "; ".join(
                          f"{LABELS[m]} scale {v['scale']:g}, {_f(_pct(v['learned_fraction']))}"
                          f" %" for m, v in t["search"].items()), ""]
        for ratio, at in t["ratios"].items():
            chosen = at.get("chosen_on_val")
            lines += [f"### {float(ratio):g} × FLOPs"
                      + (f" (MorphNet chosen on validation: {LABELS[chosen]})" if chosen
                         else ""), "",
                      "| method | test acc | vs uniform | vs unpruned | speed-up | "
                      "speed/FLOPs |", "|---|---|---|---|---|---|"]
            for method in METHODS:
                if method not in at:
                    continue
                a = at[method]
                vu = a["vs_uniform"]
                vs_u = f"{_f(vu)} ({vu['wins']}/{vu['pairs']} wins)" if vu else "–"
                lines.append(f"| {LABELS[method]} | {_f(a['test'])} | {vs_u} | "
                             f"{_f(a['vs_base'])} | {_f(a['speedup'], 2)} | "
                             f"{_f(a['speed_vs_flops'], 2)} |")
            lines.append("")
    if summary.get("skipped"):
        lines += [f"Skipped (torch-pruning not installed): {', '.join(summary['skipped'])}.",
                  ""]
    return "\n".join(lines)


def _pct(i: dict) -> dict:
    return {k: (100 * v if k in ("mean", "lo", "hi", "std") else v) for k, v in i.items()}


def plot_pareto(summary: dict, path: str) -> None:
    """Test accuracy against FLOPs per example, one line per method (95% intervals), the
    unpruned model as a star; one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary["tasks"])
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(6 * max(1, len(tasks)), 4.2),
                             squeeze=False)
    for ax, task in zip(axes[0], tasks):
        t = summary["tasks"][task]
        for method in METHODS:
            pts = [(at[method]["flops"]["mean"], at[method]["test"]) for at in
                   t["ratios"].values() if method in at]
            if not pts:
                continue
            pts.sort(key=lambda p: p[0])
            xs = [p[0] / 1e6 for p in pts]
            ys = [p[1]["mean"] for p in pts]
            err = [[p[1]["mean"] - p[1]["lo"] for p in pts],
                   [p[1]["hi"] - p[1]["mean"] for p in pts]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=LABELS[method])
        b = _pct(t["base"]["test_acc"])
        ax.errorbar([t["base"]["flops"] / 1e6], [b["mean"]],
                    yerr=[[b["mean"] - b["lo"]], [b["hi"] - b["mean"]]], marker="*",
                    markersize=12, color="black", label="unpruned")
        ax.set_xscale("log")
        ax.set_xlabel("MFLOPs per example")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_widths(runs: list[dict], path: str) -> None:
    """Per-layer widths of seed 0: the unpruned model and every method at the largest FLOP
    target (grouped bars per layer group, named by its first producer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in runs if r["phase"] == "base"})
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(6 * max(1, len(tasks)), 4),
                             squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rs = [r for r in runs if r["task"] == task and r["seed"] == 0]
        base = next((r for r in rs if r["phase"] == "base"), None)
        finals = [r for r in rs if r["phase"] == "final"]
        if base is None:
            continue
        ratio = max((r["ratio"] for r in finals), default=None)
        bars = [("unpruned", base["widths"])] + [
            (LABELS[r["method"]], r["widths"]) for m in METHODS for r in finals
            if r["method"] == m and r["ratio"] == ratio]
        layers = list(base["widths"])
        n = len(bars)
        for i, (label, w) in enumerate(bars):
            ax.bar([j + (i - n / 2) * 0.8 / n for j in range(len(layers))],
                   [w.get(layer, 0) for layer in layers], width=0.8 / n, label=label)
        ax.set_xticks(range(len(layers)), layers, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("channels")
        ax.set_title(f"{task}, seed 0" + (f", {ratio:g}× FLOPs" if ratio else ""))
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
