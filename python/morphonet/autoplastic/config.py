"""Autoplastic's settings: the seed's `TrainConfig` (its field names and defaults) and
`NetConfig`, the shape of an `AutoplasticNet`.

The seed's published ``autoplastic.py`` declared these `TrainConfig` defaults: 40 epochs,
batch 128, SGD (Nesterov, momentum 0.9) at ``base_lr`` 0.1 with weight decay 5e-4,
``epsilon`` 0.85, ``arch_lr_ratio`` 1/20, ``p_init`` = ``c_init`` = 0.9, floors ``p_min``
0.5 / ``c_min`` 0.4 and ``c_max`` 0.995, label smoothing 0.1, MixUp on (Beta(0.2, 0.2)),
3 warm-up epochs of a cosine schedule, AMP on. They are kept; the fields this package adds say
so in their comment.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..checks import check_device, check_int_list
from ..config import Config, flag, fraction, int_list, ints, one_of, reals, setting

__all__ = ["GATE_KINDS", "GATES", "NetConfig", "TrainConfig"]

GATES = ("learned", "rules", "none")  # learned by gradient | the seed's rules | no P / C gates
GATE_KINDS = ("hard_concrete", "sigmoid_st")  # how a learned gate reaches exactly 0


@dataclass
class TrainConfig(Config):
    """How an `AutoplasticNet` trains (the seed's fields and defaults first).

    ``gates`` picks how P (per block) and C (per channel) change: ``"learned"`` by gradient
    with the sparsity penalty ``sparsity`` (an L0 penalty on the expected FLOPs, `gates`),
    ``"rules"`` by the seed's rules once per epoch (`hooks.RuleGates`), ``"none"`` for a network
    without P / C gates (the full-width peer). The floors ``p_min`` / ``c_min`` / ``c_max`` bound
    the rule gates always and the learned gates only with ``use_floors`` (a floor above 0 means
    nothing can be removed). α trains only in blocks whose stability S < ``epsilon``;
    architecture parameters (α, and the learned gates' logits) step with Adam at
    ``base_lr × arch_lr_ratio``. The best epoch is chosen on validation accuracy among the
    epochs from ``select_from × epochs`` on (0: all of them, as the seed did on its test
    set): the gates settle during the first half, and an earlier checkpoint holds a
    structure they have since left (on digits' 270 validation images, 99.6% was first
    reached at epoch 13 of 40, before any gate had closed). With ``freeze_gates`` < 1 the
    learned gates are fixed at their deterministic values from ``freeze_gates × epochs`` on,
    and only those epochs are eligible (`hooks.FreezeGates`; off by default: on MNIST-1D, seed
    0, fixing them at 0.7 gave the same validation accuracy, 96.2%, and stopped a closing
    block short of 0).
    """

    epochs: int = setting(40, ints(1))
    batch_size: int = setting(128, ints(1))
    base_lr: float = setting(0.1, reals(0, lo_open=True))
    weight_decay: float = setting(5e-4, reals(0))
    epsilon: float = setting(0.85, fraction())
    arch_lr_ratio: float = setting(1 / 20, reals(0))
    p_init: float = setting(0.9, fraction(lo_open=True))
    c_init: float = setting(0.9, fraction(lo_open=True))
    p_min: float = setting(0.5, fraction())
    c_min: float = setting(0.4, fraction())
    c_max: float = setting(0.995, fraction(lo_open=True))
    label_smoothing: float = setting(0.1, fraction(hi_open=True))
    use_mixup: bool = setting(True, flag())
    amp: bool = setting(True, flag())
    warmup_epochs: int = setting(3, ints(0))
    # the seed code's further fields
    momentum: float = setting(0.9, fraction(hi_open=True))
    mixup_alpha: float = setting(0.2, reals(0, lo_open=True))
    init_alpha: float = setting(0.5, fraction(lo_open=True, hi_open=True))
    delta_grad_thresh: float = setting(1e-5, reals(0))
    ema: float = setting(0.9, fraction(hi_open=True))  # the seed's EMA of snapshots (hard-coded)
    seed: int = setting(42, ints(0))
    # this package's
    gates: str = setting("learned", one_of(*GATES))
    gate_kind: str = setting("hard_concrete", one_of(*GATE_KINDS))
    sparsity: float = setting(1.5, reals(0))  # λ of the expected-FLOPs L0 penalty
    channel_sparsity: float = setting(0.5, reals(0))  # λ_C of the expected active-channel L0
    use_floors: bool = setting(False, flag())  # the seed's floors on the learned gates
    amp_dtype: str = setting("bfloat16", one_of("bfloat16", "float16"))
    channels_last: bool = setting(False, flag())  # 2-D models only
    grad_clip: float = setting(0.0, reals(0))
    select_from: float = setting(0.5, fraction(hi_open=True))  # best epoch: last half only
    freeze_gates: float = setting(1.0, fraction(lo_open=True))  # learned gates fixed from here
    device: str = setting("auto", check_device)

    def check(self) -> None:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs={self.warmup_epochs} must be below "
                             f"epochs={self.epochs}")
        if self.c_min > self.c_max:
            raise ValueError(f"c_min={self.c_min} must not exceed c_max={self.c_max}")
        floors = self.gates == "rules" or self.use_floors
        if floors and not (self.p_min <= self.p_init and self.c_min <= self.c_init
                           <= self.c_max):
            raise ValueError(f"p_init={self.p_init} / c_init={self.c_init} must lie within the "
                             f"floors [p_min={self.p_min}, 1] / [c_min={self.c_min}, "
                             f"c_max={self.c_max}]")

    def floors(self) -> tuple[float, float, float] | None:
        """(p_min, c_min, c_max) where they bound the gates (rules, or ``use_floors``), else
        None."""
        if self.gates == "rules" or self.use_floors:
            return (self.p_min, self.c_min, self.c_max)
        return None


def _strides(name: str, v) -> tuple:
    v = check_int_list(name, v, lo=1, as_tuple=True)
    bad = [s for s in v if s not in (1, 2)]
    if bad:
        raise ValueError(f"{name} must hold strides 1 or 2, got {list(v)!r}")
    return v


@dataclass
class NetConfig(Config):
    """The shape of an `AutoplasticNet`: ``dims`` 1 (sequences, (C, L) inputs) or 2 (images,
    (C, H, W)), a stem of ``stem_width`` channels, one block per entry of ``widths`` with the
    stride of ``strides`` (1 or 2), attention pooled to at most ``max_tokens`` tokens.

    The default is the seed's CIFAR network (3 input channels, stem 32, widths 64-64-128-128-
    256-256, strides 2-1-2-1-2-1)."""

    dims: int = setting(2, one_of(1, 2))
    in_channels: int = setting(3, ints(1))
    num_classes: int = setting(10, ints(2))
    stem_width: int = setting(32, ints(1))
    widths: tuple = setting((64, 64, 128, 128, 256, 256),
                            int_list(1, allow_empty=False, as_tuple=True))
    strides: tuple = setting((2, 1, 2, 1, 2, 1), _strides)
    max_tokens: int = setting(64, ints(1))

    def check(self) -> None:
        if len(self.widths) != len(self.strides):
            raise ValueError(f"widths ({len(self.widths)} blocks) and strides "
                             f"({len(self.strides)}) must have the same length")
