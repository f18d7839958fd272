"""Benchmark of Structure Net's growth bookkeeping against the training it rides on (CPU).

Bookkeeping = everything growth adds to plain sparse training: the per-step gradient norm and
scheduler update, the extrema window (extrema_stats, gathered only while a growth event is
due), and each growth event (extrema verdicts, dense-gradient scoring, routing, cloning,
insertion with optimizer-state remap). Snapshot I/O is reported apart (it is not bookkeeping).

Records (bench/results/growth.jsonl, DESIGN.md convention 7), all impl ``morpho``:
  growth_run          one full growth run on digits: median / p20 / p80 of the per-epoch
                      bookkeeping time (ms), with fraction = bookkeeping / training time
                      (target < 0.05), events, epochs, train_s, per_step_s, growth_s
  train_step          one training step of the final grown network (fwd+bwd+Adam): the peer
  step_bookkeeping    gradient norm + scheduler.observe, per step
  extrema_batch       one ExtremaDetector.update (three extrema_stats calls)
  growth_event        ConnectionRouter.plan + apply of one event on the grown network

Usage: python bench/bench_growth.py [--quick] [--epochs N] [--out PATH]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Recorder, time_ms  # noqa: E402

from morphonet.data import load_dataset  # noqa: E402
from morphonet.growth import create_multi_scale_network  # noqa: E402
from morphonet.growth.experiment import growth_configs  # noqa: E402
from morphonet.growth.trainer import grad_norm  # noqa: E402


def _loader(ds, gen, bs=32):
    perm = torch.randperm(len(ds.train.y), generator=gen)
    return [(ds.train.x[perm[i:i + bs]], ds.train.y[perm[i:i + bs]])
            for i in range(0, len(perm), bs)]


def _q(v: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(v, n=10, method="inclusive") if len(v) > 1 else v * 9
    return statistics.median(v), q[1], q[7]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    epochs = args.epochs or (20 if args.quick else 80)
    rec = Recorder("growth", "cpu", args.out)
    ds = load_dataset("digits", 0)
    torch.manual_seed(0)
    hidden = [160, 80]
    scheduler, extrema, router = growth_configs(epochs)  # the `morpho grow` experiment's
    model = create_multi_scale_network(
        64, hidden, 10, sparsity=1e-4, seed=0, val_data=(ds.val.x, ds.val.y),
        scheduler=scheduler, extrema=extrema, router=router)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    crit = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)
    model.train_epoch(_loader(ds, gen)[:2], opt, crit, 0)  # warm-up: loads the extension
    model.timing = dict.fromkeys(model.timing, 0.0)
    hist = [model.train_epoch(_loader(ds, gen), opt, crit, ep) for ep in range(epochs)]
    t = model.timing
    frac = t["bookkeeping_s"] / t["train_s"]
    shape = {"dataset": "digits", "layers": [64, *hidden, 10], "batch": 32, "epochs": epochs,
             "final_connections": model.network.get_connectivity_stats()[
                 "total_active_connections"]}
    med, p20, p80 = _q([1e3 * h["bookkeeping_s"] for h in hist])
    rec.add(op="growth_run", impl="morpho", mode="train", dtype="float32", shape=shape,
            median_ms=med, p20_ms=p20, p80_ms=p80, peak_mem_mb=None, fraction=frac,
            events=len(model.growth_log), train_s=t["train_s"], per_step_s=t["per_step_s"],
            growth_s=t["growth_s"], snapshot_s=t["snapshot_s"])
    net = model.network
    x, y = ds.train.x[:32], ds.train.y[:32]

    def step():
        opt.zero_grad(set_to_none=True)
        crit(net(x), y).backward()
        opt.step()

    net.track = True
    med, p20, p80 = time_ms(step, "cpu")
    rec.add(op="train_step", impl="morpho", mode="fwd+bwd", dtype="float32", shape=shape,
            median_ms=med, p20_ms=p20, p80_ms=p80, peak_mem_mb=None)
    params = list(net.parameters())
    med, p20, p80 = time_ms(lambda: model.scheduler.observe(grad_norm(params)), "cpu")
    rec.add(op="step_bookkeeping", impl="morpho", mode="fwd", dtype="float32", shape=shape,
            median_ms=med, p20_ms=p20, p80_ms=p80, peak_mem_mb=None)
    acts = net.activations
    med, p20, p80 = time_ms(lambda: model.detector.update(acts), "cpu")
    rec.add(op="extrema_batch", impl="morpho", mode="fwd", dtype="float32", shape=shape,
            median_ms=med, p20_ms=p20, p80_ms=p80, peak_mem_mb=None)
    model._score_batch(x, y, crit)
    rep = model.detector.report(model._active_masks())
    times = []
    for _ in range(5 if args.quick else 15):
        clone = copy.deepcopy(net)  # not timed
        t0 = time.perf_counter()
        model.router.grow(clone, rep, 25)
        times.append(1e3 * (time.perf_counter() - t0))
    med, p20, p80 = _q(times)
    rec.add(op="growth_event", impl="morpho", mode="fwd", dtype="float32", shape=shape,
            median_ms=med, p20_ms=p20, p80_ms=p80, peak_mem_mb=None)
    for r in rec.records:
        extra = f" fraction {100 * r['fraction']:.2f}%" if "fraction" in r else ""
        print(f"{r['op']:18s} median {r['median_ms']:8.3f} ms (p20 {r['p20_ms']:.3f}, "
              f"p80 {r['p80_ms']:.3f}){extra}")
    print(f"bookkeeping {t['bookkeeping_s']:.3f} s of {t['train_s']:.3f} s training "
          f"({100 * frac:.2f}%, target < 5%); {len(model.growth_log)} growth events; "
          f"records in {rec.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
