"""The end-to-end demo: a masked MLP learns its connectivity on generated data.

MorphoNet Pro's recipe in miniature: weights with AdamW, mask logits with their own Adam, a
penalty λ·mean σ(M/T), temperature annealed T = max(0.5, 2 − 1.5·epoch/E), and the model of the
best validation epoch kept; then hard pruning of mask values below 0.5 and the test accuracy of
the pruned model.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import nn

from morpho_kernels.nn import MaskedLinear

from .data import Split, make_blobs, train_val_test_split


@dataclass
class DemoResult:
    test_acc: float
    test_acc_pruned: float
    density: float
    best_val_acc: float
    seconds: float
    backend: str


def build_mlp(d_in: int, hidden: list[int], n_classes: int, init_density: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip([d_in, *hidden], hidden):
        layers += [MaskedLinear(a, b, mask_init=2.0, init_density=init_density), nn.ReLU()]
    layers.append(MaskedLinear(hidden[-1] if hidden else d_in, n_classes, mask_init=2.0))
    return nn.Sequential(*layers)


def masked_layers(model: nn.Module) -> list[MaskedLinear]:
    return [m for m in model.modules() if isinstance(m, MaskedLinear)]


def density(model: nn.Module) -> float:
    layers = masked_layers(model)
    live = sum(m.density() * m.mask_logits.numel() for m in layers)
    return live / sum(m.mask_logits.numel() for m in layers)


@torch.no_grad()
def accuracy(model: nn.Module, split: Split) -> float:
    model.eval()
    return float((model(split.x).argmax(1) == split.y).float().mean())


def train(model: nn.Module, train_split: Split, val_split: Split, epochs: int, batch: int,
          penalty: float, verbose: bool) -> float:
    weights = [p for n, p in model.named_parameters() if not n.endswith("mask_logits")]
    masks = [p for n, p in model.named_parameters() if n.endswith("mask_logits")]
    opt_w = torch.optim.AdamW(weights, lr=1e-3, weight_decay=0.01)
    opt_m = torch.optim.Adam(masks, lr=0.02)
    best_acc, best_state = -1.0, None
    n = train_split.x.shape[0]
    for epoch in range(epochs):
        temp = max(0.5, 2.0 - 1.5 * epoch / epochs)
        for layer in masked_layers(model):
            layer.set_temperature(temp)
        model.train()
        perm = torch.randperm(n)
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            logits = model(train_split.x[idx])
            soft = torch.cat([torch.sigmoid(m.mask_logits / m.temperature).flatten()
                              for m in masked_layers(model)])
            loss = nn.functional.cross_entropy(logits, train_split.y[idx]) + penalty * soft.mean()
            opt_w.zero_grad()
            opt_m.zero_grad()
            loss.backward()
            opt_w.step()
            opt_m.step()
        val_acc = accuracy(model, val_split)
        if val_acc > best_acc:
            best_acc, best_state = val_acc, copy.deepcopy(model.state_dict())
        if verbose and (epoch % 5 == 0 or epoch == epochs - 1):
            print(f"  epoch {epoch + 1:3d}/{epochs}  T={temp:.2f}  loss={loss.item():.3f}  "
                  f"val_acc={val_acc:.3f}  density={density(model):.3f}", flush=True)
    model.load_state_dict(best_state)
    return best_acc


def run_demo(epochs: int = 30, seed: int = 0, penalty: float = 0.5,
             verbose: bool = True) -> DemoResult:
    """Train, select on validation, prune, and report test accuracy and density."""
    from morpho_kernels.ops.masked_linear import DISPATCH

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    torch.manual_seed(seed)
    x, y = make_blobs(n_samples=3000, n_features=20, n_classes=5, spread=1.2, seed=seed)
    tr, va, te = train_val_test_split(x, y, seed=seed)
    model = build_mlp(20, [128, 64], 5, init_density=0.5)
    if verbose:
        print(f"blobs-5c: {tr.x.shape[0]} train / {va.x.shape[0]} val / {te.x.shape[0]} test, "
              f"MLP 20-128-64-5 of MaskedLinear, {epochs} epochs")
    t0 = time.perf_counter()
    best_val = train(model, tr, va, epochs, 64, penalty, verbose)
    seconds = time.perf_counter() - t0
    acc = accuracy(model, te)
    for layer in masked_layers(model):
        layer.prune(0.5)
    return DemoResult(acc, accuracy(model, te), density(model), best_val, seconds,
                      DISPATCH.last or "none")
