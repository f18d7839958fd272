"""``morpho compare``: runs, tables, selection on validation only, equal budgets."""

import subprocess
import sys

import pytest
import torch

# ---------------------------------------------------------------------------- the main job


def test_compare_runs_and_writes_tables(tmp_path):
    out = subprocess.run([sys.executable, "-m", "morphonet.cli", "compare", "--datasets", "moons",
                          "--seeds", "2", "--epochs", "6", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    from morphonet.masks.compare import grid

    data = json.loads((tmp_path / "compare.json").read_text())
    methods = {r["method"] for r in data["summary"]}
    assert methods == {"dense", "morphonet", "magnitude"}
    n_variants = sum(len(grid(m, 6)) for m in methods)
    assert len(data["runs"]) == 2 * n_variants and len(data["variants"]) == n_variants
    chosen = [r for r in data["runs"] if r["chosen"]]
    assert len(chosen) == 6
    for m in methods:  # one variant per method, the one with the best mean validation accuracy
        variants = {v["variant"]: v["val_acc"] for v in data["variants"] if v["method"] == m}
        picked = {r["variant"] for r in chosen if r["method"] == m}
        assert len(picked) == 1 and variants[picked.pop()] == max(variants.values())
    morpho = [r for r in data["runs"] if r["method"] == "morphonet"]
    mag = [r for r in data["runs"] if r["method"] == "magnitude"]
    # every magnitude variant of a seed is given exactly the chosen MorphoNet run's weights
    picked = {r["seed"]: r["weights"] for r in chosen if r["method"] == "morphonet"}
    assert sorted(picked) == [0, 1] and all(r["weights"] == picked[r["seed"]] for r in mag)
    assert all(0.2 <= r["weights"] / r["dense_weights"] <= 0.3 for r in morpho)
    text = (tmp_path / "compare.md").read_text()
    assert "| moons | mlp | morphonet |" in text and "Hyperparameter variants" in text
    assert not (tmp_path / "runs.partial.jsonl").exists()  # kept only if interrupted
    # paired by seed: the chosen MorphoNet run minus the chosen dense run of the same seed
    dense = {r["seed"]: r["test_acc"] for r in chosen if r["method"] == "dense"}
    diffs = [r["test_acc"] - dense[r["seed"]] for r in chosen if r["method"] == "morphonet"]
    pm = [p for p in data["paired"] if p["method"] == "morphonet"]
    assert len(pm) == 1 and pm[0]["diff"] == pytest.approx(sum(diffs) / 2)
    assert pm[0]["at_least_dense"] == sum(d >= 0 for d in diffs)
    assert "Paired by seed" in text
    # --render rewrites the same files from the recorded runs, training nothing
    (tmp_path / "compare.md").write_text("stale")
    again = subprocess.run([sys.executable, "-m", "morphonet.cli", "compare", "--render",
                            "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "compare.md").read_text() == text
    missing = subprocess.run([sys.executable, "-m", "morphonet.cli", "compare", "--render",
                              "--out", str(tmp_path / "none")], capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 2 and "no " in missing.stderr
    mixed = subprocess.run([sys.executable, "-m", "morphonet.cli", "compare", "--render",
                            "--seeds", "0", "--out", str(tmp_path)], capture_output=True,
                           text=True, timeout=60)
    assert mixed.returncode == 2 and "--seeds" in mixed.stderr
    assert (tmp_path / "compare.md").read_text() == text  # nothing rewritten


def test_select_chooses_on_validation_never_test():
    from morphonet.masks.compare import RunResult, select, summarise

    def run(variant, seed, val, test):
        return RunResult("moons", "mlp", "dense", seed, test, val, 10, 12, 10, 1.0, variant)

    # variant "b" has the better mean validation accuracy, "a" the better test accuracy
    runs = [run("a", 0, 0.80, 0.99), run("a", 1, 0.90, 0.99),
            run("b", 0, 0.88, 0.50), run("b", 1, 0.86, 0.50)]
    chosen, table = select(runs)
    assert [r.variant for r in chosen] == ["b", "b"]
    assert {t["variant"]: t["chosen"] for t in table} == {"a": False, "b": True}
    assert summarise(chosen)[0]["test_acc"] == 0.50
    # a tie keeps the grid's earlier variant
    tie = [run("a", 0, 0.8, 0.1), run("b", 0, 0.8, 0.9)]
    assert [r.variant for r in select(tie)[0]] == ["a"]
    with pytest.raises(ValueError, match="several variants"):
        summarise(runs)


def test_compare_hands_every_run_to_on_result_as_it_ends():
    from morphonet.masks.compare import Case, compare

    seen = []
    case = Case("moons", "mlp", [16, 8], 0.75, 3)
    runs = compare([case], [0], tune=False, on_result=seen.append)
    assert seen == runs and [r.method for r in runs] == ["dense", "morphonet", "magnitude"]


def test_compare_grid_and_prune_point_reject_bad_input():
    from morphonet.data import load_dataset
    from morphonet.masks.compare import GRID_SIZE, Case, grid, run_magnitude

    assert all(len(grid(m, 100)) == GRID_SIZE for m in ("dense", "morphonet", "magnitude"))
    with pytest.raises(ValueError, match="unknown method 'rigl'"):
        grid("rigl", 100)
    data = load_dataset("moons", seed=0)
    with pytest.raises(ValueError, match="prune_at must be in"):
        run_magnitude(Case("moons", "mlp", [8], 0.75, 3), data, 0, 0.25, {"prune_at": 1.5})


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_compare_dense_peer_mirrors_morphonet_layers(arch):
    """The dense peer (and magnitude pruning's model) has MorphoNet's weights and norm
    parameters, with batchnorm, dropout and pooling as configured, in the same order: copying
    MorphoNet's weights and (randomised, so a norm does not commute with the activation) norm
    statistics into it gives the same logits in eval mode, and in train mode (batch statistics,
    dropout) under one seed."""
    from morphonet.data import load_dataset
    from morphonet.masks.compare import Case, _count_dense, dense_model, morpho_model

    data = load_dataset("mnist1d" if arch == "cnn" else "moons", seed=0)
    extra = {"conv_channels": [4, 6], "kernel_size": 3, "pool": True} if arch == "cnn" else {}
    case = Case(data.name, arch, [16, 8], 0.5, 2, extra)
    over = {"use_batchnorm": True, "dropout": 0.25, "sparse_init": 1.0, "mask_init": 30.0}
    dense = dense_model(case, data, 0, over)
    morpho = morpho_model(case, data, 0, over)
    assert _count_dense(dense)[1] == morpho.count_params()[0]
    kinds = [type(m).__name__ for m in dense]
    assert "Dropout" in kinds and any(k.startswith("BatchNorm") for k in kinds)
    if arch == "cnn":
        assert "MaxPool1d" in kinds
    weighted = [m for m in dense if hasattr(m, "weight") and m.weight.dim() > 1]
    norms = [m for m in dense if type(m).__name__.startswith("BatchNorm")]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for d, m in zip(weighted, morpho.layers, strict=True):
            d.weight.copy_(m.weight)
            d.bias.copy_(m.bias)
        m_norms = [mod for mod in morpho.modules() if type(mod).__name__.startswith("BatchNorm")]
        for d, m in zip(norms, m_norms, strict=True):
            c = m.num_features  # negative scales and shifts: order against ReLU / pool matters
            m.weight.copy_(torch.randn(c, generator=g))
            m.bias.copy_(torch.randn(c, generator=g))
            m.running_mean.copy_(torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            d.load_state_dict(m.state_dict())
        for layer in morpho.layers:  # temperature low: σ(30/T) is 1 to the last bit
            layer.set_temperature(0.5)
    x = data.val.x[:32]
    dense.eval()
    morpho.eval()
    torch.testing.assert_close(dense(x), morpho(x), atol=1e-5, rtol=1e-5)
    dense.train()
    morpho.train()
    torch.manual_seed(7)
    y_dense = dense(x)
    torch.manual_seed(7)
    torch.testing.assert_close(y_dense, morpho(x), atol=1e-5, rtol=1e-5)


def test_the_quick_run_trains_the_variants_validation_chose_in_the_full_run():
    """`CHOSEN` (what `make demo` trains) is exactly what the recorded full run chose on
    validation: the variant with the best mean validation accuracy, test never looked at."""
    import json
    from pathlib import Path

    from morphonet.masks.compare import CHOSEN, FULL_CASES, METHODS, Case, grid, variants

    record = Path(__file__).resolve().parents[3] / "results" / "compare" / "compare.json"
    data = json.loads(record.read_text())
    chosen = {(v["dataset"], v["arch"], v["method"]): v["variant"]
              for v in data["variants"] if v["chosen"]}
    assert set(chosen) == set(CHOSEN) == {(c.dataset, c.arch, m) for c in FULL_CASES
                                          for m in METHODS}
    for (ds, arch, method), i in CHOSEN.items():
        assert grid(method, 100)[i][0] == chosen[(ds, arch, method)], (ds, arch, method)
        # the recorded choice is the best mean validation accuracy of its group
        group = {v["variant"]: v["val_acc"] for v in data["variants"]
                 if (v["dataset"], v["arch"], v["method"]) == (ds, arch, method)}
        assert group[chosen[(ds, arch, method)]] == max(group.values())
    # at the quick run's 30 epochs the same grid position is trained, its window rescaled
    case = Case("digits", "mlp", [128, 64], 0.88, 30)
    (name, overrides), = variants(case, "morphonet", "chosen")
    assert name == "prune window 2-9, batchnorm" and overrides["use_batchnorm"]
    assert variants(case, "dense", "default") == [grid("dense", 30)[0]]
    assert len(variants(case, "magnitude", "tune")) == 5


def test_compare_records_are_read_back_checked(tmp_path):
    """A damaged compare.json names itself; an interrupted run's partial records render, the
    line its kill cut short left out, and a damaged line names the file and the line."""
    import dataclasses

    from morphonet.files import CorruptFileError, append_record
    from morphonet.masks import compare as cmp
    from morphonet.masks.cli import _render

    runs = [cmp.RunResult("moons", "mlp", m, s, 0.9 + s / 100, 0.9, 100, 120, 400, 1.0)
            for m in cmp.METHODS for s in (0, 1)]
    partial = tmp_path / "runs.partial.jsonl"
    for r in runs:
        append_record(partial, dataclasses.asdict(r))
    with open(partial, "a") as f:
        f.write('{"dataset": "moons", "arch": "ml')  # the kill came mid-write
    with pytest.warns(UserWarning, match=r"runs\.partial\.jsonl: line 7 was cut short"):
        assert _render(cmp, tmp_path) == 0
    assert cmp.load_runs(tmp_path / "compare.json")[0] == runs
    lines = partial.read_text().split("\n")
    lines[2] = lines[2].replace("0.9", "0.8", 1)
    partial.write_text("\n".join(lines))
    with pytest.raises(CorruptFileError, match=r"runs\.partial\.jsonl: line 3 is damaged"):
        cmp.load_partial(partial)
    (tmp_path / "compare.json").write_text('{"runs": [{"dataset": "moons"}], "meta": {}}')
    with pytest.raises(CorruptFileError, match=r"compare\.json: run 0 is not a run record"):
        cmp.load_runs(tmp_path / "compare.json")
    (tmp_path / "compare.json").write_text('{"runs": [')
    with pytest.raises(CorruptFileError, match=r"compare\.json: not valid JSON"):
        cmp.load_runs(tmp_path / "compare.json")
