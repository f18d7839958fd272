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


# ----------------------------------------------------------------------------- shared checks

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_reference(spec: CallSpec) -> Optional[str]:
    """The pure-PyTorch reference serves every floating dtype on every device."""
    return None if spec.dtype in FLOAT_DTYPES else f"dtype {spec.dtype} is not floating"


def check_ext(spec: CallSpec, *, op: Optional[str] = None, cuda: bool = True,
              dtypes: Optional[tuple] = FLOAT_DTYPES,
              on_ready: Optional[Callable[[], None]] = None) -> Optional[str]:
    """Whether the C++/CUDA extension serves a call: loaded (and holding `morpho::<op>` when
    named), CUDA kernels compiled in for CUDA tensors (`cuda=False`: the op has none), dtype in
    `dtypes` (None: any). `on_ready` runs once the extension is known to serve (e.g. to register
    the fake kernels of its ops)."""
    from . import _ext  # _ext imports nothing of this module; late import keeps startup light

    st = _ext.status()
    if not st.loaded:
        return st.reason
    if op is not None and not hasattr(torch.ops.morpho, op):
        return f"extension built without morpho::{op} (rebuild: pip install -e .)"
    if spec.device.type == "cuda":
        if not cuda:
            return "the extension's kernels of this op are CPU-only"
        if not st.with_cuda:
            return "extension built without CUDA kernels"
    elif spec.device.type != "cpu":
        return f"device type {spec.device.type} is not supported"
    if dtypes is not None and spec.dtype not in dtypes:
        return f"dtype {spec.dtype} not supported"
    if on_ready is not None:
        on_ready()
    return None


def check_triton(spec: CallSpec, kernels, import_error: Optional[str]) -> Optional[str]:
    """Whether a Triton kernel module (None when it failed to import) serves a call: CUDA
    tensors in fp16/bf16/fp32; CPU tensors only under TRITON_INTERPRET=1 with
    MORPHO_BACKEND=triton (the interpreter is a test mode, never chosen automatically)."""
    if kernels is None:
        return import_error
    if spec.device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available"
    elif spec.device.type == "cpu":
        if not kernels.INTERPRET or forced_backend() != "triton":
            return ("CPU tensors run Triton only under TRITON_INTERPRET=1 with "
                    "MORPHO_BACKEND=triton (a test mode)")
    else:
        return f"device type {spec.device.type} is not supported"
    if spec.dtype not in TRITON_DTYPES:
        return f"dtype {spec.dtype} not supported (fp16, bf16, fp32)"
    return None
