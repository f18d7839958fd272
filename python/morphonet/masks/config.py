"""MorphoConfig: every field of MorphoNet Pro's published config, with the same names and
defaults, plus the fields its README described but its code never had (temperature range,
pruning window, mask granularity, convolution and transformer shapes)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from morpho_kernels.formats import BLOCK_SIZES
from morpho_kernels.nn import GRANULARITIES, MASK_INIT

from ..checks import check_device
from ..config import ACTIVATIONS, Config, flag, fraction, int_list, ints, one_of, reals, setting

NETWORK_TYPES = ("mlp", "cnn", "transformer")
SCHEDULES = ("constant", "linear", "cosine")
DISTRIBUTIONS = ("global", "uniform", "erk")
PRUNE_SCORES = ("mask", "saliency")
TASKS = ("classification", "lm")


@dataclass
class MorphoConfig(Config):
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
    input_dim: Optional[int] = setting(None, ints(1, optional=True))
    hidden_dims: list[int] = setting(check=int_list(1), factory=lambda: [128, 64])
    n_classes: Optional[int] = setting(None, ints(1, optional=True))
    network_type: str = setting("mlp", one_of(*NETWORK_TYPES))
    # Sparsity
    sparse_init: float = setting(0.4, fraction(lo_open=True))
    target_sparsity: float = setting(0.7, fraction(hi_open=True))
    sparsity_loss: float = setting(0.002, reals(0))
    sparsity_schedule: str = setting("cosine", one_of(*SCHEDULES))
    # Learning
    weight_lr: float = setting(0.001, reals(0, lo_open=True))
    mask_lr: float = setting(0.02, reals(0, lo_open=True))
    weight_decay: float = setting(0.01, reals(0))
    # Training
    epochs: int = setting(100, ints(1))
    batch_size: int = setting(64, ints(1))
    warmup_epochs: int = setting(10, ints(0))
    # Advanced
    use_skip_connections: bool = setting(True, flag())
    use_batchnorm: bool = setting(False, flag())
    dropout: float = setting(0.0, fraction(hi_open=True))
    # Device
    device: str = setting("auto", check_device)
    # ---- added by this project
    mask_granularity: str = setting("element", one_of(*GRANULARITIES))
    block_size: int = setting(16, one_of(*BLOCK_SIZES))
    mask_init: float = setting(MASK_INIT, reals(0))
    temp_start: float = setting(2.0, reals(0, lo_open=True))
    temp_end: float = setting(0.5, reals(0, lo_open=True))
    prune_start_epoch: Optional[int] = setting(None, ints(0, optional=True))
    prune_end_epoch: Optional[int] = setting(None, ints(0, optional=True))
    prune_threshold: float = setting(0.2, fraction(lo_open=True, hi_open=True))
    prune_score: str = setting("mask", one_of(*PRUNE_SCORES))
    sparsity_distribution: str = setting("global", one_of(*DISTRIBUTIONS))
    grad_clip: float = setting(5.0, reals(0))
    activation: str = setting("relu", one_of(*ACTIVATIONS))
    seed: Optional[int] = setting(None, ints(0, optional=True))
    val_split: float = setting(0.0, fraction(hi_open=True))
    # CNN
    conv_channels: list[int] = setting(check=int_list(1, allow_empty=False),
                                       factory=lambda: [32, 64])
    kernel_size: int = setting(3, ints(1))
    conv_stride: int = setting(1, ints(1))
    conv_padding: int = setting(1, ints(0))
    conv_dilation: int = setting(1, ints(1))
    conv_groups: int = setting(1, ints(1))
    pool: bool = setting(True, flag())
    # Transformer
    d_model: int = setting(64, ints(1))
    n_heads: int = setting(4, ints(1))
    n_layers: int = setting(2, ints(1))
    max_seq_len: int = setting(128, ints(1))
    causal: bool = setting(False, flag())
    task: str = setting("classification", one_of(*TASKS))
    pad_token_id: Optional[int] = setting(None, ints(0, optional=True))

    def check(self) -> None:
        """The rules across fields (each field is already checked by its `setting`)."""
        if self.n_classes is not None and self.n_classes < 2 and self.task != "lm":
            raise ValueError(f"n_classes must be >= 2, got {self.n_classes}")
        if self.temp_end > self.temp_start:
            raise ValueError(f"temp_end ({self.temp_end}) must not exceed temp_start "
                             f"({self.temp_start})")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads "
                             f"({self.n_heads})")
        start, end = self.prune_window()
        if end < start:
            raise ValueError(f"prune_end_epoch ({end}) must be >= prune_start_epoch ({start})")

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
