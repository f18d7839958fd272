"""Item 8 of issue 20: the ``morpho evolve`` experiment's machinery (a tiny run end to end,
its config checks, the paired summary)."""

import json

import pytest

from morphonet.evolution.cli import main
from morphonet.evolution.experiment import EvolveExperimentConfig, format_table, summarise


def test_tiny_run_end_to_end(tmp_path):
    out = tmp_path / "evolve"
    rc = main(["evolve", "--datasets", "digits", "--seeds", "2", "--epochs", "2",
               "--iterations", "2", "--hidden", "12", "--methods", "standard", "pipeline",
               "static", "--out", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    runs = {(r["method"], r["seed"]): r for r in res["runs"]}
    assert set(runs) == {(m, s) for m in ("standard", "pipeline", "static") for s in (0, 1)}
    for s in (0, 1):  # the peer gets the pipeline's final connections
        assert abs(runs["static", s]["connections"] - runs["pipeline", s]["connections"]) <= 2
        pipe = runs["pipeline", s]
        assert len(pipe["evolution_log"]) == 2 and len(pipe["history"]) == 2
        assert "extrema_ratio" in pipe["evolution_log"][0]["analysis"]  # metrics recorded
        assert pipe["max_output_change"] <= 1e-5
    assert res["summary"]["digits"]["pipeline_minus"]["static"]["pairs"] == 2
    assert (out / "timeline.png").stat().st_size > 0
    assert "| digits | pipeline |" in (out / "table.md").read_text()


def test_config_checks():
    with pytest.raises(ValueError, match="multiple of iterations"):
        EvolveExperimentConfig(epochs={"digits": 7, "mnist1d": 40}, iterations=2)
    with pytest.raises(ValueError, match="keep 'pipeline'"):
        EvolveExperimentConfig(methods=("standard", "rigl"))
    with pytest.raises(ValueError, match="methods"):
        EvolveExperimentConfig(methods=("nope",))
    assert EvolveExperimentConfig.quick().seeds == 2


def test_summary_is_paired_by_seed():
    runs = [{"dataset": "d", "method": m, "seed": s, "test_acc": acc, "connections": 10}
            for m, accs in (("pipeline", [0.9, 0.8, 0.85]), ("rigl", [0.88, 0.79, 0.86]))
            for s, acc in enumerate(accs)]
    s = summarise(runs)["d"]
    p = s["pipeline_minus"]["rigl"]
    assert p["mean"] == pytest.approx((0.02 + 0.01 - 0.01) / 3)
    assert (p["wins"], p["pairs"]) == (2, 3)
    assert s["methods"]["rigl"]["test_acc"]["mean"] == pytest.approx(2.53 / 3)
    text = format_table({"config": {"seeds": 3, "epochs": {}, "iterations": 1, "hidden": [],
                                    "start_sparsity": 0.1}, "summary": {"d": s}, "wall_s": 1})
    assert "| d | rigl | +0.67 |" in text
