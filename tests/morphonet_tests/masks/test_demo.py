"""The data helpers and the end-to-end demo (the main job's first form)."""

import subprocess
import sys

import pytest
import torch

from morphonet import make_blobs, train_val_test_split
from morphonet.masks.demo import run_demo


def test_blobs_and_splits_are_disjoint_and_complete():
    x, y = make_blobs(n_samples=500, n_features=7, n_classes=4, seed=3)
    assert x.shape == (500, 7) and y.min() == 0 and y.max() == 3
    tr, va, te = train_val_test_split(x, y, val=0.2, test=0.2, seed=1)
    assert (tr.x.shape[0], va.x.shape[0], te.x.shape[0]) == (300, 100, 100)
    rows = torch.cat([tr.x, va.x, te.x])
    assert torch.unique(rows, dim=0).shape[0] == 500  # nothing lost, nothing repeated
    with pytest.raises(ValueError, match="val and test"):
        train_val_test_split(x, y, val=0.6, test=0.5)
    with pytest.raises(ValueError, match="n_classes"):
        make_blobs(n_samples=3, n_classes=5)


def test_demo_learns_and_sparsifies():
    r = run_demo(epochs=8, seed=0, verbose=False)
    assert r.test_acc > 0.8  # 5 classes: chance is 0.2
    assert r.test_acc_pruned > 0.8
    assert r.density < 0.6  # started at 0.5 for hidden layers, 1.0 for the head
    assert r.backend in ("ext", "reference")


def test_demo_rejects_bad_epochs():
    with pytest.raises(ValueError, match="epochs"):
        run_demo(epochs=0, verbose=False)


def test_cli_demo_runs():
    out = subprocess.run([sys.executable, "-m", "morphonet.cli", "demo", "--epochs", "2"],
                         capture_output=True, text=True, check=True).stdout
    assert "test accuracy" in out and "density" in out
