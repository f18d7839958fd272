"""The Neural Architecture Lab end to end on the synthetic metric (no training): designs
checked at registration, every experiment an Optuna trial with its config and metrics, the
statistics equal to scipy / statsmodels on the same values, verdicts, Holm across hypotheses,
insights and the follow-up rule, the report; the seed's API and its README example."""

import dataclasses
import re
import runpy
from pathlib import Path

import neural_architecture_lab
import numpy as np
import optuna
import pytest
from scipy import stats as st
from statsmodels.stats.multitest import multipletests

from morphonet import lab as lab_pkg
from morphonet.lab import (
    EXPERIMENTS,
    Experiment,
    Hypothesis,
    HypothesisCategory,
    LabConfig,
    NeuralArchitectureLab,
    read_lab_file,
    register_experiment,
)
from morphonet.lab.engine import open_storage

ROOT = Path(__file__).resolve().parents[3]


def _lab(tmp_path, **kw) -> NeuralArchitectureLab:
    return NeuralArchitectureLab(LabConfig(results_dir=str(tmp_path / "lab"), verbose=False,
                                           n_resamples=2000, **kw))


def test_seed_import_name_and_api():
    for name in ("LabConfig", "NeuralArchitectureLab", "Hypothesis", "HypothesisCategory"):
        assert getattr(neural_architecture_lab, name) is getattr(lab_pkg, name)
    for method in ("register_hypothesis", "run_hypothesis_test", "extract_insights",
                   "generate_report"):
        assert callable(getattr(NeuralArchitectureLab, method))
    assert HypothesisCategory("growth_dynamics") is HypothesisCategory.GROWTH_DYNAMICS


def test_designs_are_checked_when_made_and_registered(tmp_path):
    with pytest.raises(ValueError, match="never below 0.0625; use at least 6 seeds"):
        Hypothesis(name="h", seeds=5)
    with pytest.raises(ValueError, match="control 'c' is not one of the arms"):
        Hypothesis(name="h", arms={"a": {}, "b": {}}, control="c")
    with pytest.raises(ValueError, match="letters, digits"):
        Hypothesis(name="a b")
    with pytest.raises(ValueError, match="unknown Hypothesis fields: \\['seed'\\]"):
        Hypothesis.from_dict({"name": "h", "seed": 3})
    h = Hypothesis(name="h", category="SPARSITY")
    assert h.category is HypothesisCategory.SPARSITY and h.id == "h"
    # the whole grid: 4 x 4 = 16 arms, none cut (the seed cut every grid to 10)
    g = Hypothesis(name="g", parameter_space={"x": [1, 2, 3, 4], "y": [5, 6, 7, 8]},
                   arms={"ctl": {}}, control="ctl", category="synthetic")
    assert len(g.grid_arms()) == 16
    lab = _lab(tmp_path)
    with pytest.raises(ValueError, match="has no default experiment"):
        lab.register_hypothesis(Hypothesis(name="x", category="architecture"))
    with pytest.raises(ValueError, match="unknown experiment 'nope'"):
        lab.register_hypothesis(Hypothesis(name="x", experiment="nope"))
    with pytest.raises(ValueError, match="control 'zz' is not one of the arms"):
        lab.register_hypothesis(Hypothesis(name="x", category="synthetic", control="zz"))
    lab.register_hypothesis(Hypothesis(name="x", category="synthetic"))
    with pytest.raises(ValueError, match="a different hypothesis named 'x'"):
        lab.register_hypothesis(Hypothesis(name="x", category="synthetic", seeds=9))
    with pytest.raises(ValueError, match="correction must be one of"):
        LabConfig(correction="bonferroni")


def _planted(tmp_path):
    lab = _lab(tmp_path)
    lab.register_hypothesis(Hypothesis(name="aa", category="synthetic", seeds=8))
    lab.register_hypothesis(Hypothesis(
        name="planted", category="synthetic", seeds=8, arms={"a": {}, "b": {"effect": 0.05}},
        control="a", min_effect=0.01))
    lab.register_hypothesis(Hypothesis(
        name="grid", category="synthetic", seeds=8, arms={"ctl": {}}, control="ctl",
        parameter_space={"effect": [-0.001, 0.02, 0.04]}, min_effect=0.02))
    lab.run()
    return lab


def test_trials_statistics_verdicts_and_correction(tmp_path):
    lab = _planted(tmp_path)
    # every experiment is one finished Optuna trial carrying its config and metrics
    storage = open_storage(lab.storage)
    studies = optuna.get_all_study_summaries(storage)
    assert sorted(s.study_name.rsplit("-", 1)[0] for s in studies) == ["aa", "grid", "planted"]
    plan = lab._plans["planted"]
    trials = optuna.load_study(study_name=plan.study, storage=storage).trials
    assert len(trials) == 16 and all(t.state.name == "COMPLETE" for t in trials)
    t = trials[0]
    assert t.user_attrs["lab_config"]["params"] == plan.arms[t.user_attrs["lab_arm"]]
    assert t.value == t.user_attrs["lab_metrics"]["value"]
    # the statistics are scipy's / statsmodels' on the per-seed values
    r = lab.results["planted"]
    a, b = r["values"]["a"], r["values"]["b"]
    d = np.array([b[s] - a[s] for s in range(8)])
    c = r["comparisons"][0]
    assert c["p"] == pytest.approx(st.wilcoxon(d, method="exact").pvalue) == 2 / 256
    assert c["effect"] == pytest.approx(d.mean()) and c["lo"] < 0.05 < c["hi"]
    flat = [c for hid in ("aa", "planted", "grid") for c in lab.results[hid]["comparisons"]]
    assert [c["p_adj"] for c in flat] == pytest.approx(
        list(multipletests([c["p"] for c in flat], method="holm")[1]))
    verdicts = {(hid, c["arm"]): c["verdict"] for hid in lab.results
                for c in lab.results[hid]["comparisons"]}
    assert verdicts == {("aa", "b"): "inconclusive", ("planted", "b"): "better",
                        ("grid", "effect=-0.001"): "negligible",
                        ("grid", "effect=0.02"): "better", ("grid", "effect=0.04"): "better"}
    # rerunning trains nothing and gives the same result
    again = NeuralArchitectureLab(lab.config)
    for h in lab.hypotheses.values():
        again.register_hypothesis(h)
    again.run()
    assert len(optuna.load_study(study_name=plan.study, storage=storage).trials) == 16
    assert again.results == lab.results


def test_insights_follow_ups_and_report(tmp_path):
    lab = _planted(tmp_path)
    insights = lab.extract_insights()
    assert [(i["hypothesis"], i["arm"]) for i in insights] == [
        ("planted", "b"), ("grid", "effect=0.04"), ("grid", "effect=0.02")]
    assert all(abs(x["g"]) >= abs(y["g"]) for x, y in zip(insights, insights[1:]))
    assert lab.follow_ups == ["planted.replication", "grid.finer"]
    fin = lab.hypotheses["grid.finer"]
    # the rule: best significant arm 0.04 at the grid's edge -> 5 points from 0.02 to 0.06
    assert fin.parameter_space == {"effect": [0.02, 0.03, 0.04, 0.05, 0.06]}
    assert fin.first_seed == 8 and fin.control == "control" and fin.follow_up_of == "grid"
    rep = lab.hypotheses["planted.replication"]
    assert (rep.arms, rep.first_seed, rep.seeds) == ({"a": {}, "b": {"effect": 0.05}}, 8, 8)
    res = lab.run_hypothesis_test("planted.replication")  # registered and runnable
    assert res["comparisons"][0]["verdict"] == "better"
    assert sorted(res["values"]["a"]) == list(range(8, 16))
    text = lab.generate_report()
    assert text == (tmp_path / "lab" / "report.md").read_text()
    for hid in ("aa", "planted", "grid", "planted.replication"):
        png = tmp_path / "lab" / hid / "effects.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({hid}/effects.png)" in text
    assert "| b | 8 |" in text and "**inconclusive**" in text and "**better**" in text
    cmd = f"morpho lab run {tmp_path / 'lab' / 'aa' / 'hypothesis.yaml'}"
    assert f"Reproduce: `{cmd}`" in text
    # the written hypothesis file reproduces the design (same study: nothing to train)
    cfg, (h,) = read_lab_file(str(tmp_path / "lab" / "aa" / "hypothesis.yaml"))
    assert h == lab.hypotheses["aa"].replace(experiment="synthetic")
    assert "1. `planted`: b − a = +0.0" in text and "grid.finer" in text


_BROKEN = {"on": True}


def _broken(params, seed, ctx):
    if _BROKEN["on"] and seed == 3 and ctx.arm == "b":
        raise RuntimeError("out of memory (planted)")
    return {"value": float(seed) + (1.0 + 0.1 * seed if ctx.arm == "b" else 0.0)}


def test_a_failing_experiment_is_named_and_retried_on_the_next_run(tmp_path):
    """The same design (same experiment function, same study) run again after a failure:
    the finished trials are kept with their numbers, only the failed (arm, seed) runs again,
    and the statistics see all six pairs (b − a = 1.0 … 1.5: better)."""
    _BROKEN["on"] = True
    register_experiment(Experiment("broken_for_test", _broken, metric="value"), replace=True)
    try:
        lab = _lab(tmp_path)
        lab.register_hypothesis(Hypothesis(name="f", experiment="broken_for_test", seeds=6,
                                           arms={"a": {}, "b": {}}, control="a"))
        with pytest.raises(RuntimeError, match="f arm 'b' seed 3: RuntimeError: out of memory"):
            lab.run()
        storage = open_storage(lab.storage)
        study = lab._plans["f"].study
        before = {t.number: (t.user_attrs["lab_arm"], t.user_attrs["lab_seed"])
                  for t in optuna.load_study(study_name=study, storage=storage).trials
                  if t.state.name == "COMPLETE"}
        assert len(before) == 11 and ("b", 3) not in before.values()
        _BROKEN["on"] = False
        lab2 = _lab(tmp_path)
        lab2.register_hypothesis(lab.hypotheses["f"])
        r = lab2.run()["f"]
        assert lab2._plans["f"].study == study  # the same study, not a fresh one
        after = {t.number: (t.user_attrs["lab_arm"], t.user_attrs["lab_seed"])
                 for t in optuna.load_study(study_name=study, storage=storage).trials
                 if t.state.name == "COMPLETE"}
        assert {k: after[k] for k in before} == before
        assert sorted(v for k, v in after.items() if k not in before) == [("b", 3)]
        c = r["comparisons"][0]
        assert c["n"] == 6 and c["p"] == pytest.approx(2 / 64) and c["verdict"] == "better"
    finally:
        EXPERIMENTS.pop("broken_for_test")


def test_the_alpha_guard_covers_the_hypotheses_already_in_the_family(tmp_path):
    """h1 (6 seeds: p ≥ 1/32) passes alone; run h2 next and the family has 2 comparisons, so
    h1 could no longer reach alpha / 2 and its verdict would be rewritten: refused."""
    lab = _lab(tmp_path)
    lab.register_hypothesis(Hypothesis(name="h1", category="synthetic", seeds=6,
                                       arms={"a": {}, "b": {"effect": 0.05}}, control="a"))
    lab.run()
    lab.register_hypothesis(Hypothesis(name="h2", category="synthetic", seeds=20,
                                       arms={"a": {}, "b": {"effect": 0.05}}, control="a"))
    with pytest.raises(ValueError, match="hypothesis 'h1': with 2 comparisons"):
        lab.run(["h2"])


def test_holm_bound_per_comparison_and_the_finer_grid_at_an_edge():
    """A comparison with fewer non-zero pairs is judged against the bound of its own design
    under Holm (not min_p · m), and a finer grid at the lower edge never crosses 0."""
    from morphonet.lab.analysis import _finer, apply_correction

    strong = {"arm": "x", "p": 1.9e-6, "min_p": 2 / 2 ** 20, "lo": 0.1, "hi": 0.3,
              "effect": 0.2, "n": 20, "g": 2.0, "level": 0.95}
    small = {"arm": "y", "p": 0.03125, "min_p": 0.03125, "lo": 0.175, "hi": 0.4,
             "effect": 0.3, "n": 6, "g": 1.5, "level": 0.95}
    results = [{"hypothesis": "h", "control": "c", "metric": "m", "direction": "maximize",
                "alpha": 0.05, "min_effect": 0.0, "comparisons": [strong, small]}]
    apply_correction(results, "holm")
    assert small["p_adj"] == pytest.approx(0.03125) and small["verdict"] == "better"
    assert strong["verdict"] == "better"
    assert min(_finer([0.001, 0.01], 0.001)) > 0 and max(_finer([0.001, 0.01], 0.001)) == 0.01
    assert _finer([0.02, 0.04], 0.04) == [0.02, 0.03, 0.04, 0.05, 0.06]


def test_the_seed_readme_example_runs_as_written(tmp_path, monkeypatch):
    """The README's lab example, verbatim but for the ``src.`` prefix (its repository
    layout), with 4 worker processes and device "cuda" (on a CPU machine: the growth
    experiment says it runs on the CPU). Budget: the real Structure Net and RigL runs at one
    epoch of a 32-16 network (the default is 15 epochs of 160-80), so that the test stays
    short."""
    monkeypatch.chdir(tmp_path)
    growth = EXPERIMENTS["growth"]
    monkeypatch.setitem(EXPERIMENTS, "growth", dataclasses.replace(
        growth, params={**growth.params, "epochs": 1, "hidden": [32, 16]}))
    with pytest.warns(UserWarning, match="runs on cpu only"):
        runpy.run_path(str(ROOT / "examples" / "lab" / "seed_example.py"), run_name="__main__")
    text = (tmp_path / "nal_results" / "report.md").read_text()
    assert "## extrema_growth_efficiency" in text and "| structure | 8 |" in text


def test_morpho_lab_run_and_the_shipped_hypothesis_files(tmp_path, capsys):
    from morphonet.cli import build_parser
    from morphonet.lab.cli import main

    args = build_parser().parse_args(["lab", "run", "x.toml", "--workers", "2"])
    assert (args.command, args.lab_command, args.workers) == ("lab", "run", 2)
    # every shipped file reads, resolves and passes the alpha / m guard of its whole run
    for f in sorted((ROOT / "examples" / "lab").glob("*.[ty]*ml")):
        cfg, hs = read_lab_file(str(f))
        lab = NeuralArchitectureLab(cfg.replace(results_dir=str(tmp_path / f.stem)))
        for h in hs:
            lab.register_hypothesis(h, source=str(f))
        lab._check_family([h.id for h in hs])
    out = tmp_path / "self"
    assert main(["lab", "run", str(ROOT / "examples" / "lab" / "self_check.yaml"),
                 "--results-dir", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "identical_arms: b − a" in printed and "inconclusive" in printed
    lo, hi = map(float, re.search(r"planted_effect: b − a = \S+ \[(\S+), (\S+)\]",
                                  printed).groups())
    assert lo < 0.02 < hi and "g = 1.92: better" in printed
    assert main(["lab", "run", str(tmp_path / "missing.toml")]) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text('[[hypothesis]]\nname = "h"\nseeds = 5\n')
    assert main(["lab", "run", str(bad)]) == 2
    assert "cannot reach alpha=0.05" in capsys.readouterr().err
