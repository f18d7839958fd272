"""Input rules of a model: what one batch looks like, checked once before any training.

`InputRules` is the mixin every morphonet model family inherits (MorphoNet Pro's
`MorphoModel`, MorphNet's experiment models, …): ``check_inputs(x, y, name)`` validates a whole
split (non-empty, same length, real finite features the model takes, integer labels in range)
and returns it as the model wants it, with errors naming ``X_<name>`` / ``y_<name>``. A model
describes itself with `InputRules.expected_input`, `InputRules._fits` (and
`InputRules._check_features` when it reshapes), `InputRules.n_outputs`, and
`InputRules._check_targets` when its targets are not one class per row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .loop import IGNORE_INDEX

__all__ = ["InputRules", "as_tensor"]


def as_tensor(a: Any, name: str) -> Tensor:
    """``a`` as a tensor (a tensor is detached; numpy arrays and lists are converted);
    anything else is a ``TypeError`` naming ``name``."""
    if isinstance(a, Tensor):
        return a.detach()
    if isinstance(a, (np.ndarray, list, tuple)):
        return torch.as_tensor(np.asarray(a))
    raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(a).__name__}")


class InputRules:
    """The input rules of a model (module docstring); mixed into an ``nn.Module``."""

    def expected_input(self) -> str:
        """What one batch of this model's input looks like, in words (for error messages)."""
        return "the model's input"

    def n_outputs(self) -> int:
        """Number of classes (or tokens) the output scores."""
        raise NotImplementedError

    def _check_features(self, x: Tensor, name: str) -> Tensor:
        """The input ``x`` checked and converted (default: real, finite features as float32;
        shape checks are the subclasses')."""
        if x.is_complex():
            raise ValueError(f"{name} must hold real features, got dtype {x.dtype}")
        if not self._fits(x):
            raise ValueError(f"{name} must have {self.expected_input()}, got shape "
                             f"{tuple(x.shape)}")
        x = x.float()
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"{name} contains {bad} NaN or infinite values")
        return x

    def _fits(self, x: Tensor) -> bool:
        """False when ``x``'s shape certainly does not fit (anything else is left to the
        forward probe of the training loop)."""
        return True

    def _check_targets(self, x: Tensor, y: Tensor, name: str) -> None:
        """Targets of a classifier: 1-D class indices, one per row."""
        if y.dim() != 1:
            hint = (f"; pass class indices, not one-hot (e.g. {name}.argmax(1))"
                    if y.dim() == 2 else "")
            raise ValueError(f"{name} must be 1-D class indices of shape ({x.shape[0]},), got "
                             f"shape {tuple(y.shape)}{hint}")

    def check_inputs(self, x: Any, y: Any, name: str = "train") -> tuple[Tensor, Tensor]:
        """Validate one split before any training: non-empty, same length, inputs this model
        takes (`expected_input`), integer labels of the right shape in range (`IGNORE_INDEX`
        allowed). Returns (x, y) as tensors (x as the model wants it, y int64); raises a
        ``ValueError`` / ``TypeError`` naming ``X_<name>`` / ``y_<name>``."""
        xs, ys = f"X_{name}", f"y_{name}"
        x, y = as_tensor(x, xs), as_tensor(y, ys)
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"{xs} is empty")
        if y.dim() == 0 or y.shape[0] != x.shape[0]:
            raise ValueError(f"{xs} has {x.shape[0]} rows but {ys} has "
                             f"{y.shape[0] if y.dim() else 'no'} labels")
        if y.is_complex():
            raise ValueError(f"{ys} must hold integer class labels, got dtype {y.dtype}")
        if y.is_floating_point() and not torch.equal(y, y.round()):
            raise ValueError(f"{ys} must hold integer class labels")
        y = y.long()
        x = self._check_features(x, xs)
        self._check_targets(x, y, ys)
        n_out = self.n_outputs()
        labels = y[y != IGNORE_INDEX]
        if labels.numel() and (labels.min() < 0 or labels.max() >= n_out):
            raise ValueError(f"{ys} has labels in [{int(labels.min())}, {int(labels.max())}] "
                             f"but the model has {n_out} classes (labels must be in "
                             f"[0, {n_out - 1}])")
        return x, y
