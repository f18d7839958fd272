"""Runs killed with SIGKILL mid-training and resumed in a new process end identical (bit for
bit: weights, structure, metrics; timings aside) to uninterrupted runs: MorphoTrainer from its
checkpoint, ``morpho grow`` from its per-run records and the Structure Net run's checkpoint
(a grown network: the structure is rebuilt before the weights load), ``morpho compare`` from
its partial records without training a finished run again."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from morphonet.cli import main
from morphonet.files import load_torch, read_records, save_torch

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TIMING = {"train_s", "bookkeeping_s", "bookkeeping_fraction", "snapshot_s", "seconds",
          "seconds_std", "wall_s"}  # wall-clock figures: never equal between two runs

MORPHO_SCRIPT = textwrap.dedent("""
    import sys, time
    import torch
    from morphonet import make_blobs
    from morphonet.masks import MorphoConfig, MorphoNetMLP, MorphoTrainer

    torch.set_num_threads(1)
    ckpt, out, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    x, y = make_blobs(n_samples=300, n_features=20, n_classes=5, spread=2.0, seed=0)
    x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    cfg = MorphoConfig(input_dim=20, n_classes=5, hidden_dims=[32, 16], epochs=10,
                       warmup_epochs=2, target_sparsity=0.7, batch_size=32, seed=3,
                       device="cpu", sparsity_schedule="cosine")
    torch.manual_seed(3)  # the initial weights (the trainer seeds what follows)
    tr = MorphoTrainer(MorphoNetMLP(cfg), log=lambda s: None)
    stats = tr.train(x[:240], y[:240], x[240:], y[240:], verbose=False,
                     callback=lambda r: time.sleep(0.15),  # time to be killed mid-run
                     checkpoint=ckpt if ckpt != "-" else None, resume=resume)
    torch.save({"model": tr.model.state_dict(), "weight_opt": tr.weight_opt.state_dict(),
                "mask_opt": tr.mask_opt.state_dict(),
                "stats": {k: v for k, v in stats.items() if k != "train_time"}}, out)
""")


def _kill_when(p: subprocess.Popen, ready, what: str, limit: float = 120.0) -> None:
    """SIGKILL ``p`` (its whole session) as soon as ``ready()``; fails if it ended first."""
    deadline = time.time() + limit
    while time.time() < deadline and p.poll() is None and not ready():
        time.sleep(0.05)
    assert p.poll() is None, f"the run ended before {what}"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL


def _epoch_of(path) -> int:
    if not os.path.exists(path):
        return -1
    try:
        return load_torch(path, "checkpoint")["epoch"]
    except (ValueError, OSError, KeyError):
        return -1


@pytest.mark.slow
def test_morpho_trainer_sigkill_then_resume_is_identical(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(MORPHO_SCRIPT)
    whole, killed, ckpt = tmp_path / "whole.pt", tmp_path / "killed.pt", tmp_path / "run.ckpt"
    subprocess.run([sys.executable, str(script), "-", str(whole), "0"], env=ENV, check=True)
    p = subprocess.Popen([sys.executable, str(script), str(ckpt), str(killed), "0"], env=ENV,
                         start_new_session=True)
    _kill_when(p, lambda: _epoch_of(ckpt) >= 2, "its third checkpoint")
    at = _epoch_of(ckpt)
    assert 2 <= at < 9 and not killed.exists()  # killed mid-training, after pruning began
    subprocess.run([sys.executable, str(script), str(ckpt), str(killed), "1"], env=ENV,
                   check=True)
    a, b = torch.load(whole, weights_only=False), torch.load(killed, weights_only=False)
    assert a["stats"] == b["stats"]  # losses, sparsity, temperatures, validation, best epoch
    assert a["stats"]["sparsity_history"][at] > 0  # the killed run had pruned already
    for key in ("model",):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), k
    for key in ("weight_opt", "mask_opt"):
        for i, st in a[key]["state"].items():
            for k, v in st.items():
                assert torch.equal(v, b[key]["state"][i][k]), (key, i, k)


# ---------------------------------------------------------------------------- morpho grow

GROW = ["grow", "--datasets", "digits", "--seeds", "2", "--epochs", "6", "--hidden", "24",
        "12", "--sparsity", "0.01", "--batch-size", "16", "--methods", "structure",
        "--no-progress"]  # growth events at epochs 2 and 5 of each seed


def _grow(out, *extra, popen=False):
    cmd = [sys.executable, "-m", "morphonet.cli", *GROW, "--out", str(out), *extra]
    if popen:
        return subprocess.Popen(cmd, env=ENV, start_new_session=True,
                                stdout=subprocess.DEVNULL)
    return subprocess.run(cmd, env=ENV, check=True, capture_output=True, text=True).stdout


def _strip(v):
    if isinstance(v, dict):
        return {k: _strip(x) for k, x in v.items() if k not in TIMING}
    if isinstance(v, list):
        return [_strip(x) for x in v]
    return v


@pytest.mark.slow
def test_grow_sigkill_then_resume_is_identical(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main([*GROW, "--out", str(whole)]) == 0  # uninterrupted, here (one thread, as there)
    ckpt = killed / "work" / "digits_s1" / "structure.ckpt"
    p = _grow(killed, popen=True)
    # killed in seed 1's Structure Net run, after its first growth event (epoch 2)
    _kill_when(p, lambda: _epoch_of(ckpt) >= 3, "seed 1's growth")
    state = load_torch(ckpt, "checkpoint")
    assert state["epoch"] < 5 and state["model"]["growth_log"]  # mid-run, grown already
    grown = state["model"]["network"]
    assert any(k.endswith(".values") and v.numel() > 0 for k, v in grown.items())
    before = {(r["seed"], r["method"]): r for r in read_records(killed / "runs.partial.jsonl")}
    assert set(before) == {(0, "structure")}
    assert not (killed / "results.json").exists()
    out = _grow(killed, "--resume")
    assert "resuming: 1 finished runs" in out
    a = json.loads((whole / "results.json").read_text())
    b = json.loads((killed / "results.json").read_text())
    assert _strip(a["runs"]) == _strip(b["runs"])  # weights → accuracy, structure, history
    assert [r["growth_events"] for r in b["runs"]] == [2, 2]
    for r in b["runs"]:  # the runs finished before the kill were not trained again
        if r["seed"] == 0:
            assert r["train_s"] == before[(0, r["method"])]["train_s"]
    assert not (killed / "work").exists() and not (killed / "runs.partial.jsonl").exists()
    # the seed-0 snapshots (kept in the results) are the uninterrupted run's, file for file
    ia = json.loads((whole / "snapshots" / "digits" / "index.json").read_text())
    ib = json.loads((killed / "snapshots" / "digits" / "index.json").read_text())
    assert ia == ib


def test_grow_checkpoint_restores_a_grown_network_exactly(tmp_path):
    """In one process: the training state of a grown network loads into a freshly built one
    (its edge lists take the grown capacity) and both continue identically."""
    from morphonet.growth.extrema import ExtremaConfig
    from morphonet.growth.scheduler import SchedulerConfig
    from morphonet.growth.trainer import create_multi_scale_network
    from morphonet.loop import shuffled_batches

    def build():
        torch.manual_seed(0)
        m = create_multi_scale_network(
            8, [12], 3, sparsity=0.1, seed=0,
            scheduler=SchedulerConfig(window_steps=2, spike_threshold=1e-6,
                                      credits_per_spike=10, growth_threshold=10,
                                      cooldown_steps=3),
            extrema=ExtremaConfig(rule="saturation", input_high=1.0, window_batches=2,
                                  stride_steps=1, min_share=0.3))
        return m, torch.optim.Adam(m.parameters(), lr=1e-2)

    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g) * 1.5
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    crit = torch.nn.CrossEntropyLoss()
    a, oa = build()
    gen = torch.Generator().manual_seed(2)
    for ep in range(2):
        a.train_epoch(shuffled_batches(x, y, 8, gen), oa, crit, ep)
    assert a.growth_log and a.network.layer(0, 1).values.numel() > build()[0].network.layer(
        0, 1).values.numel()  # grown past the first capacity
    # through a file, as a checkpoint goes (loaded in one process, an optimizer's state
    # tensors would be shared with the one that saved them)
    save_torch(tmp_path / "c.ckpt", {"model": a.training_state(), "opt": oa.state_dict(),
                                     "gen": gen.get_state()}, "checkpoint")
    st = load_torch(tmp_path / "c.ckpt", "checkpoint")
    b, ob = build()
    b.load_training_state(st["model"])
    ob.load_state_dict(st["opt"])
    gen_b = torch.Generator()
    gen_b.set_state(st["gen"])
    rng = torch.get_rng_state()
    for ep in range(2, 4):
        a.train_epoch(shuffled_batches(x, y, 8, gen), oa, crit, ep)
    torch.set_rng_state(rng)
    for ep in range(2, 4):
        b.train_epoch(shuffled_batches(x, y, 8, gen_b), ob, crit, ep)
    sa, sb = a.network.state_dict(), b.network.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert _strip(a.history) == _strip(b.history) and a.growth_log == b.growth_log


# ---------------------------------------------------------------------------- morpho compare

COMPARE = ["compare", "--quick", "--datasets", "moons", "--seeds", "2", "--epochs", "10"]


@pytest.mark.slow
def test_compare_sigkill_then_resume_keeps_finished_runs(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"

    def cmd(out, *extra):
        return [sys.executable, "-m", "morphonet.cli", *COMPARE, "--out", str(out), *extra]

    subprocess.run(cmd(whole), env=ENV, check=True, capture_output=True)
    partial = killed / "runs.partial.jsonl"

    def records():
        try:
            return read_records(partial) if partial.exists() else []
        except ValueError:  # a line being written
            return []

    p = subprocess.Popen(cmd(killed), env=ENV, start_new_session=True,
                         stdout=subprocess.DEVNULL)
    _kill_when(p, lambda: len(records()) >= 2, "two runs were recorded")
    before = records()
    assert 2 <= len(before) < 6 and not (killed / "compare.json").exists()
    # a resume with other flags is refused: the partial runs belong to this job
    other = subprocess.run(cmd(killed, "--resume", "--epochs", "9"), env=ENV,
                           capture_output=True, text=True)
    assert other.returncode == 2 and "another job" in other.stderr
    out = subprocess.run(cmd(killed, "--resume"), env=ENV, check=True, capture_output=True,
                         text=True).stdout
    assert f"resuming: {len(before)} finished runs" in out
    a = json.loads((whole / "compare.json").read_text())
    b = json.loads((killed / "compare.json").read_text())
    for key in ("runs", "variants", "summary", "paired"):
        assert _strip(a[key]) == _strip(b[key]), key
    kept = {(r["method"], r["seed"]): r["seconds"] for r in before}
    for r in b["runs"]:  # the finished runs were taken as they were, not trained again
        if (r["method"], r["seed"]) in kept:
            assert r["seconds"] == kept[(r["method"], r["seed"])]
    assert not partial.exists()


def test_grow_resume_with_other_settings_is_refused(tmp_path):
    """The partial runs belong to one job: a resume with other training settings is refused
    (exit 2 from the CLI), not merged into results trained otherwise."""
    from morphonet.growth.experiment import GrowExperimentConfig, run_grow_experiment

    cfg = GrowExperimentConfig(datasets=("digits",), seeds=2, epochs={"digits": 2},
                               hidden=(12,), methods=("structure",), out_dir=str(tmp_path))

    def stop_after_first_run(line):
        if "growth events" in line:  # seed 0 recorded: interrupted here
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_grow_experiment(cfg, progress=False, log=stop_after_first_run)
    assert len(read_records(tmp_path / "runs.partial.jsonl")) == 1
    with pytest.raises(ValueError, match="epochs"):
        run_grow_experiment(cfg.replace(epochs={"digits": 3}), progress=False, log=None,
                            resume=True)
    args = ["grow", "--datasets", "digits", "--seeds", "2", "--epochs", "2", "--hidden", "12",
            "--methods", "structure", "--no-progress", "--out", str(tmp_path), "--resume"]
    assert main(args[:6] + ["3"] + args[7:]) == 2  # --epochs 3
    lines = []
    res = run_grow_experiment(cfg, progress=False, log=lines.append, resume=True)
    assert any("resuming: 1 finished runs" in s for s in lines)
    assert [r["seed"] for r in res["runs"]] == [0, 1]
