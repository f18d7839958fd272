"""Per-call backend choice that explains itself (DESIGN.md, convention 4).

Each op owns a `Dispatcher` with its backends in order of preference. A backend's `check`
returns None when it can serve a call, otherwise the reason it cannot. The environment variable
MORPHO_BACKEND (`triton`, `ext`, `reference`), read at every call, forces one; a forced backend
that cannot serve the call raises `BackendUnavailableError` listing every backend's reason.
Without it, the first backend that can serve is used; the reference serving a CUDA tensor (the
slow path on a GPU) is announced with a warning once per reason, never silent.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import torch

BACKEND_NAMES = ("triton", "ext", "reference")
ENV_VAR = "MORPHO_BACKEND"


class BackendUnavailableError(RuntimeError):
    """A forced backend (MORPHO_BACKEND) cannot serve this call."""


@dataclass(frozen=True)
class CallSpec:
    """What a backend needs to know to decide whether it can serve a call."""

    device: torch.device
    dtype: torch.dtype
    sizes: tuple = ()  # named sizes, e.g. (("tokens", 8192), ("n", 4096))

    def size(self, name: str, default: int = 0) -> int:
        return dict(self.sizes).get(name, default)


@dataclass(frozen=True)
class Backend:
    name: str
    check: Callable[[CallSpec], Optional[str]]


def forced_backend() -> Optional[str]:
    """The backend forced through MORPHO_BACKEND, or None; rejects unknown names."""
    raw = os.environ.get(ENV_VAR, "").strip().lower()
    if not raw or raw == "auto":
        return None
    if raw not in BACKEND_NAMES:
        raise ValueError(f"{ENV_VAR}={raw!r} is not one of {', '.join(BACKEND_NAMES)} or 'auto'")
    return raw


class Dispatcher:
    """Chooses a backend for one op; remembers the last choice for inspection."""

    def __init__(self, op: str, backends: Sequence[Backend]):
        self.op = op
        self.backends = {b.name: b for b in backends}
        self.last: Optional[str] = None
        self._warned: set = set()

    def reasons(self, spec: CallSpec) -> dict:
        """Backend name -> None (can serve) or the reason it cannot."""
        return {name: b.check(spec) for name, b in self.backends.items()}

    def choose(self, spec: CallSpec) -> str:
        forced = forced_backend()
        if forced is not None:
            reason = self.backends[forced].check(spec) if forced in self.backends else (
                f"op {self.op} has no {forced} backend"
            )
            if reason is not None:
                raise BackendUnavailableError(
                    f"{ENV_VAR}={forced} cannot serve morpho::{self.op} on "
                    f"{spec.device.type}/{str(spec.dtype).replace('torch.', '')}:\n"
                    + self.explain(spec)
                )
            self.last = forced
            return forced
        # First backend that serves wins; later checks are not evaluated (hot path).
        for name, b in self.backends.items():
            if b.check(spec) is None:
                if name == "reference" and spec.device.type == "cuda":
                    self._warn_slow(spec, self.reasons(spec))
                self.last = name
                return name
        raise BackendUnavailableError(
            f"no backend can serve morpho::{self.op}:\n" + self.explain(spec))

    def explain(self, spec: CallSpec) -> str:
        lines = []
        for name, reason in self.reasons(spec).items():
            state = "available" if reason is None else "unavailable: " + reason
            lines.append(f"  {name:<9} {state}")
        return "\n".join(lines)

    def _warn_slow(self, spec: CallSpec, all_reasons: dict) -> None:
        key = tuple(sorted((k, v) for k, v in all_reasons.items() if v))
        if key in self._warned:
            return
        self._warned.add(key)
        warnings.warn(
            f"morpho::{self.op} runs on the pure-PyTorch reference for a CUDA tensor "
            f"(slow path):\n{self.explain(spec)}",
            RuntimeWarning,
            stacklevel=4,
        )
