"""morphonet.loop.TrainLoop: the hook order, penalties, clipping per optimizer, batching,
best-on-validation selection, and a checkpoint that resumes a killed run exactly."""

import pytest
import torch
from torch import nn

from morphonet.files import CorruptFileError
from morphonet.loop import (
    IGNORE_INDEX,
    Callback,
    Hook,
    TrainLoop,
    batch_ranges,
    classification_loss,
    count_correct,
    evaluate,
)
from morphonet.masks import MorphoConfig, MorphoNetMLP, MorphoTrainer


def _data(n=40, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, (x[:, 0] > 0).long()


class Recorder(Hook):
    def __init__(self):
        self.calls = []

    def on_fit_start(self, loop):
        self.calls.append("fit_start")

    def on_epoch_start(self, loop, epoch):
        self.calls.append(f"epoch_start {epoch}")

    def on_batch_start(self, loop, x, y):
        self.calls.append(f"batch {x.shape[0]}")

    def on_step_end(self, loop):
        self.calls.append(f"step_end {loop.global_step}")

    def on_train_end(self, loop, record):
        self.calls.append(f"train_end {sorted(record)}")

    def on_epoch_end(self, loop, record):
        self.calls.append(f"epoch_end {sorted(record)}")

    def on_fit_end(self, loop, result):
        self.calls.append(f"fit_end {result['epochs']}")


def test_hooks_are_called_in_the_documented_order():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    rec = Recorder()
    loop = TrainLoop(model, torch.optim.SGD(model.parameters(), lr=0.1), hooks=[rec],
                     batch_size=16, generator=torch.Generator().manual_seed(0))
    x, y = _data(40)
    loop.fit((x, y), (x[:8], y[:8]), epochs=2)
    train_keys = ["epoch", "loss", "seconds"]
    end_keys = sorted(train_keys + ["val_acc", "val_loss"])
    one_epoch = lambda e, s: [f"epoch_start {e}", "batch 16", f"step_end {s + 1}", "batch 16",  # noqa: E731
                              f"step_end {s + 2}", "batch 8", f"step_end {s + 3}",
                              f"train_end {train_keys}", f"epoch_end {end_keys}"]
    assert rec.calls == ["fit_start", *one_epoch(0, 0), *one_epoch(1, 3), "fit_end 2"]


def test_penalty_joins_the_loss_and_clipping_is_per_optimizer():
    torch.manual_seed(0)
    a, b = nn.Linear(3, 3), nn.Linear(3, 2)
    model = nn.Sequential(a, b)

    class Pen(Hook):
        def penalty(self, loop):
            return 100.0 * a.weight.square().sum()  # a huge gradient on a's weight only

    norms = []

    class Grads(Hook):
        def on_step_end(self, loop):
            norms.append([torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in g]))
                          for g in loop.clip_groups()])

    opts = [torch.optim.SGD(a.parameters(), lr=0.0), torch.optim.SGD(b.parameters(), lr=0.0)]
    x, y = _data(8, 3)
    TrainLoop(model, opts, hooks=[Pen(), Grads()], grad_clip=1.0, batch_size=8,
              select=None).fit((x, y), epochs=1)
    # each optimizer's parameters clipped to norm 1 on their own: b's small gradient is not
    # shrunk by a's huge one (a joint clip would have scaled it by ~1e-3)
    ref = model(x)
    loss = classification_loss(ref, y)
    gb = torch.autograd.grad(loss, list(b.parameters()))
    gb_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in gb]))
    assert float(norms[0][0]) == pytest.approx(1.0, rel=1e-5)
    assert float(norms[0][1]) == pytest.approx(min(1.0, float(gb_norm)), rel=1e-5)


def test_batching_merges_a_single_last_row_only_with_batchnorm_and_takes_loaders():
    assert batch_ranges(21, 10) == [(0, 10), (10, 20), (20, 21)]
    assert batch_ranges(21, 10, merge_single=True) == [(0, 10), (10, 21)]
    x, y = _data(21)
    for bn, steps in ((True, 2), (False, 3)):
        model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6) if bn else nn.Identity(),
                              nn.Linear(6, 2))
        loop = TrainLoop(model, torch.optim.SGD(model.parameters(), lr=0.1), batch_size=10)
        loop.run_epoch((x, y), 0)
        assert loop.global_step == steps
    model = nn.Linear(4, 2)
    loop = TrainLoop(model, torch.optim.SGD(model.parameters(), lr=0.0), track_train_acc=True)
    batches = [(x[:5], y[:5]), (x[5:], y[5:])]  # any iterable of (x, y), e.g. a DataLoader
    rec = loop.run_epoch(batches, 0)
    with torch.no_grad():
        loss = classification_loss(model(x), y)
    assert rec["loss"] == pytest.approx(float(loss), rel=1e-6)  # row-weighted mean
    assert rec["train_acc"] == pytest.approx(count_correct(model(x), y)[0] / 21)


def test_loss_and_accuracy_leave_out_ignored_targets():
    out = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [5.0, 0.0]]])  # (B=1, L=3, V=2)
    y = torch.tensor([[0, 0, IGNORE_INDEX]])
    assert count_correct(out, y) == (1, 2)
    ref = nn.functional.cross_entropy(out[0, :2], y[0, :2])
    assert float(classification_loss(out, y)) == pytest.approx(float(ref))


def test_best_epoch_is_chosen_on_validation_among_selectable_epochs_and_restored():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    x, y = _data(64)
    states = {}

    class OnlyFromEpoch2(Hook):
        def selectable(self, loop, record):
            return record["epoch"] >= 2

    def keep(record):
        states[record["epoch"]] = {k: v.clone() for k, v in model.state_dict().items()}

    loop = TrainLoop(model, torch.optim.SGD(model.parameters(), lr=0.5),
                     hooks=[OnlyFromEpoch2(), Callback(keep)], batch_size=16,
                     generator=torch.Generator().manual_seed(0))
    res = loop.fit((x, y), (x[:32], y[:32]), epochs=6)
    val = {r["epoch"]: r["val_acc"] for r in res["history"]}
    best = max((e for e in val if e >= 2), key=lambda e: (val[e], -e))
    assert res["best_epoch"] == best and res["best_value"] == val[best]
    for k, v in model.state_dict().items():
        assert torch.equal(v, states[best][k])
    assert evaluate(model, x[:32], y[:32])[1] == val[best]


def _trainer(tmp_path):
    torch.manual_seed(3)
    cfg = MorphoConfig(input_dim=6, n_classes=3, hidden_dims=[12, 8], epochs=6, batch_size=16,
                       warmup_epochs=1, target_sparsity=0.6, seed=0, device="cpu",
                       use_batchnorm=True, dropout=0.1)
    return MorphoTrainer(MorphoNetMLP(cfg), cfg)


def test_a_killed_run_resumes_exactly_from_its_checkpoint(tmp_path):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(90, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    xv, yv = x[:30], y[:30]
    whole = _trainer(tmp_path)
    ref = whole.train(x[30:], y[30:], xv, yv, verbose=False)

    class Killed(Exception):
        pass

    def kill(record):
        if record["epoch"] == 3:
            raise Killed  # the process dies during epoch 3, after epoch 2's checkpoint

    ck = tmp_path / "run.ckpt"
    first = _trainer(tmp_path)
    with pytest.raises(Killed):
        first.train(x[30:], y[30:], xv, yv, verbose=False, callback=kill, checkpoint=ck)
    assert ck.exists()
    again = _trainer(tmp_path)  # a new process: the model and trainer built afresh
    got = again.train(x[30:], y[30:], xv, yv, verbose=False, checkpoint=ck, resume=True)
    for key in ("loss_history", "sparsity_history", "val_acc_history", "temperature_history",
                "best_epoch", "best_val_acc", "final_sparsity", "layer_density"):
        assert got[key] == ref[key], key
    for k, v in whole.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[k], v), k
    # the checkpoint now holds the finished run: resuming again trains nothing more
    assert again.train(x[30:], y[30:], xv, yv, verbose=False, checkpoint=ck,
                       resume=True)["loss_history"] == ref["loss_history"]


def test_damaged_checkpoint_is_named_and_resume_needs_a_file(tmp_path):
    model = nn.Linear(4, 2)
    x, y = _data(16)
    ck = tmp_path / "c.ckpt"
    loop = TrainLoop(model, torch.optim.SGD(model.parameters(), lr=0.1), checkpoint=ck)
    loop.fit((x, y), epochs=1)
    raw = bytearray(ck.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    ck.write_bytes(bytes(raw))
    fresh = TrainLoop(model, torch.optim.SGD(model.parameters(), lr=0.1), checkpoint=ck)
    with pytest.raises(CorruptFileError, match=r"c\.ckpt: damaged"):
        fresh.fit((x, y), epochs=2, resume=True)
    with pytest.raises(ValueError, match="checkpoint="):
        TrainLoop(model, torch.optim.SGD(model.parameters(), lr=0.1)).fit((x, y), resume=True)


def test_bad_arguments_are_named():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="model must be"):
        TrainLoop("net", opt)
    with pytest.raises(TypeError, match=r"optimizers\[0\] must be an Optimizer"):
        TrainLoop(model, [object()])
    with pytest.raises(TypeError, match=r"hooks\[0\] must be a Hook"):
        TrainLoop(model, opt, hooks=[print])
    with pytest.raises(ValueError, match="batch_size"):
        TrainLoop(model, opt, batch_size=0)
    with pytest.raises(ValueError, match="grad_clip"):
        TrainLoop(model, opt, grad_clip=-1.0)
    with pytest.raises(ValueError, match="no batch"):
        TrainLoop(model, opt).run_epoch([], 0)


def test_the_loop_warns_when_an_optimizer_decays_mask_logits():
    from morpho_kernels.nn import MaskedLinear, param_groups

    model = nn.Sequential(MaskedLinear(4, 8), nn.ReLU(), MaskedLinear(8, 2))
    with pytest.warns(UserWarning, match=r"optimizers\[0\] applies weight_decay=0.01 to 2 "
                                         r"mask-logit tensor\(s\) \(0.mask_logits"):
        TrainLoop(model, torch.optim.AdamW(model.parameters(), lr=1e-3))  # the common recipe
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrainLoop(model, torch.optim.AdamW(param_groups(model, 0.01), lr=1e-3))
        TrainLoop(model, torch.optim.Adam(model.parameters(), lr=1e-3))  # no decay at all


def test_transform_batch_after_backward_and_autocast():
    """MixUp-style hooks replace the batch (targets the loss understands), after_backward
    sees the gradients before the step, and autocast runs the forward in bf16 on the CPU."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    frozen = model[0].bias.detach().clone()
    seen = {}

    class Mix(Hook):
        def transform_batch(self, loop, x, y):
            perm = torch.arange(x.shape[0] - 1, -1, -1)
            return 0.7 * x + 0.3 * x[perm], (y, y[perm], 0.7)

        def after_backward(self, loop):
            seen["grad"] = model[0].bias.grad is not None
            model[0].bias.grad = None  # frozen for this step

    def mixed_loss(out, y):
        seen["dtype"] = out.dtype
        ya, yb, lam = y
        return lam * classification_loss(out, ya) + (1 - lam) * classification_loss(out, yb)

    x, y = _data(16)
    loop = TrainLoop(model, torch.optim.SGD(model.parameters(), lr=0.5), loss_fn=mixed_loss,
                     hooks=[Mix()], batch_size=8, select=None, track_train_acc=True,
                     autocast=torch.bfloat16)
    rec = loop.run_epoch((x, y), 0)
    assert seen == {"grad": True, "dtype": torch.bfloat16}
    assert torch.equal(model[0].bias.detach(), frozen)  # cleared gradient: not stepped
    assert rec["train_acc"] is None  # mixed targets: no accuracy to count
    with pytest.raises(ValueError, match="autocast"):
        TrainLoop(model, torch.optim.SGD(model.parameters(), lr=0.5), autocast=torch.float64)


def test_torch_threads_sets_and_gives_back_even_on_error():
    from morphonet.loop import torch_threads

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"):
        with torch_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="n"):
        with torch_threads(0):
            pass
    assert torch.get_num_threads() == before
