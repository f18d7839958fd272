"""AutoplasticTrainer and its hooks on the one training loop: the seed's config, the two
timescales, the schedule, MixUp's loss, the penalty closing gates, the seed's rules, the
per-epoch log, an exact resume; the experiment's statistics and the CLI's parser."""

import argparse
import math

import pytest
import torch

from morphonet.autoplastic import (
    AutoplasticLoss,
    AutoplasticNet,
    AutoplasticTrainer,
    CosineWarmup,
    NetConfig,
    TrainConfig,
    export_static,
)
from morphonet.autoplastic.cli import add_autoplastic_parser
from morphonet.autoplastic.experiment import AutoplasticExperimentConfig, choose, paired
from morphonet.autoplastic.hooks import MixedTarget, format_epoch

NET = NetConfig(dims=1, in_channels=1, num_classes=3, stem_width=4, widths=(4, 4, 8),
                strides=(1, 1, 2))


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 12, generator=g)
    y = (x[:, 0, :4].sum(1) > 0).long() + (x[:, 0, 4:8].sum(1) > 1).long()
    return x[:64], y[:64], x[64:], y[64:]


def _train(epochs=2, **kw):
    cfg = TrainConfig(epochs=epochs, warmup_epochs=1, batch_size=16, device="cpu", seed=0, **kw)
    torch.manual_seed(0)
    model = AutoplasticNet.from_config(NET, cfg)
    trainer = AutoplasticTrainer(model, cfg, log=None)
    return model, trainer, trainer.train(*_data())


def test_train_config_keeps_the_seeds_fields_and_defaults():
    c = TrainConfig()
    seed = dict(epochs=40, batch_size=128, base_lr=0.1, weight_decay=5e-4, epsilon=0.85,
                arch_lr_ratio=1 / 20, p_init=0.9, c_init=0.9, p_min=0.5, c_min=0.4, c_max=0.995,
                label_smoothing=0.1, use_mixup=True, amp=True, warmup_epochs=3)
    assert {k: getattr(c, k) for k in seed} == seed
    assert TrainConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="warmup_epochs"):
        TrainConfig(epochs=3, warmup_epochs=3)
    with pytest.raises(ValueError, match="gates"):
        TrainConfig(gates="magic")
    assert TrainConfig(gates="rules").floors() == (0.5, 0.4, 0.995)
    assert TrainConfig().floors() is None


def test_training_records_the_seeds_log_and_two_timescales():
    model, trainer, res = _train(epochs=2, sparsity=1.0)
    w, a = trainer.optimizers()
    assert w.param_groups[0]["initial_lr"] == 0.1
    assert a.param_groups[0]["initial_lr"] == pytest.approx(0.1 / 20)
    assert {id(p) for p in a.param_groups[0]["params"]} == {id(p) for p in
                                                              model.arch_parameters()}
    r = res["history"][-1]
    for k in ("loss", "val_loss", "val_acc", "L_eff", "active_ratio", "P", "alpha", "meanC",
              "pruned_pct", "S", "alpha_trained", "depth", "expected_flops", "lr"):
        assert k in r, k
    assert r["train_acc"] is None  # MixUp's mixed targets are not counted
    assert len(r["P"]) == 3 and 0 < r["L_eff"] < 3
    assert res["best_epoch"] == 1  # select_from 0.5: the second of two epochs
    text = format_epoch(r, 2)
    assert text.startswith("Epoch 002/002") and "Effective depth (L_eff)" in text


def test_the_penalty_closes_gates_and_the_export_follows():
    # a fast architecture timescale (Adam at 0.6) so that 16 steps are enough
    kw = dict(epochs=4, use_mixup=False, arch_lr_ratio=6.0)
    open_model, _, _ = _train(sparsity=0.0, **kw)
    model, _, res = _train(sparsity=20.0, channel_sparsity=20.0, **kw)
    shape = (1, 12)
    with torch.no_grad():
        e_open = float(open_model.expected_macs(shape)) / open_model.macs(shape)
        e = float(model.expected_macs(shape)) / model.macs(shape)
    assert e < e_open - 0.05
    # the model holds the best epoch (validation), whose record says the same
    assert res["history"][res["best_epoch"]]["expected_flops"] == pytest.approx(e, abs=1e-6)
    assert model.structure()["active_ratio"] < 1.0  # some gate reached exactly 0


def test_frozen_gates_stay_and_are_deterministic():
    model, _, res = _train(epochs=4, sparsity=5.0, freeze_gates=0.5, arch_lr_ratio=2.0)
    h = res["history"]
    assert [r["gates_frozen"] for r in h] == [False, False, True, True]
    assert h[2]["P"] == h[3]["P"] and h[2]["meanC"] == h[3]["meanC"]
    assert h[0]["P"] != h[1]["P"]  # they moved before
    assert res["best_epoch"] >= 2
    assert not any(b.p_gate.frozen for b in model.blocks)  # released after training


def test_rule_gates_move_by_the_seeds_step_within_the_floors():
    model, _, res = _train(epochs=2, gates="rules")
    eta = 0.1 / 20
    for b, s0, s1 in zip(model.blocks, res["history"][0]["P"], res["history"][1]["P"]):
        assert abs(s1 - s0) == pytest.approx(eta * max(0.05, 1 - s1), abs=0.006)
        assert 0.5 <= float(b.P) <= 1.0
        assert torch.all((b.C >= 0.4) & (b.C <= 0.995))
    assert model.structure()["depth"] == 3  # the floors remove nothing


def test_cosine_warmup_and_the_mixup_loss():
    h = CosineWarmup(total_steps=10, warmup_steps=2)
    f = [h.factor(t) for t in range(10)]
    assert f[:3] == [0.5, 1.0, 1.0]
    assert f[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert all(a >= b for a, b in zip(f[1:], f[2:]))
    out, ya, yb = torch.randn(5, 3), torch.randint(0, 3, (5,)), torch.randint(0, 3, (5,))
    loss = AutoplasticLoss(0.0)
    torch.testing.assert_close(loss(out, MixedTarget(ya, yb, 0.3)),
                               0.3 * loss(out, ya) + 0.7 * loss(out, yb))
    smooth = AutoplasticLoss(0.1)
    assert float(smooth(out, ya)) != pytest.approx(float(loss(out, ya)))
    with torch.no_grad():  # evaluation: the plain cross-entropy
        assert float(smooth(out, ya)) == pytest.approx(float(loss(out, ya)))


def test_a_killed_run_resumes_exactly(tmp_path):
    ck = tmp_path / "ck.pt"
    _, _, whole = _train(epochs=3)
    cfg = TrainConfig(epochs=3, warmup_epochs=1, batch_size=16, device="cpu", seed=0)

    def stop(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    torch.manual_seed(0)
    m = AutoplasticNet.from_config(NET, cfg)
    with pytest.raises(KeyboardInterrupt):
        AutoplasticTrainer(m, cfg, log=None).train(*_data(), callback=stop, checkpoint=ck)
    torch.manual_seed(0)
    m = AutoplasticNet.from_config(NET, cfg)
    res = AutoplasticTrainer(m, cfg, log=None).train(*_data(), checkpoint=ck, resume=True)
    assert [r["loss"] for r in res["history"]] == [r["loss"] for r in whole["history"]]
    assert res["history"][-1]["S"] == whole["history"][-1]["S"]


def test_paired_interval_and_the_tuning_rule():
    runs = [{"dataset": "d", "method": m, "seed": s, "test_acc": acc}
            for s, (a, b) in enumerate([(0.90, 0.88), (0.92, 0.91), (0.89, 0.89)])
            for m, acc in (("learned", a), ("full", b))]
    p = paired(runs, "learned", "full", "d")
    assert p["n"] == 3 and p["mean"] == pytest.approx(0.01) and p["a_at_least_b"] == 3
    half = 4.302652729911275 * 0.01 / math.sqrt(3)  # t(0.975, 2) · sd / √n
    assert p["lo"] == pytest.approx(0.01 - half) and p["hi"] == pytest.approx(0.01 + half)
    rows = [{"dataset": "d", "penalty": pen, "val_acc": acc, "flops_ratio": fl}
            for pen, acc, fl in ((None, 0.95, 1.0), ([1.0, 0.5], 0.948, 0.95),
                                 ([1.0, 1.0], 0.90, 0.5), ([1.5, 0.5], 0.947, 0.7),
                                 ([1.5, 1.0], 0.94, 0.6))]
    assert choose(rows, "d") == [1.5, 0.5]  # the most accurate with FLOPs ratio <= 0.9
    for r in rows:
        r["flops_ratio"] = 1.0
    assert choose(rows, "d") == [1.0, 0.5]  # nothing removes anything: the most accurate


def test_experiment_config_checks_its_fields():
    c = AutoplasticExperimentConfig()
    assert c.seeds == 6 and c.datasets == ("mnist1d", "digits") and c.penalties["mnist1d"]
    assert AutoplasticExperimentConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="datasets must be a non-empty list"):
        AutoplasticExperimentConfig(datasets=["cifar"])
    with pytest.raises(ValueError, match="learned"):
        AutoplasticExperimentConfig(methods=["full", "static"])
    with pytest.raises(ValueError, match="penalties"):
        AutoplasticExperimentConfig(penalties={"digits": [1.0, 0.5]})


def test_cli_registers_on_a_parser():
    parser = argparse.ArgumentParser()
    add_autoplastic_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["autoplastic", "--seeds", "2", "--penalty", "1", "0.5"])
    assert args.seeds == 2 and args.penalty == [1.0, 0.5] and callable(args.func)
    with pytest.raises(TypeError, match="subparsers"):
        add_autoplastic_parser(parser)


def test_the_experiment_runs_from_the_cli_and_continues_after_a_kill(tmp_path, capsys):
    """One seed of every method on digits for one epoch through ``morpho autoplastic``; the
    second call finds the unit in runs.partial.jsonl and keeps it (same records, no training),
    a call with other settings trains again."""
    from morphonet.cli import main as morpho
    from morphonet.files import read_json, read_records

    argv = ["autoplastic", "--quick", "--datasets", "digits", "--seeds", "1", "--epochs", "1",
            "--out", str(tmp_path), "--no-progress"]
    assert morpho(argv + ["--latency"]) == 2  # nothing recorded yet: said, not a traceback
    assert "no results.json" in capsys.readouterr().err
    assert morpho(argv) == 0
    first = read_json(tmp_path / "results.json")
    assert [r["method"] for r in first["runs"]] == ["full", "learned", "rules", "static"]
    learned = first["runs"][1]
    assert learned["export_rel_diff"] < 1e-4 and learned["test_acc"] == learned["gated_test_acc"]
    assert first["runs"][3]["macs"] == learned["macs"]  # static: the export's architecture
    assert (tmp_path / "table.md").read_text().startswith("# morpho autoplastic")
    assert len(read_records(tmp_path / "runs.partial.jsonl")) == 1
    capsys.readouterr()
    assert morpho(argv) == 0
    assert "done earlier" in capsys.readouterr().out
    assert read_json(tmp_path / "results.json")["runs"] == first["runs"]
    assert morpho(argv[:-1] + ["--penalty", "1", "1", "--no-progress"]) == 0
    assert len(read_records(tmp_path / "runs.partial.jsonl")) == 2
    # --latency: the export rebuilt from its record (MACs checked) and timed again in turn
    # with the full network; the table says so; a second call times nothing more
    assert morpho(argv + ["--latency"]) == 0
    (again,) = read_records(tmp_path / "latency.jsonl")
    assert again["full_median_ms"] > 0 and again["learned_median_ms"] > 0
    assert "re-timed after the run for 1 of 1 seeds" in (tmp_path / "table.md").read_text()
    assert morpho(argv + ["--latency"]) == 0
    assert len(read_records(tmp_path / "latency.jsonl")) == 1


def test_the_model_checks_its_inputs_before_training():
    cfg = TrainConfig(epochs=1, batch_size=16, warmup_epochs=0, device="cpu")
    m = AutoplasticNet.from_config(NET, cfg)
    x, y, xv, yv = _data()
    with pytest.raises(ValueError, match=r"X_train must have \(batch, 1, length\)"):
        AutoplasticTrainer(m, cfg, log=None).train(x.unsqueeze(1), y)
    with pytest.raises(ValueError, match=r"y_val has labels in \[1, 3\] but the model has 3"):
        AutoplasticTrainer(m, cfg, log=None).train(x, y, xv, yv + 1)
    static = export_static(m)
    assert static.n_outputs() == m.n_outputs() and static.expected_input() == m.expected_input()
