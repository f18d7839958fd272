"""morpho_kernels.checks: what each helper accepts and returns (normalised), what it rejects and
with which error (TypeError: wrong type, ValueError: right type, wrong value) and message
("<name> must be <what>, got <value>"). Examples first, then properties (hypothesis, when
installed)."""

import math
import re
from fractions import Fraction

import numpy as np
import pytest
import torch

from morpho_kernels.checks import (
    check_bool,
    check_choice,
    check_fraction,
    check_instance,
    check_int,
    check_int_list,
    check_real,
    is_int,
    is_real,
)

NAN, INF = float("nan"), float("inf")
NUMPY_INTS = [np.int8(3), np.int16(3), np.int32(3), np.int64(3), np.uint8(3), np.uint64(3)]
NUMPY_FLOATS = [np.float16(0.5), np.float32(0.5), np.float64(0.5)]
NOT_NUMBERS = ["1", b"1", None, [1], (1,), {1: 1}, object(), 1j, torch.tensor(1),
               torch.tensor(1.0), np.array([1]), np.bool_(True)]


def raises(exc, name: str, what: str, got):
    """pytest.raises matching the whole message: "<name> must be <what>, got <repr(got)>"."""
    return pytest.raises(exc, match=f"^{re.escape(f'{name} must be {what}, got {got!r}')}$")


# ----------------------------------------------------------------------------- is_int, is_real


@pytest.mark.parametrize("v", [0, 1, -7, 10**30, *NUMPY_INTS])
def test_is_int_accepts_python_and_numpy_ints(v):
    assert is_int(v)


@pytest.mark.parametrize("v", [True, False, np.bool_(False), 1.0, np.float32(1), Fraction(2, 1),
                               *NOT_NUMBERS])
def test_is_int_rejects_bools_floats_and_non_numbers(v):
    assert not is_int(v)


@pytest.mark.parametrize("v", [0, -3, 0.5, -1e300, 5e-324, 10**300, Fraction(1, 3), *NUMPY_INTS,
                               *NUMPY_FLOATS])
def test_is_real_accepts_finite_numbers(v):
    assert is_real(v)


@pytest.mark.parametrize("v", [True, False, NAN, INF, -INF, np.float32("nan"), np.float64("inf"),
                               10**400, -(10**400), *NOT_NUMBERS])
def test_is_real_rejects_bools_non_finite_and_non_numbers(v):
    assert not is_real(v)


# ----------------------------------------------------------------------------- check_int


@pytest.mark.parametrize("v", [0, 5, -5, 10**30, *NUMPY_INTS])
def test_check_int_returns_a_python_int(v):
    out = check_int("n", v)
    assert out == v and type(out) is int


@pytest.mark.parametrize("lo,hi,what", [
    (None, None, "an int"),
    (1, None, "a positive int"),
    (0, None, "a non-negative int"),
    (3, None, "an int >= 3"),
    (-2, None, "an int >= -2"),
    (None, 4, "an int <= 4"),
    (1, 4, "an int in [1, 4]"),
    (0, 0, "an int in [0, 0]"),
])
def test_check_int_bounds_are_closed_and_worded(lo, hi, what):
    if lo is not None:
        assert check_int("n", lo, lo, hi) == lo
        with raises(ValueError, "n", what, lo - 1):
            check_int("n", lo - 1, lo, hi)
    if hi is not None:
        assert check_int("n", hi, lo, hi) == hi
        with raises(ValueError, "n", what, hi + 1):
            check_int("n", hi + 1, lo, hi)
    # a wrong type reads the same (the bounds included)
    with raises(TypeError, "n", what, 2.0):
        check_int("n", 2.0, lo, hi)


@pytest.mark.parametrize("v", [True, False, 3.0, np.float64(3), Fraction(3, 1), "3", *NOT_NUMBERS])
def test_check_int_wrong_type_is_type_error(v):
    with raises(TypeError, "epochs", "a positive int", v):
        check_int("epochs", v, 1)


def test_check_int_numpy_ints_are_bounded_too():
    assert check_int("n", np.int64(4), 1, 4) == 4
    with raises(ValueError, "n", "an int in [1, 4]", np.int64(5)):
        check_int("n", np.int64(5), 1, 4)


def test_check_int_optional():
    assert check_int("seed", None, 0, optional=True) is None
    assert check_int("seed", 3, 0, optional=True) == 3
    with raises(TypeError, "seed", "None or a non-negative int", "3"):
        check_int("seed", "3", 0, optional=True)
    with raises(ValueError, "seed", "None or a non-negative int", -1):
        check_int("seed", -1, 0, optional=True)
    with raises(TypeError, "seed", "a non-negative int", None):
        check_int("seed", None, 0)


# ----------------------------------------------------------------------------- check_real


@pytest.mark.parametrize("v,want", [(0, 0.0), (3, 3.0), (-2.5, -2.5), (Fraction(1, 4), 0.25),
                                    (np.int64(2), 2.0), (np.float32(0.5), 0.5),
                                    (np.float16(0.5), 0.5), (1e308, 1e308)])
def test_check_real_returns_a_python_float(v, want):
    out = check_real("lr", v)
    assert out == want and type(out) is float


@pytest.mark.parametrize("v", [NAN, INF, -INF, np.float32("nan"), np.float64("-inf"), 10**400,
                               -(10**400)])
def test_check_real_non_finite_is_value_error(v):
    with raises(ValueError, "lr", "a finite number", v):
        check_real("lr", v)


@pytest.mark.parametrize("v", [True, False, "0.1", *NOT_NUMBERS])
def test_check_real_wrong_type_is_type_error(v):
    with raises(TypeError, "lr", "a finite number > 0", v):
        check_real("lr", v, 0, lo_open=True)


@pytest.mark.parametrize("lo,hi,lo_open,hi_open,what", [
    (0, None, False, False, "a finite number >= 0"),
    (0, None, True, False, "a finite number > 0"),
    (None, 1, False, False, "a finite number <= 1"),
    (None, 1, False, True, "a finite number < 1"),
    (0, 1, False, False, "a finite number in [0, 1]"),
    (0, 1, True, False, "a finite number in (0, 1]"),
    (0, 1, False, True, "a finite number in [0, 1)"),
    (0, 1, True, True, "a finite number in (0, 1)"),
    (-0.5, 2.5, False, False, "a finite number in [-0.5, 2.5]"),
])
def test_check_real_bounds_open_and_closed(lo, hi, lo_open, hi_open, what):
    kw = {"lo_open": lo_open, "hi_open": hi_open}
    inside = (lo if lo is not None else hi - 1) + (hi - lo if hi is not None and lo is not None
                                                   else 1) / 2
    assert check_real("x", inside, lo, hi, **kw) == inside
    for edge, is_open in ((lo, lo_open), (hi, hi_open)):
        if edge is None:
            continue
        if is_open:
            with raises(ValueError, "x", what, edge):
                check_real("x", edge, lo, hi, **kw)
        else:
            assert check_real("x", edge, lo, hi, **kw) == edge
    if lo is not None:
        with raises(ValueError, "x", what, lo - 1):
            check_real("x", lo - 1, lo, hi, **kw)
    if hi is not None:
        with raises(ValueError, "x", what, hi + 1):
            check_real("x", hi + 1, lo, hi, **kw)
    with raises(ValueError, "x", what, NAN):
        check_real("x", NAN, lo, hi, **kw)


def test_check_real_optional():
    assert check_real("clip", None, 0, optional=True) is None
    assert check_real("clip", 1, 0, optional=True) == 1.0
    with raises(ValueError, "clip", "None or a finite number >= 0", -1):
        check_real("clip", -1, 0, optional=True)
    with raises(TypeError, "clip", "None or a finite number >= 0", "1"):
        check_real("clip", "1", 0, optional=True)
    with raises(TypeError, "clip", "a finite number >= 0", None):
        check_real("clip", None, 0)


def test_check_real_allow_inf_lets_infinities_through_never_nan():
    assert check_real("low", -INF, allow_inf=True) == -INF
    assert check_real("high", INF, allow_inf=True) == INF
    assert check_real("high", np.float32("inf"), allow_inf=True) == INF
    assert check_real("high", 10**400, allow_inf=True) == INF  # beyond the float range
    assert check_real("high", 2, allow_inf=True) == 2.0
    with raises(ValueError, "low", "a number (not NaN)", NAN):
        check_real("low", NAN, allow_inf=True)
    # the bounds still hold for infinities
    assert check_real("t", INF, 0, allow_inf=True) == INF
    with raises(ValueError, "t", "a number (not NaN) >= 0", -INF):
        check_real("t", -INF, 0, allow_inf=True)
    with raises(ValueError, "t", "a number (not NaN) in [0, 1]", INF):
        check_real("t", INF, 0, 1, allow_inf=True)
    with raises(TypeError, "low", "a number (not NaN)", True):
        check_real("low", True, allow_inf=True)


# ----------------------------------------------------------------------------- check_fraction


def test_check_fraction_unit_interval_closed_by_default():
    assert check_fraction("p", 0) == 0.0 and check_fraction("p", 1) == 1.0
    assert type(check_fraction("p", np.float32(0.25))) is float
    with raises(ValueError, "p", "a finite number in [0, 1]", 1.5):
        check_fraction("p", 1.5)
    with raises(ValueError, "p", "a finite number in [0, 1]", -0.0001):
        check_fraction("p", -0.0001)
    with raises(TypeError, "p", "a finite number in [0, 1]", "0.5"):
        check_fraction("p", "0.5")
    with raises(TypeError, "p", "a finite number in [0, 1]", True):
        check_fraction("p", True)


def test_check_fraction_open_ends_and_optional():
    with raises(ValueError, "dropout", "a finite number in [0, 1)", 1):
        check_fraction("dropout", 1, hi_open=True)
    with raises(ValueError, "density", "a finite number in (0, 1]", 0):
        check_fraction("density", 0, lo_open=True)
    with raises(ValueError, "q", "a finite number in (0, 1)", 0.0):
        check_fraction("q", 0.0, lo_open=True, hi_open=True)
    assert check_fraction("q", 0.5, lo_open=True, hi_open=True) == 0.5
    assert check_fraction("q", None, optional=True) is None
    with raises(ValueError, "q", "None or a finite number in [0, 1]", NAN):
        check_fraction("q", NAN, optional=True)


# ----------------------------------------------------------------------------- check_choice


def test_check_choice_returns_the_value_and_lists_the_choices():
    assert check_choice("mode", "block", ("element", "block")) == "block"
    assert check_choice("b", np.int64(32), (16, 32)) == 32
    assert check_choice("mode", "a", (c for c in "ab")) == "a"  # any iterable, read once
    assert check_choice("flag", None, (None, "auto")) is None
    with raises(ValueError, "mode", "one of ('element', 'block')", "Block"):
        check_choice("mode", "Block", ["element", "block"])


@pytest.mark.parametrize("v,choices", [
    (True, (1, 2)),  # True == 1 to Python, never to us
    (False, (0, 1)),
    (1, (True, False)),
    (np.bool_(True), (1, 2)),
    ([1], (1, 2)),  # unhashable
    (np.array([1, 2]), (1, 2)),  # no single truth value
    ({"a": 1}, ("a",)),
])
def test_check_choice_rejects_lookalikes_with_value_error(v, choices):
    with pytest.raises(ValueError, match="^x must be one of "):
        check_choice("x", v, choices)


def test_check_choice_bools_match_bools():
    assert check_choice("x", True, (True, False, "auto")) is True
    assert check_choice("x", False, (False, 0)) is False
    v = np.bool_(False)
    assert check_choice("x", v, (True, False)) is v
    with pytest.raises(ValueError, match=r"^x must be one of \(0, 'auto'\), got False$"):
        check_choice("x", False, (0, "auto"))


# ----------------------------------------------------------------------------- check_bool


def test_check_bool():
    assert check_bool("bias", True) is True and check_bool("bias", False) is False
    assert check_bool("bias", np.bool_(True)) is True  # normalised to a Python bool
    assert check_bool("bias", np.array([1, 2]).all()) is True
    for v in (1, 0, 1.0, "True", None, torch.tensor(True), [True]):
        with raises(TypeError, "bias", "a bool", v):
            check_bool("bias", v)


# ----------------------------------------------------------------------------- check_instance


def test_check_instance():
    t = torch.zeros(1)
    assert check_instance("x", t, torch.Tensor) is t
    assert check_instance("x", 3, (int, str)) == 3
    assert check_instance("x", None, torch.Tensor, optional=True) is None
    with pytest.raises(TypeError, match="^x must be a Tensor, got list$"):
        check_instance("x", [1.0], torch.Tensor)
    with pytest.raises(TypeError, match="^x must be an int or str, got float$"):
        check_instance("x", 1.0, (int, str))
    with pytest.raises(TypeError, match="^x must be None or a Tensor, got int$"):
        check_instance("x", 1, torch.Tensor, optional=True)
    with pytest.raises(TypeError, match="^x must be a Tensor, got NoneType$"):
        check_instance("x", None, torch.Tensor)


# ----------------------------------------------------------------------------- check_int_list


def test_check_int_list_normalises_to_a_new_list_or_tuple():
    v = [64, np.int64(32)]
    out = check_int_list("hidden", v)
    assert out == [64, 32] and out is not v and all(type(h) is int for h in out)
    assert check_int_list("hidden", (1, 2), as_tuple=True) == (1, 2)
    assert check_int_list("hidden", []) == []
    assert check_int_list("pad", [0, 3], lo=0) == [0, 3]
    assert check_int_list("k", [2, 5], lo=2, length=2) == [2, 5]


@pytest.mark.parametrize("v", [64, "64", None, {64}, np.array([64]), [64, 1.5], [64, True],
                               [64, "2"], [None]])
def test_check_int_list_wrong_type_is_type_error(v):
    with raises(TypeError, "hidden", "a list of positive ints", v):
        check_int_list("hidden", v)


def test_check_int_list_wrong_values():
    with raises(ValueError, "hidden", "a list of positive ints", [64, 0]):
        check_int_list("hidden", [64, 0])
    with raises(ValueError, "pad", "a list of non-negative ints", (1, -1)):
        check_int_list("pad", (1, -1), lo=0)
    with raises(ValueError, "k", "a list of ints >= 2", [1]):
        check_int_list("k", [1], lo=2)
    with pytest.raises(ValueError, match=re.escape("kernel must have 2 entries, got 3: [3, 3, 3]")):
        check_int_list("kernel", [3, 3, 3], length=2)
    with pytest.raises(ValueError, match="^hidden must not be empty$"):
        check_int_list("hidden", (), allow_empty=False)


# ----------------------------------------------------------------------------- properties

try:
    from hypothesis import given
    from hypothesis import strategies as st
except ImportError:  # the GPU machine has no hypothesis and no network: examples only there
    given = None

if given is None:

    def test_properties_need_hypothesis():
        pytest.skip("hypothesis is not installed (pip install hypothesis)")

else:
    names = st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True)
    bounds = st.one_of(st.none(), st.integers(-1000, 1000))
    not_numbers = st.one_of(st.text(max_size=5), st.none(), st.booleans(),
                            st.lists(st.integers(), max_size=2), st.binary(max_size=3),
                            st.complex_numbers(allow_nan=False))

    @given(name=names, v=st.integers(-(10**40), 10**40), lo=bounds, hi=bounds)
    def test_check_int_accepts_exactly_the_ints_within_bounds(name, v, lo, hi):
        inside = (lo is None or v >= lo) and (hi is None or v <= hi)
        if inside:
            out = check_int(name, v, lo, hi)
            assert out == v and type(out) is int
        else:
            with pytest.raises(ValueError) as info:
                check_int(name, v, lo, hi)
            assert str(info.value).startswith(f"{name} must be ")
            assert str(info.value).endswith(f", got {v!r}")

    @given(v=st.one_of(st.floats(), not_numbers), lo=bounds)
    def test_check_int_rejects_every_non_int_with_type_error(v, lo):
        with pytest.raises(TypeError) as info:
            check_int("n", v, lo)
        assert str(info.value).endswith(f", got {v!r}")

    @given(name=names, v=st.floats(), lo=st.one_of(st.none(), st.floats(-1e6, 1e6)),
           hi=st.one_of(st.none(), st.floats(-1e6, 1e6)), lo_open=st.booleans(),
           hi_open=st.booleans(), allow_inf=st.booleans())
    def test_check_real_accepts_exactly_the_floats_within_bounds(name, v, lo, hi, lo_open,
                                                                  hi_open, allow_inf):
        ok = (math.isfinite(v) or (allow_inf and math.isinf(v)))
        ok = ok and (lo is None or (v > lo if lo_open else v >= lo))
        ok = ok and (hi is None or (v < hi if hi_open else v <= hi))
        kw = {"lo_open": lo_open, "hi_open": hi_open, "allow_inf": allow_inf}
        if ok:
            out = check_real(name, v, lo, hi, **kw)
            assert out == v and type(out) is float
        else:  # a float of the wrong value: never a TypeError
            with pytest.raises(ValueError) as info:
                check_real(name, v, lo, hi, **kw)
            msg = str(info.value)
            assert msg.startswith(f"{name} must be ") and msg.endswith(f", got {v!r}")

    @given(v=st.integers())
    def test_check_real_takes_ints_within_the_float_range(v):
        try:
            f = float(v)
        except OverflowError:
            with pytest.raises(ValueError):
                check_real("x", v)
        else:
            assert check_real("x", v) == f

    @given(name=names, v=not_numbers, optional=st.booleans())
    def test_check_real_rejects_every_non_number_with_type_error(name, v, optional):
        if v is None and optional:
            assert check_real(name, v, optional=True) is None
            return
        with pytest.raises(TypeError) as info:
            check_real(name, v, optional=optional)
        assert str(info.value) == (f"{name} must be {'None or ' if optional else ''}"
                                   f"a finite number, got {v!r}")

    @given(v=st.lists(st.integers(-5, 10**6), max_size=6), lo=st.integers(-3, 3),
           as_tuple=st.booleans())
    def test_check_int_list_accepts_exactly_lists_with_entries_above_lo(v, lo, as_tuple):
        if all(h >= lo for h in v):
            out = check_int_list("h", v, lo, as_tuple=as_tuple)
            assert list(out) == v and isinstance(out, tuple if as_tuple else list)
        else:
            with pytest.raises(ValueError, match=f", got {re.escape(repr(v))}$"):
                check_int_list("h", v, lo)

    @given(choices=st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=2)), min_size=1,
                            max_size=5, unique=True),
           v=st.one_of(st.integers(-5, 5), st.text(max_size=2), st.booleans(), st.floats()))
    def test_check_choice_accepts_exactly_the_choices(choices, v):
        if any(type(v) is type(c) and v == c for c in choices):
            assert check_choice("c", v, choices) == v
        elif isinstance(v, float) and v in choices:  # 2.0 == 2: equal numbers are one choice
            assert check_choice("c", v, choices) == v
        else:
            with pytest.raises(ValueError, match=re.escape(f"got {v!r}")):
                check_choice("c", v, choices)
