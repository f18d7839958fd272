"""Generated datasets (no downloads) and train / validation / test splits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Split:
    """Features and labels of one split."""

    x: torch.Tensor  # (n, features) float32
    y: torch.Tensor  # (n,) int64


def make_blobs(n_samples: int = 3000, n_features: int = 20, n_classes: int = 5,
               spread: float = 2.5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs: one centre per class drawn in a cube, unit-variance points around it.

    ``spread`` scales the class centres; smaller means more overlap (a harder problem).
    """
    if n_samples < n_classes or n_classes < 2 or n_features < 1:
        raise ValueError(f"need n_samples >= n_classes >= 2 and n_features >= 1, got "
                         f"{n_samples=}, {n_classes=}, {n_features=}")
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-spread, spread, size=(n_classes, n_features))
    y = rng.integers(0, n_classes, size=n_samples)
    x = centres[y] + rng.standard_normal((n_samples, n_features))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)


def train_val_test_split(x: torch.Tensor, y: torch.Tensor, val: float = 0.15, test: float = 0.15,
                         seed: int = 0) -> tuple[Split, Split, Split]:
    """Shuffled, disjoint train / validation / test splits (validation for model selection,
    test only for the final report)."""
    if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
        raise ValueError(f"val and test must be in (0, 1) with val + test < 1, got {val}, {test}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
    n = x.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test, n_val = int(round(n * test)), int(round(n * val))
    idx_test, idx_val, idx_train = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    return (Split(x[idx_train], y[idx_train]), Split(x[idx_val], y[idx_val]),
            Split(x[idx_test], y[idx_test]))
