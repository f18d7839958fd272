"""The seed's documented snippets, run unchanged, and its save / load recipe."""

import os
import re
import subprocess
import sys

import pytest
import torch
from masks_data import SEED_FILE
from masks_data import blobs as _blobs

from morphonet import (
    MorphoConfig,
    MorphoNetMLP,
    MorphoTrainer,
)

# ---------------------------------------------------------------------------- pictures / seed


def test_viz_writes_pngs(tmp_path):
    from morphonet import viz

    x, y = _blobs(120)
    cfg = MorphoConfig(input_dim=20, n_classes=5, hidden_dims=[16], epochs=3, device="cpu",
                       warmup_epochs=0)
    model = MorphoNetMLP(cfg)
    stats = MorphoTrainer(model).train(x[:90], y[:90], x[90:], y[90:], verbose=False)
    paths = viz.plot_connectivity(model, tmp_path)
    paths.append(viz.plot_training(stats, tmp_path / "training.png", cfg.target_sparsity))
    assert len(paths) == 3
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def _seed_snippets():
    text = SEED_FILE.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return {"quick": blocks[0], "models": blocks[2], "trainer": blocks[3], "layerwise": blocks[5],
            "export": blocks[6], "viz": blocks[7], "schedules": blocks[4]}


@pytest.mark.skipif(SEED_FILE is None, reason="shared/seeds not beside the checkout")
def test_seed_snippets_run_unchanged(tmp_path):
    snippets = _seed_snippets()
    assert "MorphoTrainer(model, config)" in snippets["quick"]
    assert "model.prune(0.3)" in snippets["export"]
    x, y = _blobs(160, seed=4)
    script = "\n".join([
        "import matplotlib; matplotlib.use('Agg')",
        "import torch",
        "from morphonet import make_blobs",
        "from morphonet_pro import MorphoNetCNN, MorphoNetTransformer  # used by the Models block",
        "x, y = make_blobs(n_samples=160, n_features=20, n_classes=5, spread=2.0, seed=4)",
        "X_train, y_train, X_val, y_val = x[:120].numpy(), y[:120].numpy(), x[120:], y[120:]",
        snippets["quick"],
        "assert stats['best_val_acc'] > 0.6, stats['best_val_acc']",
        "assert abs(stats['final_sparsity'] - 0.7) <= 0.02, stats['final_sparsity']",
        "trained = model",
        snippets["models"],
        "assert type(model).__name__ == 'MorphoNetMLP'",  # the factory's model, 20 → 5
        snippets["trainer"],
        snippets["layerwise"],
        snippets["export"],
        "assert model.sparsity() >= 0.68, model.sparsity()",
        snippets["viz"],
        snippets["schedules"],
        "assert config.target_sparsity == 0.8 and config.sparsity_schedule == 'cosine'",
    ])
    (tmp_path / "run_seed.py").write_text(script)
    env = {**os.environ, "MPLBACKEND": "Agg"}
    out = subprocess.run([sys.executable, "run_seed.py"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Accuracy:" in out.stdout and "Effective params:" in out.stdout
    assert (tmp_path / "morphonet.pt").exists()
    assert sorted(p.name for p in tmp_path.glob("layer_*_connectivity.png")) == [
        "layer_0_connectivity.png", "layer_1_connectivity.png", "layer_2_connectivity.png"]
    del x, y


@pytest.mark.skipif(SEED_FILE is None, reason="shared/seeds not beside the checkout")
def test_seed_save_load_recipe_restores_the_model(tmp_path):
    x, y = _blobs(100)
    config = MorphoConfig(input_dim=20, hidden_dims=[16, 8], n_classes=5, epochs=3,
                          warmup_epochs=0, device="cpu")
    model = MorphoNetMLP(config)
    MorphoTrainer(model, config).train(x, y, verbose=False)
    model.prune(0.3)
    path = tmp_path / "m.pt"
    torch.save({"state_dict": model.state_dict(), "mask": model.get_all_masks(),
                "config": config.to_dict()}, path)
    ck = torch.load(path, weights_only=True)
    again = MorphoNetMLP(MorphoConfig.from_dict(ck["config"]))
    again.load_state_dict(ck["state_dict"])
    model.eval()
    again.eval()
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    assert again.sparsity() == model.sparsity() > 0
