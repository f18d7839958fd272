"""``morpho speed --quick`` end to end: records, resume, table, plot, and the latency budget
measured against the dense twin."""

import os

import pytest
import torch

from morphonet.cli import main
from morphonet.files import read_records
from morphonet.speed import SpeedConfig, run_speed
from morphonet.speed.budget import Plan
from morphonet.speed.experiment import BUDGET_ATTEMPTS, _Data, _exports_of, _load
from morphonet.timing import time_models


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("speed"))
    cfg = SpeedConfig.quick(out_dir=out)
    lines = []
    summary = run_speed(cfg, log=lines.append)
    return cfg, summary, lines


def test_records_table_plot(quick):
    cfg, summary, _ = quick
    for f in ("runs.jsonl", "timing.jsonl", "speed.md", "speed.json", "speed.png",
              "costmodel.json"):
        assert os.path.exists(os.path.join(cfg.out_dir, f)), f
    runs = {r["run"]: r for r in read_records(os.path.join(cfg.out_dir, "runs.jsonl"))}
    assert {"mlp/dense", "mlp/element:0.97", "mlp/block32:0.9", "mlp/neuron:0.75", "mlp/budget",
            "gpt/dense", "gpt/element:0.9", "gpt/block16:0.5"} <= set(runs)
    gpt = runs["gpt/element:0.9"]
    assert len(gpt["corpus_sha256"]) == 64 and gpt["sparsity"] == pytest.approx(0.9, abs=0.02)
    for r in runs.values():
        if "error" in r:
            continue
        for fmt, q in r["exports"].items():  # each export computes what the model computes
            assert q["val_loss"] == pytest.approx(r["quality"]["val_loss"], rel=1e-4), fmt
    timings = read_records(os.path.join(cfg.out_dir, "timing.jsonl"))
    assert {(t["task"], t["device"], t["dtype"], t["batch"]) for t in timings} >= {
        ("mlp", "cpu", "fp32", 1), ("mlp", "cpu", "fp32", 64), ("gpt", "cpu", "fp32", 64)}
    text = open(os.path.join(cfg.out_dir, "speed.md")).read()
    assert "| element:0.97/edge_list |" in text and "| neuron:0.75/shrink |" in text
    assert "CPU fp32 b64" in text and "Latency budget (" in text
    if not torch.cuda.is_available():  # the GPU columns are there, saying n/a
        assert "GPU fp32 b64" in text and "| n/a |" in text
    assert summary["tasks"]["mlp"]["check"]["line"].startswith(("MET", "NOT MET"))


def test_resume_redoes_nothing(quick):
    cfg, _, _ = quick
    lines = []
    run_speed(cfg, log=lines.append)
    assert not [s for s in lines if "training" in s or "[timing]" in s]


def test_budget_met_measured_against_the_dense_twin(quick):
    cfg, _, _ = quick
    runs = {r["run"]: r for r in read_records(os.path.join(cfg.out_dir, "runs.jsonl"))}
    rec = runs["mlp/budget"]
    assert "error" not in rec, rec.get("error")
    plan = Plan.from_dict(rec["plan"])
    assert plan.predicted_ms <= plan.budget_ms + 1e-9
    # the closed loop: it stops at the first attempt that measured the budget met; each
    # re-plan scales the previous target by that attempt's predicted / measured (its 20th
    # percentile) speed-up; the record's plan is the last attempt's
    tries = rec["budget_attempts"]
    assert 1 <= len(tries) <= BUDGET_ATTEMPTS
    assert not any(a["met"] for a in tries[:-1])
    assert tries[0]["planned_target_speedup"] == cfg.target_speedup
    for a, b in zip(tries, tries[1:]):
        assert b["planned_target_speedup"] == pytest.approx(
            a["planned_target_speedup"] * a["predicted_speedup"] / a["measured_speedup_p20"])
    assert tries[-1]["predicted_ms"] == pytest.approx(plan.predicted_ms)
    assert tries[-1]["met"] == (tries[-1]["measured_speedup_p20"] >= cfg.target_speedup)
    assert all(a["measured_speedup_p20"] <= a["measured_speedup"] for a in tries)
    data = _Data(cfg, "mlp")
    dense = _load(cfg, runs["mlp/dense"], data)
    exported = _exports_of(rec, _load(cfg, rec, data))["budget"]
    # interleaved with the dense twin; the fastest sample of each, since on the loaded
    # development machine most samples are preempted (load ~4 on 2 cores); the budget asked
    # for 1.5×, the check allows the prediction a 25% miss
    res = time_models({"dense": dense, "budget": exported}, data.batch(max(cfg.batches)),
                      reference="dense", rounds=21, min_sample_ms=0.5)
    assert res["budget"]["fastest_ratio"] >= 0.75 * cfg.target_speedup


def test_cli_quick_render_and_errors(quick, capsys):
    cfg, _, _ = quick
    assert main(["speed", "--quick", "--render", "--out", cfg.out_dir]) == 0
    assert "# morpho speed" in capsys.readouterr().out
    assert main(["speed", "--quick", "--render", "--out", cfg.out_dir + "/none"]) == 2
    # without --quick: the records are still judged by their own settings (batch 64, 1.5×)
    before = open(os.path.join(cfg.out_dir, "speed.md")).read()
    assert main(["speed", "--render", "--out", cfg.out_dir]) == 0
    capsys.readouterr()
    assert open(os.path.join(cfg.out_dir, "speed.md")).read() == before
    assert main(["speed", "--quick", "--rounds", "0", "--out", cfg.out_dir]) == 2
    assert "rounds" in capsys.readouterr().err


def test_resume_with_other_training_settings_is_refused(quick, capsys):
    cfg, _, _ = quick
    with pytest.raises(ValueError, match="mlp_epochs"):
        run_speed(cfg.replace(mlp_epochs=3), log=None)
    assert main(["speed", "--quick", "--target-speedup", "2", "--out", cfg.out_dir]) == 2
    assert "target_speedup" in capsys.readouterr().err
    # the budget run was planned for the largest batch: changing it is refused too
    with pytest.raises(ValueError, match="batches"):
        run_speed(cfg.replace(batches=[1, 32]), log=None)
    run_speed(cfg.replace(batches=[64], rounds=1), log=None)  # same largest batch: kept


def test_config_checks():
    with pytest.raises(ValueError, match="structure"):
        SpeedConfig(mlp_structures=("block48:0.9",))
    with pytest.raises(ValueError, match="target_speedup"):
        SpeedConfig(target_speedup=3.0, latency_ms=2.0)
    with pytest.raises(ValueError, match="budget_task"):
        SpeedConfig(budget_task="cnn")
    assert SpeedConfig.from_dict(SpeedConfig.quick().to_dict()) == SpeedConfig.quick()
    assert torch.get_num_threads() >= 1


def test_records_name_the_commit_the_run_started_at(tmp_path, monkeypatch):
    """A commit made while a long run trains is not the code it runs: every record carries
    the commit read when the run started."""
    import subprocess

    from morphonet.speed import experiment

    heads = iter(f"c{i}" for i in range(100))
    real = subprocess.run

    def fake(cmd, *a, **kw):
        if list(cmd[:2]) == ["git", "rev-parse"]:  # HEAD moves on every look
            return subprocess.CompletedProcess(cmd, 0, stdout=next(heads) + "\n", stderr="")
        return real(cmd, *a, **kw)

    monkeypatch.setattr(subprocess, "run", fake)
    monkeypatch.setattr(experiment, "_COMMIT", {}, raising=False)
    cfg = SpeedConfig.quick(out_dir=str(tmp_path), tasks=("mlp",), budget_task="none",
                            mlp_structures=("element:0.5",), batches=[4], rounds=1,
                            mlp_epochs=1, mlp_train_rows=128, mlp_hidden=[64, 64])
    run_speed(cfg, log=None)
    recs = (read_records(os.path.join(cfg.out_dir, "runs.jsonl"))
            + read_records(os.path.join(cfg.out_dir, "timing.jsonl")))
    assert len(recs) >= 3 and {r["commit"] for r in recs} == {"c0"}


def test_resume_on_other_data_is_refused(quick, tmp_path):
    """The GPT's corpus is the running Python's library source: records made on another
    corpus (another Python version) are not resumed on this one."""
    import shutil

    from morphonet.files import append_record

    cfg, _, _ = quick
    out = str(tmp_path / "copy")
    shutil.copytree(cfg.out_dir, out)
    runs = os.path.join(out, "runs.jsonl")
    rec = next(r for r in read_records(runs) if r["run"] == "gpt/dense")
    append_record(runs, {**rec, "corpus_sha256": "0" * 64})
    with pytest.raises(ValueError, match="corpus_sha256"):
        run_speed(cfg.replace(out_dir=out), log=None)


def test_done_when_names_the_half_of_the_rule_that_holds():
    from morphonet.speed.experiment import _check

    def row(label, sp, loss, acc):
        return {"label": label, "val_loss": loss, "val_acc": acc,
                "latency": {"CPU fp32 b256": {"speedup": {"median": sp}}}}

    cfg = SpeedConfig()
    rows = [row("dense", 1.0, 1.00, 0.70),
            row("fast_loss_only", 20.0, 0.95, 0.66),   # 4 points less accurate, lower loss
            row("both", 5.0, 0.99, 0.695),
            row("slow", 2.0, 0.90, 0.72)]
    out = _check("mlp", rows, cfg)
    assert out["met"] and out["label"] == "both"  # both halves ranked before a faster one
    assert "fast_loss_only 20.00×" in out["line"] and "(loss within the rule)" in out["line"]
    assert "(loss and accuracy within the rule)" in out["line"] and "slow" not in out["line"]
    miss = _check("mlp", [rows[0], rows[3]], cfg)
    assert not miss["met"] and miss["line"].startswith("NOT MET") and "slow 2.00×" in miss["line"]
