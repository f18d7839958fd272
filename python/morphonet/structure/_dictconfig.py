"""`DictConfig`: the to_dict / from_dict pair shared by the Structure Net settings dataclasses."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, TypeVar

_C = TypeVar("_C", bound="DictConfig")


class DictConfig:
    """Mixin for a settings dataclass: `to_dict` and its inverse `from_dict`."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields."""
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[_C], d: dict[str, Any]) -> _C:
        """Inverse of to_dict; unknown keys raise TypeError, bad values the class's
        ValueError."""
        return cls(**d)
