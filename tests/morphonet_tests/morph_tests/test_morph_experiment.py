"""``morpho morph`` end to end on a tiny budget: matched FLOPs, records, resume, report, plots,
the Torch-Pruning peer and its absence, the command line."""

import json
import os
import sys

import pytest

from morphonet.cli import main
from morphonet.files import read_records
from morphonet.morph.experiment import MorphExperimentConfig, run_morph_experiment

TINY = dict(tasks=("digits",), seeds=2, epochs={"digits": 1, "mnist1d": 1}, ratios=(0.5,),
            strength_scale={"gamma": 4.0}, latency_batch=32)


def test_experiment_matches_flops_and_resumes(tmp_path):
    cfg = MorphExperimentConfig(methods=("uniform", "gamma", "tp_bnscale"),
                                out_dir=str(tmp_path), **TINY)
    lines = []
    summary = run_morph_experiment(cfg, log=lines.append)
    runs = read_records(tmp_path / "runs.partial.jsonl")
    base = {r["seed"]: r for r in runs if r["phase"] == "base"}
    finals = [r for r in runs if r["phase"] == "final"]
    assert len(finals) == 2 * 3
    for r in finals:  # every method at the same budget: the expand step
        target = 0.5 * base[r["seed"]]["flops"]
        assert 0.9 * target <= r["flops"] <= target
        assert r["latency"] > 0 and r["base_latency"] > 0
    at = summary["tasks"]["digits"]["ratios"]["0.5"]
    assert set(at) >= {"uniform", "gamma", "tp_bnscale", "chosen_on_val"}
    assert at["gamma"]["vs_uniform"]["pairs"] == 2
    report = (tmp_path / "report.md").read_text()
    assert "| MorphNet γ-L1 |" in report and "Torch-Pruning BN-scale" in report
    for f in ("pareto.png", "widths.png", "morph.json", "runs.jsonl"):
        assert (tmp_path / f).stat().st_size > 0
    assert json.loads((tmp_path / "morph.json").read_text())["config"]["seeds"] == 2

    again = []
    run_morph_experiment(cfg, log=again.append)  # everything recorded: nothing retrained
    assert again == []
    assert len(read_records(tmp_path / "runs.partial.jsonl")) == len(runs)


def test_calibration_picks_the_scale_by_flops_alone(tmp_path):
    cfg = MorphExperimentConfig(methods=("uniform", "gamma"), out_dir=str(tmp_path),
                                strength_grid=(0.25, 64.0),
                                **{**TINY, "seeds": 1, "strength_scale": None})
    summary = run_morph_experiment(cfg, log=None)
    runs = read_records(tmp_path / "runs.partial.jsonl")
    cal = {r["ratio"]: r["learned_fraction"] for r in runs if r["phase"] == "calibrate"}
    assert 0.25 in cal and set(cal) <= {0.25, 64.0}  # walked from the scale nearest 1
    if cal[0.25] > 0.35:
        assert 64.0 in cal  # above the target: towards larger scales
    import math

    want = min(cal, key=lambda s: abs(math.log(max(cal[s], 1e-6) / 0.35)))
    assert summary["tasks"]["digits"]["search"]["gamma"]["scale"] == want


def test_without_torch_pruning_the_peer_is_skipped_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # import torch_pruning fails
    cfg = MorphExperimentConfig(methods=("uniform", "tp_groupnorm"), out_dir=str(tmp_path),
                                **{**TINY, "seeds": 1})
    lines = []
    summary = run_morph_experiment(cfg, log=lines.append)
    assert any("torch-pruning is not installed" in s for s in lines)
    assert summary["skipped"] == ["tp_groupnorm"]
    assert "Skipped (torch-pruning not installed)" in (tmp_path / "report.md").read_text()


def test_cli(tmp_path, capsys):
    out = str(tmp_path)
    assert main(["morph", "--render", "--out", out]) == 2
    assert main(["morph", "--tasks", "digits", "--seeds", "1", "--epochs", "1",
                 "--ratios", "0.5", "--methods", "uniform", "--quiet", "--out", out]) == 0
    assert "| uniform width |" in capsys.readouterr().out
    os.remove(os.path.join(out, "report.md"))
    assert main(["morph", "--render", "--out", out, "--tasks", "digits"]) == 0
    assert os.path.exists(os.path.join(out, "report.md"))
    # --latency: the final model rebuilt from its widths (parameter count checked) and timed
    # again; the report uses that time and says so; a second call times nothing more
    assert main(["morph", "--latency", "--ratios", "0.25", "--quiet", "--out", out,
                 "--tasks", "digits"]) == 0  # no final model at 0.25x: nothing timed
    assert not os.path.exists(os.path.join(out, "latency.jsonl"))
    assert main(["morph", "--latency", "--quiet", "--out", out, "--tasks", "digits"]) == 0
    (again,) = read_records(os.path.join(out, "latency.jsonl"))
    assert again["method"] == "uniform" and again["latency"] > 0 and again["base_latency"] > 0
    assert "1 of 1 models re-timed" in (tmp_path / "report.md").read_text()
    assert main(["morph", "--latency", "--quiet", "--out", out, "--tasks", "digits"]) == 0
    assert len(read_records(os.path.join(out, "latency.jsonl"))) == 1
    with pytest.raises(SystemExit):
        main(["morph", "--methods", "magnitude"])
    with pytest.raises(ValueError, match="ratios"):
        main(["morph", "--ratios", "1.5", "--out", out])


def test_config_is_checked():
    with pytest.raises(ValueError, match="unknown regularisers"):
        MorphExperimentConfig(strength_scale={"l2": 1.0})
    with pytest.raises(ValueError, match="epochs has no entry"):
        MorphExperimentConfig(epochs={"digits": 3})
    with pytest.raises(ValueError, match="distinct names"):
        MorphExperimentConfig(methods=("uniform", "uniform"))
