"""MorphoConfig: the seed's fields and defaults, validation, round trips."""


import pytest
from masks_data import SEED_DEFAULTS

from morphonet import (
    MorphoConfig,
    MorphoNetMLP,
)

# ---------------------------------------------------------------------------- config


def test_config_has_the_seed_defaults_and_round_trips():
    cfg = MorphoConfig()
    for k, v in SEED_DEFAULTS.items():
        assert getattr(cfg, k) == v, k
    cfg = MorphoConfig(input_dim=20, n_classes=5, mask_granularity="block", block_size=32)
    d = cfg.to_dict()
    assert MorphoConfig.from_dict(d) == cfg
    assert all(isinstance(v, (int, float, str, bool, list, type(None))) for v in d.values())


@pytest.mark.parametrize("kw, match", [
    (dict(target_sparsity=1.0), "target_sparsity"), (dict(sparse_init=0.0), "sparse_init"),
    (dict(sparsity_schedule="exp"), "sparsity_schedule"), (dict(epochs=0), "epochs"),
    (dict(mask_granularity="row"), "mask_granularity"), (dict(block_size=24), "block_size"),
    (dict(hidden_dims=[4, -1]), "hidden_dims"), (dict(device="tpu"), "device"),
    (dict(d_model=30, n_heads=4), "divisible"), (dict(weight_lr=0.0), "weight_lr"),
    (dict(dropout=float("nan")), "dropout"), (dict(use_batchnorm=1), "use_batchnorm"),
])
def test_config_rejects_bad_fields(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        MorphoConfig(**kw)


def test_config_from_dict_rejects_unknown_keys_and_models_need_sizes():
    with pytest.raises(ValueError, match="unknown"):
        MorphoConfig.from_dict({"input_dims": 3})
    with pytest.raises(ValueError, match="input_dim"):
        MorphoNetMLP(MorphoConfig(n_classes=3))
