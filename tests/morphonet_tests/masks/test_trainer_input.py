"""MorphoTrainer input checks: bad training or validation data (wrong feature shape, token ids
out of the vocabulary, sequences too long, one-hot or wrongly shaped labels) is rejected with a
ValueError naming the split before any training step, leaving the model as it was; a
Transformer built directly (its config's ``network_type`` left at "mlp") trains on token ids;
valid data still trains."""

import pytest
import torch
import torch.nn.functional as F

from morphonet import (
    MorphoConfig,
    MorphoNetCNN,
    MorphoNetMLP,
    MorphoNetTransformer,
    MorphoTrainer,
)
from morphonet.loop import IGNORE_INDEX, probe

V = 12  # vocabulary of the small transformers
L = 6  # their sequence length (max_seq_len 8)
STATS_KEYS = {"train_time", "final_loss", "final_sparsity", "final_density", "layer_density",
              "total_params", "effective_params", "best_val_acc", "best_epoch",
              "epochs_to_target", "loss_history", "sparsity_history", "temperature_history",
              "val_acc_history", "target_history"}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _common(**kw):
    base = dict(n_classes=3, hidden_dims=[8], epochs=2, warmup_epochs=0, batch_size=16,
                device="cpu", seed=0)
    base.update(kw)
    return base


def _mlp():
    return MorphoNetMLP(MorphoConfig(**_common(input_dim=10)))


def _cnn():
    return MorphoNetCNN(MorphoConfig(**_common(network_type="cnn", conv_channels=[4])),
                        input_shape=(1, 16))


def _transformer(task="classification"):
    # network_type="transformer" here, so these cases test the data checks themselves
    cfg = MorphoConfig(**_common(network_type="transformer", task=task, d_model=16, n_heads=2,
                                 n_layers=1, max_seq_len=8))
    return MorphoNetTransformer(cfg, vocab_size=V)


def _features(n, *shape, seed=0):
    return torch.randn(n, *shape, generator=_gen(seed))


def _labels(n, k=3, seed=1):
    return torch.randint(0, k, (n,), generator=_gen(seed))


def _tokens(n, length=L, seed=2):
    return torch.randint(0, V, (n, length), generator=_gen(seed))


def _next_token(x):
    """LM targets: the next token, the last position ignored."""
    return torch.cat([x[:, 1:], torch.full((x.shape[0], 1), IGNORE_INDEX)], 1)


def _mlp_data():
    return _features(32, 10), _labels(32), _features(8, 10, seed=3), _labels(8, seed=4)


def _cnn_data():
    return _features(32, 1, 16), _labels(32), _features(8, 1, 16, seed=3), _labels(8, seed=4)


def _cls_data():
    return _tokens(32), _labels(32), _tokens(8, seed=3), _labels(8, seed=4)


def _lm_data():
    x, xv = _tokens(32), _tokens(8, seed=3)
    return x, _next_token(x), xv, _next_token(xv)


def _replace(data, i, value):
    data = list(data)
    data[i] = value
    return tuple(data)


X_TRAIN, Y_TRAIN, X_VAL, Y_VAL = range(4)

# (model, data, which argument is broken, what it becomes, error pattern naming the split)
BAD = {
    "mlp-X_train-features": (_mlp, _mlp_data, X_TRAIN, _features(32, 9),
                             r"X_train must have shape \(batch, 10\), got shape \(32, 9\)"),
    "mlp-X_val-features": (_mlp, _mlp_data, X_VAL, _features(8, 9),
                           r"X_val must have shape \(batch, 10\), got shape \(8, 9\)"),
    "mlp-X_val-1d": (_mlp, _mlp_data, X_VAL, _features(8), r"X_val must have shape"),
    "cnn-X_train-size": (_cnn, _cnn_data, X_TRAIN, _features(32, 1, 15),
                         r"X_train must have shape \(batch, 1, 16\) or flattened rows"),
    "cnn-X_val-size": (_cnn, _cnn_data, X_VAL, _features(8, 1, 15),
                       r"X_val must have shape \(batch, 1, 16\) or flattened rows"),
    # right size per row, wrong layout: only the model's forward can tell (the probe)
    "cnn-X_val-layout": (_cnn, _cnn_data, X_VAL, _features(8, 2, 8),
                         r"X_val of shape \(8, 2, 8\) does not fit the model \(expected "
                         r"shape \(batch, 1, 16\)"),
    "transformer-X_val-vocab": (_transformer, _cls_data, X_VAL, _tokens(8) + V,
                                r"X_val has token ids in .* vocab_size is 12"),
    "transformer-X_train-negative-id": (
        _transformer, _cls_data, X_TRAIN, _tokens(32).index_fill(0, torch.tensor([5]), -1),
        r"X_train has token ids in \[-1, .* vocab_size is 12"),
    "transformer-X_val-too-long": (_transformer, _cls_data, X_VAL, _tokens(8, length=9),
                                   r"X_val has sequences of length 9 .* max_seq_len is 8"),
    "transformer-X_train-too-long": (_transformer, _cls_data, X_TRAIN, _tokens(32, length=9),
                                     r"X_train has sequences of length 9 .* max_seq_len is 8"),
    "transformer-y_train-2d": (_transformer, _cls_data, Y_TRAIN, _tokens(32) % 3,
                               r"y_train must be 1-D class indices"),
    "lm-y_val-shifted": (lambda: _transformer("lm"), _lm_data, Y_VAL, _tokens(8, seed=3)[:, 1:],
                         r"y_val must have X_val's shape \(8, 6\) .* got \(8, 5\)"),
    "lm-y_train-shifted": (lambda: _transformer("lm"), _lm_data, Y_TRAIN,
                           _tokens(32)[:, 1:], r"y_train must have X_train's shape \(32, 6\)"),
    "lm-y_val-1d": (lambda: _transformer("lm"), _lm_data, Y_VAL, _labels(8),
                    r"y_val must have X_val's shape"),
    "mlp-y_train-one-hot": (_mlp, _mlp_data, Y_TRAIN, F.one_hot(_labels(32), 3),
                            r"y_train must be 1-D class indices .* got shape \(32, 3\).*"
                            r"not one-hot"),
    "mlp-y_val-one-hot": (_mlp, _mlp_data, Y_VAL, F.one_hot(_labels(8), 3).float(),
                          r"y_val must be 1-D class indices .*not one-hot"),
    "cnn-y_val-one-hot": (_cnn, _cnn_data, Y_VAL, F.one_hot(_labels(8), 3),
                          r"y_val .*not one-hot"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_rejected_before_any_training_step(case):
    make_model, make_data, which, bad, match = BAD[case]
    torch.manual_seed(0)
    model = make_model()
    data = _replace(make_data(), which, bad)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    was = model.training
    epochs = []
    with pytest.raises(ValueError, match=match):
        MorphoTrainer(model).train(*data, verbose=False, callback=epochs.append)
    assert epochs == []  # not one epoch ran
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "the model changed"
    assert model.training == was


@pytest.mark.parametrize("task", ["classification", "lm"])
def test_directly_built_transformer_trains_on_token_ids(task):
    """The seed's way: a config with the default network_type ("mlp") given to
    MorphoNetTransformer, then MorphoTrainer(model, config).train(ids, labels)."""
    torch.manual_seed(0)
    config = MorphoConfig(input_dim=20, hidden_dims=[128, 64], n_classes=5, epochs=2,
                          task=task, d_model=16, n_heads=2, n_layers=1, device="cpu", seed=0)
    assert config.network_type == "mlp"
    vocab = 10000 if task == "classification" else 50  # the LM head is vocab-wide
    model = MorphoNetTransformer(config, vocab_size=vocab)
    ids = torch.randint(0, vocab, (48, 10), generator=_gen(0))
    y = torch.randint(0, 5, (48,), generator=_gen(1)) if task == "classification" else \
        _next_token(ids)
    stats = MorphoTrainer(model, config).train(ids[:32], y[:32], ids[32:], y[32:],
                                               verbose=False)
    assert set(stats) == STATS_KEYS
    assert len(stats["loss_history"]) == 2 and torch.isfinite(torch.tensor(stats["final_loss"]))
    assert stats["best_val_acc"] is not None
    # numpy token ids and no validation data work too
    stats = MorphoTrainer(model).train(ids.numpy(), y.numpy(), verbose=False)
    assert set(stats) == STATS_KEYS and stats["best_val_acc"] is None


@pytest.mark.parametrize("kind", ["mlp", "cnn", "cnn-image-flat", "transformer", "lm"])
def test_valid_input_still_trains(kind):
    torch.manual_seed(0)
    if kind == "mlp":
        model, data = _mlp(), _mlp_data()
    elif kind == "cnn":
        model, data = _cnn(), _cnn_data()
    elif kind == "cnn-image-flat":  # (C, H, W) model fed flattened rows, labels as floats
        model = MorphoNetCNN(MorphoConfig(**_common(network_type="cnn", conv_channels=[4])),
                             input_shape=(2, 4, 4))
        data = (_features(32, 32), _labels(32).float(), _features(8, 2, 4, 4, seed=3),
                _labels(8, seed=4))
    elif kind == "transformer":
        model, data = _transformer(), _cls_data()
    else:
        model, data = _transformer("lm"), _lm_data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = MorphoTrainer(model).train(*data, verbose=False)
    assert set(stats) == STATS_KEYS and len(stats["loss_history"]) == 2
    assert stats["best_val_acc"] is not None
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("training", [True, False])
def test_probe_changes_no_state(training):
    """The probe forward runs in eval mode under no_grad: batchnorm statistics, dropout RNG and
    the training mode are as they were."""
    torch.manual_seed(0)
    model = MorphoNetMLP(MorphoConfig(**_common(input_dim=10, use_batchnorm=True,
                                                dropout=0.5)))
    model.train(training)
    x, y = _features(16, 10), _labels(16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    probe(model, [("train", x, y)])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert model.training == training
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match=r"X_val of shape \(16, 9\) does not fit the model"):
        probe(model, [("train", x, y), ("val", _features(16, 9), y)])
    assert model.training == training
    with pytest.raises(ValueError, match=r"y_val of shape \(16, 3\) does not match the model's "
                                         r"output of shape \(batch, 3\)"):
        probe(model, [("val", x, F.one_hot(y, 3))])
    assert model.training == training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
