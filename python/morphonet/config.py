"""MorphoConfig: every field of MorphoNet Pro's published config, with the same names and
defaults, plus the fields its README described but its code never had (temperature range,
pruning window, mask granularity, convolution and transformer shapes)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

NETWORK_TYPES = ("mlp", "cnn", "transformer")
SCHEDULES = ("constant", "linear", "cosine")
GRANULARITIES = ("element", "block", "neuron")
ACTIVATIONS = ("relu", "gelu", "tanh")
BLOCK_SIZES = (16, 32, 64, 128)
DISTRIBUTIONS = ("global", "uniform", "erk")


@dataclass
class MorphoConfig:
    """Configuration of a MorphoNet model and its trainer.

    The seed's fields (names and defaults unchanged):

    Architecture: ``input_dim`` and ``n_classes`` (required to build a model, ``None`` until
    set), ``hidden_dims`` (widths of the masked hidden layers; ``[128, 64]``),
    ``network_type`` ("mlp", "cnn", "transformer").

    Sparsity: ``sparse_init`` is the initial *density* (fraction of connections whose mask
    logit starts at +``mask_init``; the rest start at −``mask_init``). ``target_sparsity`` is
    the fraction of prunable connections removed at the end of training, *enforced* by
    progressive hard pruning. ``sparsity_loss`` is the penalty λ on the mean mask value
    σ(M/T), scaled over training by ``sparsity_schedule`` ("constant", "linear", "cosine").

    Learning: ``weight_lr`` (AdamW, with ``weight_decay``), ``mask_lr`` (Adam on the mask
    logits, a separate optimizer). Training: ``epochs``, ``batch_size``, ``warmup_epochs``
    (epochs without penalty or pruning). Advanced: ``use_skip_connections`` (σ(g)·x added
    where a layer's input and output widths match), ``use_batchnorm``, ``dropout``.
    ``device``: "auto" (CUDA when available), "cpu", "cuda", "cuda:N".

    Fields this project adds (all optional):

    - ``mask_granularity``: "element" (one logit per connection), "block" (one per
      ``block_size``×``block_size`` tile; exports to BlockSparseLinear) or "neuron" (one per
      output unit / channel; exports to smaller dense layers with ``export.shrink``).
    - ``mask_init``: |initial logit| (2.0: σ(±2/T)), ``temp_start`` / ``temp_end``: temperature
      annealed linearly over the epochs, T = max(end, start − (start − end)·epoch/epochs),
      which is the published trainer's T = max(0.5, 2 − 1.5·epoch/E).
    - ``prune_start_epoch`` (default: ``warmup_epochs``) and ``prune_end_epoch`` (default:
      ¾ of the epochs): the scheduled sparsity rises from 0 to ``target_sparsity`` between them
      in the shape of ``sparsity_schedule`` and stays there; after every epoch the
      connections with the smallest mask values are pruned until the schedule is met, so the
      final sparsity is the target as closely as whole mask units allow.
    - ``prune_score``: what ranks the units pruned first: "mask" (the learned σ(M/T)) or
      "saliency" (mean |W ⊙ σ(M/T)| of the unit).
    - ``sparsity_distribution``: how the enforced sparsity is shared among the layers:
      "global" (one ranking of all units across the layers), "uniform" (every layer at the
      same density, as far as layers already sparser allow), "erk" (Erdős–Rényi-kernel, Evci
      et al. 2020: layer density ∝ Σ dims / Π dims of its weight, so small layers such as a
      first convolution stay denser), each layer then pruned by its own ranking
      (`schedule.layer_budgets`).
    - ``prune_threshold`` (0.2): ``model.prune()``'s default threshold.
    - ``grad_clip`` (5.0; 0 disables), ``activation``, ``seed``, ``val_split`` (fraction of
      the training data held out for model selection when no X_val is given; 0 = none).
    - CNN: ``conv_channels``, ``kernel_size``, ``conv_stride``, ``conv_padding``,
      ``conv_dilation``, ``conv_groups``, ``pool`` (2× max-pool after each conv).
    - Transformer: ``d_model``, ``n_heads``, ``n_layers``, ``max_seq_len``, ``causal``,
      ``task`` ("classification" or "lm"), ``pad_token_id``.
    """

    # Architecture
    input_dim: Optional[int] = None
    hidden_dims: list[int] = field(default_factory=lambda: [128, 64])
    n_classes: Optional[int] = None
    network_type: str = "mlp"
    # Sparsity
    sparse_init: float = 0.4
    target_sparsity: float = 0.7
    sparsity_loss: float = 0.002
    sparsity_schedule: str = "cosine"
    # Learning
    weight_lr: float = 0.001
    mask_lr: float = 0.02
    weight_decay: float = 0.01
    # Training
    epochs: int = 100
    batch_size: int = 64
    warmup_epochs: int = 10
    # Advanced
    use_skip_connections: bool = True
    use_batchnorm: bool = False
    dropout: float = 0.0
    # Device
    device: str = "auto"
    # ---- added by this project
    mask_granularity: str = "element"
    block_size: int = 16
    mask_init: float = 2.0
    temp_start: float = 2.0
    temp_end: float = 0.5
    prune_start_epoch: Optional[int] = None
    prune_end_epoch: Optional[int] = None
    prune_threshold: float = 0.2
    prune_score: str = "mask"
    sparsity_distribution: str = "global"
    grad_clip: float = 5.0
    activation: str = "relu"
    seed: Optional[int] = None
    val_split: float = 0.0
    # CNN
    conv_channels: list[int] = field(default_factory=lambda: [32, 64])
    kernel_size: int = 3
    conv_stride: int = 1
    conv_padding: int = 1
    conv_dilation: int = 1
    conv_groups: int = 1
    pool: bool = True
    # Transformer
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    max_seq_len: int = 128
    causal: bool = False
    task: str = "classification"
    pad_token_id: Optional[int] = None

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation

    def validate(self) -> MorphoConfig:
        """Check every field; raise ``ValueError`` / ``TypeError`` naming the field."""
        _opt_pos_int(self, "input_dim")
        _opt_pos_int(self, "n_classes")
        if self.n_classes is not None and self.n_classes < 2 and self.task != "lm":
            raise ValueError(f"n_classes must be >= 2, got {self.n_classes}")
        _int_list(self, "hidden_dims", allow_empty=True)
        _int_list(self, "conv_channels", allow_empty=False)
        _choice(self, "network_type", NETWORK_TYPES)
        _choice(self, "sparsity_schedule", SCHEDULES)
        _choice(self, "mask_granularity", GRANULARITIES)
        _choice(self, "activation", ACTIVATIONS)
        _choice(self, "task", ("classification", "lm"))
        _choice(self, "prune_score", ("mask", "saliency"))
        _choice(self, "sparsity_distribution", DISTRIBUTIONS)
        _choice(self, "block_size", BLOCK_SIZES)
        _unit(self, "sparse_init", lo_open=True)
        _unit(self, "target_sparsity", hi_open=True)
        _unit(self, "dropout", hi_open=True)
        _unit(self, "val_split", hi_open=True)
        _unit(self, "prune_threshold", lo_open=True, hi_open=True)
        for name in ("sparsity_loss", "weight_decay", "grad_clip", "mask_init"):
            _nonneg(self, name)
        for name in ("weight_lr", "mask_lr", "temp_start", "temp_end"):
            _nonneg(self, name)
            if getattr(self, name) == 0:
                raise ValueError(f"{name} must be > 0, got 0")
        if self.temp_end > self.temp_start:
            raise ValueError(f"temp_end ({self.temp_end}) must not exceed temp_start "
                             f"({self.temp_start})")
        for name in ("epochs", "batch_size", "kernel_size", "conv_stride", "conv_dilation",
                     "conv_groups", "d_model", "n_heads", "n_layers", "max_seq_len"):
            _pos_int(self, name)
        _nonneg_int(self, "warmup_epochs")
        _nonneg_int(self, "conv_padding")
        for name in ("prune_start_epoch", "prune_end_epoch", "seed", "pad_token_id"):
            v = getattr(self, name)
            if v is not None:
                _nonneg_int(self, name)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads "
                             f"({self.n_heads})")
        start, end = self.prune_window()
        if end < start:
            raise ValueError(f"prune_end_epoch ({end}) must be >= prune_start_epoch ({start})")
        for name in ("use_skip_connections", "use_batchnorm", "pool", "causal"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.device, str) or not (
                self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got "
                             f"{self.device!r}")
        return self

    def prune_window(self) -> tuple[int, int]:
        """(first epoch of pruning, epoch by which the target sparsity is reached)."""
        start = self.warmup_epochs if self.prune_start_epoch is None else self.prune_start_epoch
        start = min(start, max(self.epochs - 1, 0))
        end = (max(start, int(math.ceil(0.75 * self.epochs)) - 1)
               if self.prune_end_epoch is None else self.prune_end_epoch)
        return start, min(end, max(self.epochs - 1, 0))

    def require(self, *names: str) -> None:
        """Raise a clear error when a field needed to build a model is unset."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(f"MorphoConfig needs {', '.join(missing)} to build this model "
                             f"(e.g. MorphoConfig({missing[0]}=...))")

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values only (safe for ``torch.load(weights_only=True)`` and JSON)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MorphoConfig:
        """Inverse of `to_dict`; unknown keys are rejected (a typo would otherwise be lost)."""
        if not isinstance(d, dict):
            raise TypeError(f"from_dict expects a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown MorphoConfig fields: {unknown}")
        return cls(**{k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()})

    def replace(self, **changes: Any) -> MorphoConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, (list, tuple)) else v


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _pos_int(cfg: MorphoConfig, name: str) -> None:
    v = getattr(cfg, name)
    if not _is_int(v) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")


def _nonneg_int(cfg: MorphoConfig, name: str) -> None:
    v = getattr(cfg, name)
    if not _is_int(v) or v < 0:
        raise ValueError(f"{name} must be a non-negative int, got {v!r}")


def _opt_pos_int(cfg: MorphoConfig, name: str) -> None:
    if getattr(cfg, name) is not None:
        _pos_int(cfg, name)


def _int_list(cfg: MorphoConfig, name: str, allow_empty: bool) -> None:
    v = getattr(cfg, name)
    if isinstance(v, tuple):
        v = list(v)
        setattr(cfg, name, v)
    if not isinstance(v, list) or not all(_is_int(h) and h > 0 for h in v):
        raise ValueError(f"{name} must be a list of positive ints, got {v!r}")
    if not v and not allow_empty:
        raise ValueError(f"{name} must not be empty")


def _choice(cfg: MorphoConfig, name: str, choices: tuple) -> None:
    v = getattr(cfg, name)
    if v not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {v!r}")


def _number(cfg: MorphoConfig, name: str) -> float:
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    return float(v)


def _nonneg(cfg: MorphoConfig, name: str) -> None:
    if _number(cfg, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)!r}")


def _unit(cfg: MorphoConfig, name: str, lo_open: bool = False, hi_open: bool = False) -> None:
    v = _number(cfg, name)
    lo_ok = v > 0 if lo_open else v >= 0
    hi_ok = v < 1 if hi_open else v <= 1
    if not (lo_ok and hi_ok):
        lo, hi = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{name} must be in {lo}0, 1{hi}, got {v!r}")
