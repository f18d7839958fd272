"""Pictures of learned structure: per-layer connectivity images and training curves (PNG).

matplotlib is imported lazily with the non-interactive Agg backend, so these work on
headless machines.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_connectivity(model: Any, out_dir: str | Path, prefix: str = "layer",
                      hard: bool = False) -> list[Path]:
    """One PNG per masked layer: the mask σ(M/T) (or the 0/1 live mask with ``hard=True``)
    as an image, rows = output units, columns = inputs (conv: input channel × tap); pruned
    connections are white. Returns the written paths."""
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, layer in enumerate(model.masked_layers()):
        m = layer.mask_matrix(hard=hard).float().cpu().numpy()  # conv: (out, in·taps)
        live = float((~layer.pruned_units()).float().mean()) if layer.mask_logits.numel() else 0.0
        fig, ax = plt.subplots(figsize=(8, 6))
        im = ax.imshow(m, cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto",
                       interpolation="nearest")
        ax.set_title(f"{prefix} {i}: {type(layer).__name__} {tuple(layer.weight.shape)}, "
                     f"{layer.granularity} mask, {live:.1%} of units live")
        ax.set_xlabel("input" + (" (channel × tap)" if layer.weight.dim() > 2 else ""))
        ax.set_ylabel("output unit")
        fig.colorbar(im, ax=ax, label="mask value" if not hard else "live")
        path = out / f"{prefix}_{i}_connectivity.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def plot_training(stats: dict[str, Sequence], path: str | Path,
                  target_sparsity: float | None = None) -> Path:
    """Sparsity (with the enforced schedule), validation accuracy and temperature per epoch,
    from the dict `MorphoTrainer.train` returns, in one PNG with three panels."""
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    epochs = list(range(1, len(stats["sparsity_history"]) + 1))
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    axes[0].plot(epochs, stats["sparsity_history"], label="sparsity")
    if "target_history" in stats:
        axes[0].plot(epochs, stats["target_history"], "--", label="scheduled target")
    if target_sparsity is not None:
        axes[0].axhline(target_sparsity, color="grey", lw=0.8)
    axes[0].set_ylabel("sparsity")
    axes[0].legend(loc="lower right")
    val = [v for v in stats.get("val_acc_history", []) if v is not None]
    if val:
        axes[1].plot(epochs[:len(val)], val, color="tab:green")
        if stats.get("best_epoch") is not None:
            axes[1].axvline(stats["best_epoch"] + 1, color="grey", ls=":", label="selected")
            axes[1].legend(loc="lower right")
    axes[1].set_ylabel("validation accuracy")
    axes[2].plot(epochs, stats["temperature_history"], color="tab:red")
    axes[2].set_ylabel("temperature T")
    axes[2].set_xlabel("epoch")
    fig.suptitle("MorphoNet training")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
