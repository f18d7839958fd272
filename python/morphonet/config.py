"""One config style for every morphonet system: a validated dataclass with ``to_dict`` /
``from_dict``.

A config subclasses `Config` and is a ``@dataclass`` whose fields are declared with `setting`,
each with the check that validates it (built from `morphonet.checks`):

    @dataclass
    class SchedulerConfig(Config):
        window_steps: int = setting(10, ints(1))
        spike_threshold: float = setting(0.5, reals(0, lo_open=True))
        phase_epochs: tuple = setting((50, 100), int_list(0, length=2, as_tuple=True))

        def check(self):            # rules that involve several fields
            if self.phase_epochs[0] > self.phase_epochs[1]: raise ValueError(...)

Construction validates every field (and normalises it: numbers to ``int`` / ``float``,
sequences to the declared ``list`` / ``tuple``), so an invalid config never exists;
`Config.replace` returns a validated copy; `Config.to_dict` gives plain JSON-safe values;
`Config.from_dict` rejects unknown keys by name (a typo would otherwise be lost silently).
Fields are plain attributes: a change made after construction is checked by the next
`Config.validate` (the trainers call it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from torch import nn

from .checks import (
    check_bool,
    check_choice,
    check_fraction,
    check_int,
    check_int_list,
    check_real,
)

__all__ = ["ACTIVATIONS", "Config", "flag", "fraction", "int_dict", "int_list", "ints", "names",
           "one_of", "real_list", "reals", "setting"]

_C = TypeVar("_C", bound="Config")
Check = Callable[[str, Any], Any]

# Every activation a morphonet model can use, by its config name (MorphoNet Pro's models take
# all of them; Structure Net takes those it has extrema rules for,
# growth.extrema.EXTREMA_ACTIVATIONS)
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh,
                                           "sigmoid": nn.Sigmoid}


def setting(default: Any = dataclasses.MISSING, check: Check | None = None, *,
            factory: Callable[[], Any] | None = None) -> Any:
    """A config field with its default (or ``factory`` for a mutable one) and the check that
    validates it: ``check(name, value)`` returns the (normalised) value or raises."""
    meta = {"check": check} if check is not None else {}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ---------------------------------------------------------------------------- check builders


def ints(lo: int | None = None, hi: int | None = None, *, optional: bool = False) -> Check:
    """An int in [lo, hi] (`morpho_kernels.checks.check_int`)."""
    return partial(check_int, lo=lo, hi=hi, optional=optional)


def reals(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
          hi_open: bool = False, optional: bool = False) -> Check:
    """A finite number within the bounds (`check_real`)."""
    return partial(check_real, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open,
                   optional=optional)


def fraction(*, lo_open: bool = False, hi_open: bool = False, optional: bool = False) -> Check:
    """A number in the unit interval (`check_fraction`)."""
    return partial(check_fraction, lo_open=lo_open, hi_open=hi_open, optional=optional)


def one_of(*choices: Any) -> Check:
    """One of ``choices`` (`check_choice`)."""
    return partial(check_choice, choices=choices)


def flag() -> Check:
    """A bool (`check_bool`)."""
    return check_bool


def int_list(lo: int = 1, *, allow_empty: bool = True, length: int | None = None,
             as_tuple: bool = False) -> Check:
    """A list (or tuple) of ints >= lo (`check_int_list`)."""
    return partial(check_int_list, lo=lo, allow_empty=allow_empty, length=length,
                   as_tuple=as_tuple)


def names(*allowed: str) -> Check:
    """A non-empty list of distinct names from ``allowed`` (kept in the given order, as a
    tuple), e.g. the datasets or methods of an experiment."""
    def check(name: str, v: Any) -> tuple:
        if isinstance(v, str) or not isinstance(v, (list, tuple)):
            raise TypeError(f"{name} must be a list of names from {allowed}, got {v!r}")
        bad = [x for x in v if x not in allowed]
        if bad or not v or len(set(v)) != len(v):
            raise ValueError(f"{name} must be a non-empty list of distinct names from "
                             f"{allowed}, got {list(v)!r}")
        return tuple(v)
    return check


def int_dict(lo: int = 1) -> Check:
    """A dict {name: int ≥ lo} (e.g. epochs per dataset)."""
    def check(name: str, v: Any) -> dict:
        if not isinstance(v, dict):
            raise TypeError(f"{name} must be a dict {{name: int}}, got {v!r}")
        return {k: check_int(f"{name}[{k!r}]", x, lo) for k, x in v.items()}
    return check


def real_list(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
              hi_open: bool = False, allow_empty: bool = False) -> Check:
    """A tuple of numbers, each checked as `reals` checks one."""
    def check(name: str, v: Any) -> tuple:
        if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)):
            raise TypeError(f"{name} must be a list of numbers, got {v!r}")
        if not v and not allow_empty:
            raise ValueError(f"{name} must not be empty")
        return tuple(check_real(f"{name}[{i}]", x, lo, hi, lo_open=lo_open, hi_open=hi_open)
                     for i, x in enumerate(v))
    return check


# ---------------------------------------------------------------------------- the base


def _plain(v: Any) -> Any:
    if isinstance(v, Config):
        return v.to_dict()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


class Config:
    """Base of every morphonet config (see the module docstring). Subclasses are dataclasses;
    they declare fields with `setting` and may override `check` for rules across fields."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self: _C) -> _C:
        """Check (and normalise) every field, then the rules across fields (`check`); raise
        ``TypeError`` / ``ValueError`` naming the field. Returns ``self``."""
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            check = f.metadata.get("check")
            if check is not None:
                setattr(self, f.name, check(f.name, getattr(self, f.name)))
        self.check()
        return self

    def check(self) -> None:
        """Rules that involve several fields (override; the fields are already checked)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values only (lists, dicts, numbers, strings, None): safe for JSON and
        ``torch.load(weights_only=True)``."""
        return {f.name: _plain(getattr(self, f.name))
                for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[_C], d: dict[str, Any]) -> _C:
        """Inverse of `to_dict`. Unknown keys raise ``ValueError`` naming them (and the known
        fields); missing keys take their defaults; values are validated."""
        if not isinstance(d, dict):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {unknown} (known: "
                             f"{', '.join(names)})")
        return cls(**d)

    def replace(self: _C, **changes: Any) -> _C:
        """A validated copy with some fields changed (unknown names rejected)."""
        names = {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown {type(self).__name__} fields: {unknown}")
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]
