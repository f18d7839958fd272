"""morphonet.config: the one config style (validated fields, normalisation, round trips, unknown
keys rejected by name), and every config of the package on it."""

import dataclasses
import json

import numpy as np
import pytest

from morphonet.config import Config, flag, fraction, int_list, ints, one_of, reals, setting
from morphonet.growth import (
    ExtremaConfig,
    GrowExperimentConfig,
    NetworkConfig,
    RouterConfig,
    SchedulerConfig,
)
from morphonet.masks import MorphoConfig
from morphonet.masks.compare import Case


@dataclasses.dataclass
class Toy(Config):
    width: int = setting(8, ints(1))
    rate: float = setting(0.1, reals(0, lo_open=True))
    keep: float = setting(0.5, fraction())
    kind: str = setting("a", one_of("a", "b"))
    on: bool = setting(True, flag())
    sizes: list = setting(check=int_list(1), factory=lambda: [4, 2])
    pair: tuple = setting((1, 2), int_list(0, length=2, as_tuple=True))
    note: str = setting("free")  # no check

    def check(self):
        if self.pair[0] > self.pair[1]:
            raise ValueError(f"pair must be increasing, got {self.pair}")


def test_fields_are_checked_and_normalised():
    t = Toy(width=np.int64(3), rate=1, sizes=(5, np.int32(6)), pair=[0, 4])
    assert type(t.width) is int and t.width == 3
    assert type(t.rate) is float and t.rate == 1.0
    assert t.sizes == [5, 6] and all(type(s) is int for s in t.sizes)
    assert t.pair == (0, 4)


@pytest.mark.parametrize("kw, err, match", [
    (dict(width=0), ValueError, r"^width must be a positive int, got 0$"),
    (dict(width="3"), TypeError, r"^width must be a positive int, got '3'$"),
    (dict(width=True), TypeError, "width"),
    (dict(rate=0.0), ValueError, r"^rate must be a finite number > 0, got 0.0$"),
    (dict(rate=float("nan")), ValueError, "rate"),
    (dict(keep=1.5), ValueError, r"keep must be a finite number in \[0, 1\]"),
    (dict(kind="c"), ValueError, r"kind must be one of \('a', 'b'\), got 'c'"),
    (dict(on=1), TypeError, "on must be a bool"),
    (dict(sizes=[4, 0]), ValueError, "sizes"),
    (dict(pair=(1, 2, 3)), ValueError, "pair must have 2 entries"),
    (dict(pair=(3, 1)), ValueError, "pair must be increasing"),  # the rule across fields
])
def test_bad_values_raise_naming_the_field(kw, err, match):
    with pytest.raises(err, match=match):
        Toy(**kw)


def test_round_trip_unknown_keys_replace_and_validate():
    t = Toy(width=5, sizes=[3], pair=(2, 2))
    d = t.to_dict()
    assert json.loads(json.dumps(d)) == d and d["pair"] == [2, 2]  # plain JSON values
    assert Toy.from_dict(d) == t
    assert Toy.from_dict({"width": 7}).width == 7  # missing keys take their defaults
    with pytest.raises(ValueError, match=r"unknown Toy fields: \['widht'\] \(known: width"):
        Toy.from_dict({"widht": 7})
    with pytest.raises(TypeError, match="expects a dict"):
        Toy.from_dict([("width", 7)])
    u = t.replace(width=9)
    assert u.width == 9 and t.width == 5
    with pytest.raises(ValueError, match="width"):
        t.replace(width=-1)
    with pytest.raises(ValueError, match="unknown Toy fields"):
        t.replace(widht=9)
    t.width = 0  # attributes are plain: the next validate() catches a bad change
    with pytest.raises(ValueError, match="width"):
        t.validate()


CONFIGS = [MorphoConfig, SchedulerConfig, ExtremaConfig, RouterConfig, NetworkConfig,
           GrowExperimentConfig, Case]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_config_is_a_config_and_round_trips_through_json(cls):
    assert issubclass(cls, Config)
    cfg = cls()
    d = json.loads(json.dumps(cfg.to_dict()))
    assert cls.from_dict(d) == cfg
    with pytest.raises(ValueError, match="no_such_field"):
        cls.from_dict({**d, "no_such_field": 1})
    # every field of every config is checked by its setting (or is free text / a mapping
    # checked by the config's own rule)
    for f in dataclasses.fields(cls):
        assert "check" in f.metadata or f.name in {"out_dir", "config"}, (cls, f.name)
