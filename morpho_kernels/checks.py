"""The common argument checks of morpho, written once so that every message reads the same.

Every public entry point of ``morpho_kernels`` and ``morphonet`` (functions, layer constructors,
configs) validates its arguments with these helpers. Each returns the value normalised (an
``int``, a ``float``, a ``list``, a ``tuple``) or raises an error that names the argument and
shows what it got:

- a value of the wrong type (``epochs="10"``, ``lr=None``, ``hidden=(64, 1.5)``) raises
  ``TypeError``; a value of the right type outside its range (``epochs=0``, ``lr=float("nan")``,
  a choice not offered) raises ``ValueError``. Both messages read the same:
  "epochs must be a positive int, got '10'".

A ``bool`` is never accepted as a number (``True`` is an ``int`` to Python, never to us). NumPy
scalars count as what they hold: ``np.int64`` is an int, ``np.float32`` a number, ``np.bool_`` a
bool.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, Optional

import numpy as np

__all__ = ["check_bool", "check_choice", "check_fraction", "check_instance", "check_int",
           "check_int_list", "check_real", "is_int", "is_real"]


def is_int(v: Any) -> bool:
    """True for Python and NumPy integers, False for ``bool``."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v: Any) -> bool:
    """True for finite real numbers (ints included), False for ``bool``, NaN and ±inf (and an
    int too large for a float)."""
    return _is_number(v) and math.isfinite(_as_float(v))


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _as_float(v: numbers.Real) -> float:
    try:
        return float(v)
    except OverflowError:  # an int beyond the float range (10**400): ±inf as a float
        return math.inf if v > 0 else -math.inf


def _int_words(lo: Optional[int], hi: Optional[int]) -> str:
    if lo is not None and hi is not None:
        return f"an int in [{lo}, {hi}]"
    if lo == 1:
        return "a positive int"
    if lo == 0:
        return "a non-negative int"
    if lo is not None:
        return f"an int >= {lo}"
    if hi is not None:
        return f"an int <= {hi}"
    return "an int"


def check_int(name: str, v: Any, lo: Optional[int] = None, hi: Optional[int] = None, *,
              optional: bool = False) -> Optional[int]:
    """``v`` as an ``int`` in ``[lo, hi]`` (either bound may be None); ``None`` passes when
    ``optional``. ValueError: "epochs must be a positive int, got 0"."""
    if v is None and optional:
        return None
    if not is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        what = _int_words(lo, hi)
        err = ValueError if is_int(v) else TypeError
        raise err(f"{name} must be {'None or ' if optional else ''}{what}, got {v!r}")
    return int(v)


def _real_words(lo, hi, lo_open: bool, hi_open: bool, allow_inf: bool) -> str:
    noun = "a number (not NaN)" if allow_inf else "a finite number"
    if lo is not None and hi is not None:
        return f"{noun} in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{noun} {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{noun} {'<' if hi_open else '<='} {hi}"
    return noun


def check_real(name: str, v: Any, lo: Optional[float] = None, hi: Optional[float] = None, *,
               lo_open: bool = False, hi_open: bool = False, optional: bool = False,
               allow_inf: bool = False) -> Optional[float]:
    """``v`` as a finite ``float`` within the bounds (open with ``lo_open`` / ``hi_open``);
    ``None`` passes when ``optional``; ±inf pass too (within the bounds) when ``allow_inf``
    (e.g. a threshold nothing crosses), NaN never. ValueError: "lr must be a finite number > 0,
    got 0"."""
    if v is None and optional:
        return None
    number = _is_number(v)
    f = _as_float(v) if number else math.nan
    ok = math.isfinite(f) or (allow_inf and math.isinf(f))
    if ok and lo is not None:
        ok = f > lo if lo_open else f >= lo
    if ok and hi is not None:
        ok = f < hi if hi_open else f <= hi
    if not ok:
        what = _real_words(lo, hi, lo_open, hi_open, allow_inf)
        err = ValueError if number else TypeError  # NaN / ±inf: a float of the wrong value
        raise err(f"{name} must be {'None or ' if optional else ''}{what}, got {v!r}")
    return f


def check_fraction(name: str, v: Any, *, lo_open: bool = False, hi_open: bool = False,
                   optional: bool = False) -> Optional[float]:
    """`check_real` on the unit interval: "dropout must be a finite number in [0, 1), got 1"."""
    return check_real(name, v, 0, 1, lo_open=lo_open, hi_open=hi_open, optional=optional)


def check_choice(name: str, v: Any, choices: Iterable[Any]) -> Any:
    """``v`` when it is one of ``choices`` (equal to one, a bool only to a bool); ValueError
    listing them otherwise."""
    choices = tuple(choices)
    try:
        ok = any(_same_choice(v, c) for c in choices)
    except (TypeError, ValueError):  # incomparable values, arrays without one truth value
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {choices}, got {v!r}")
    return v


_BOOLS = (bool, np.bool_)


def _same_choice(v: Any, c: Any) -> bool:
    if isinstance(v, _BOOLS) or isinstance(c, _BOOLS):  # True == 1 to Python, never to us
        return isinstance(v, _BOOLS) and isinstance(c, _BOOLS) and bool(v) is bool(c)
    return v is c or bool(v == c)


def check_bool(name: str, v: Any) -> bool:
    """``v`` as a ``bool`` when it is one (a NumPy bool included); TypeError otherwise (``1`` is
    not ``True`` here)."""
    if not isinstance(v, _BOOLS):
        raise TypeError(f"{name} must be a bool, got {v!r}")
    return bool(v)


def check_instance(name: str, v: Any, types: type | tuple[type, ...], *,
                   optional: bool = False) -> Any:
    """``v`` when it is an instance of ``types`` (or None when ``optional``); TypeError naming
    the expected and the given type otherwise."""
    if v is None and optional:
        return None
    if not isinstance(v, types):
        names = (" or ".join(t.__name__ for t in types) if isinstance(types, tuple)
                 else types.__name__)
        article = "an" if names[0].lower() in "aeiou" else "a"
        raise TypeError(f"{name} must be {'None or ' if optional else ''}{article} {names}, got "
                        f"{type(v).__name__}")
    return v


def check_int_list(name: str, v: Any, lo: int = 1, *, allow_empty: bool = True,
                   length: Optional[int] = None, as_tuple: bool = False) -> list[int] | tuple:
    """``v`` (a list or tuple of ints, each >= ``lo``) as a new list (or tuple with
    ``as_tuple``); ``length`` fixes the number of entries. TypeError for a non-sequence or a
    non-int entry, ValueError for an entry below ``lo`` or a wrong length."""
    words = {1: "positive ints", 0: "non-negative ints"}.get(lo, f"ints >= {lo}")
    if not isinstance(v, (list, tuple)) or not all(is_int(h) for h in v):
        raise TypeError(f"{name} must be a list of {words}, got {v!r}")
    if not all(h >= lo for h in v):
        raise ValueError(f"{name} must be a list of {words}, got {v!r}")
    if length is not None and len(v) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(v)}: {v!r}")
    if not v and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    out = [int(h) for h in v]
    return tuple(out) if as_tuple else out
