"""Autoplastic's pictures (PNG, matplotlib's Agg backend, so they work headless): the gates
over the epochs (the seed's P, C and α plot) and accuracy against FLOPs per method."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_gates(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """P, mean C and α of every block per epoch (three panels), from the records of a gated
    run (`AutoplasticTrainer.train`'s ``history``); epochs where a block's α trained
    (stability S < ε) are marked on the α panel."""
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    epochs = [r["epoch"] + 1 for r in history]
    n = len(history[0]["P"])
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    for b in range(n):
        color = f"C{b % 10}"
        axes[0].plot(epochs, [r["P"][b] for r in history], color=color, label=f"block {b}")
        axes[1].plot(epochs, [r["meanC"][b] for r in history], color=color)
        a = [r["alpha"][b] for r in history]
        axes[2].plot(epochs, a, color=color)
        trained = [(e, v) for e, v, r in zip(epochs, a, history) if r["alpha_trained"][b]]
        if trained:
            axes[2].scatter(*zip(*trained), color=color, s=8)
    axes[0].set_ylabel("P (depth gate)")
    axes[1].set_ylabel("mean C (channel gates)")
    axes[2].set_ylabel("α (conv weight)\n• = α trained (S < ε)")
    axes[2].set_xlabel("epoch")
    axes[0].legend(loc="lower left", fontsize=8, ncol=n)
    for ax in axes:
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    fig.suptitle(title or "Autoplastic gates")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_tradeoff(runs: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Test accuracy against the FLOP ratio (export / full network) of every run, one panel
    per dataset, one colour per method."""
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets = list(dict.fromkeys(r["dataset"] for r in runs))
    methods = list(dict.fromkeys(r["method"] for r in runs))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        for i, m in enumerate(methods):
            rs = [r for r in runs if r["dataset"] == d and r["method"] == m]
            ax.scatter([r["flops_ratio"] for r in rs], [100 * r["test_acc"] for r in rs],
                       color=f"C{i}", label=m, alpha=0.8)
        ax.set_xlabel("FLOPs of the trained network / full network")
        ax.set_ylabel("test accuracy %")
        ax.set_title(d)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
