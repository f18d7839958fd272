"""The drop-in demo (``morpho demo``): `morpho_kernels.nn.MaskedLinear` layers in a plain
``nn.Sequential`` learn their connectivity on generated data, on the one training loop.

MorphoNet Pro's recipe in miniature, from the same hooks MorphoTrainer uses: weights with
AdamW, mask logits with their own Adam, a penalty λ·mean σ(M/T) (`MaskPenalty`), temperature
annealed T = max(0.5, 2 − 1.5·epoch/E) (`AnnealTemperature`), and the model of the best
validation epoch kept; then hard pruning of mask values below 0.5 and the test accuracy of the
pruned model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from morpho_kernels.checks import check_int
from morpho_kernels.nn import MaskedLinear, mask_parameters

from ..data import make_blobs, train_val_test_split
from ..loop import Hook, TrainLoop, accuracy
from .hooks import AnnealTemperature, MaskPenalty

__all__ = ["DemoResult", "build_mlp", "density", "masked_layers", "run_demo"]


@dataclass
class DemoResult:
    """What `run_demo` measured: test accuracy with soft and with hard-pruned masks, the live
    density, the best validation accuracy, training seconds and the backend that served
    masked_linear."""

    test_acc: float
    test_acc_pruned: float
    density: float
    best_val_acc: float
    seconds: float
    backend: str


def build_mlp(d_in: int, hidden: list[int], n_classes: int, init_density: float) -> nn.Sequential:
    """``nn.Sequential`` of MaskedLinear + ReLU (the head starts fully on)."""
    layers: list[nn.Module] = []
    for a, b in zip([d_in, *hidden], hidden):
        layers += [MaskedLinear(a, b, init_density=init_density), nn.ReLU()]
    layers.append(MaskedLinear(hidden[-1] if hidden else d_in, n_classes))
    return nn.Sequential(*layers)


def masked_layers(model: nn.Module) -> list[MaskedLinear]:
    """The model's MaskedLinear layers, in order."""
    return [m for m in model.modules() if isinstance(m, MaskedLinear)]


def density(model: nn.Module) -> float:
    """Fraction of all connections whose mask value exceeds 0.5."""
    layers = masked_layers(model)
    live = sum(m.density() * m.mask_logits.numel() for m in layers)
    return live / sum(m.mask_logits.numel() for m in layers)


class _ShowDensity(Hook):
    def describe(self, record: dict[str, Any]) -> str:
        return f"density={record['density']:.3f}"

    def on_train_end(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        record["density"] = density(loop.model)


def run_demo(epochs: int = 30, seed: int = 0, penalty: float = 0.5,
             verbose: bool = True) -> DemoResult:
    """Train, select on validation, prune, and report test accuracy and density."""
    from morpho_kernels.ops.masked_linear import DISPATCH

    epochs = check_int("epochs", epochs, 1)
    torch.manual_seed(seed)
    x, y = make_blobs(n_samples=3000, n_features=20, n_classes=5, spread=1.2, seed=seed)
    tr, va, te = train_val_test_split(x, y, seed=seed)
    model = build_mlp(20, [128, 64], 5, init_density=0.5)
    if verbose:
        print(f"blobs-5c: {tr.x.shape[0]} train / {va.x.shape[0]} val / {te.x.shape[0]} test, "
              f"MLP 20-128-64-5 of MaskedLinear, {epochs} epochs")
    masks = mask_parameters(model)
    weights = [p for p in model.parameters() if all(p is not m for m in masks)]
    layers = masked_layers(model)

    def mean_mask(scale: float) -> torch.Tensor:
        return scale * torch.cat([m.unit_mask().flatten() for m in layers]).mean()

    hooks = [AnnealTemperature(lambda e: max(0.5, 2.0 - 1.5 * e / epochs)),
             MaskPenalty(mean_mask, lambda e: penalty), _ShowDensity()]
    loop = TrainLoop(model, [torch.optim.AdamW(weights, lr=1e-3, weight_decay=0.01),
                             torch.optim.Adam(masks, lr=0.02)], hooks=hooks, batch_size=64,
                     generator=torch.Generator().manual_seed(seed),
                     log=print if verbose else None, log_every=5)
    t0 = time.perf_counter()
    res = loop.fit((tr.x, tr.y), (va.x, va.y), epochs)
    seconds = time.perf_counter() - t0
    acc = accuracy(model, te.x, te.y)
    for layer in layers:
        layer.prune(0.5)
    return DemoResult(acc, accuracy(model, te.x, te.y), density(model), res["best_value"],
                      seconds, DISPATCH.last or "none")
