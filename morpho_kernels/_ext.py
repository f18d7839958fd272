"""Lazy, failure-proof loading of the compiled extension `morpho_kernels._C`.

Import of `morpho_kernels` never fails because of the extension: it is loaded on first use, and
when it is missing, was built for another torch, or fails to load, `status()` says which
versions were expected and found and every op keeps working through its other backends.
"""

from __future__ import annotations

import importlib
import json
import os
import threading
from dataclasses import dataclass
from typing import Any, Optional

import torch

_BUILD_INFO = os.path.join(os.path.dirname(__file__), "_build_info.json")


@dataclass(frozen=True)
class ExtStatus:
    """Outcome of loading the extension: `module` is None when `reason` says why.

    `openmp` says whether its CPU kernels were compiled with OpenMP, i.e. run on
    ``torch.get_num_threads()`` threads; a build without it (before 2026-11-23, or a compiler
    without OpenMP) runs every CPU kernel on one thread.
    """

    module: Any
    reason: Optional[str]
    built_for_torch: Optional[str]
    with_cuda: bool
    openmp: bool = False

    @property
    def loaded(self) -> bool:
        return self.module is not None


_lock = threading.Lock()
_status: Optional[ExtStatus] = None


def _read_build_info() -> Optional[dict]:
    try:
        with open(_BUILD_INFO) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _load() -> ExtStatus:
    if os.environ.get("MORPHO_DISABLE_EXT", "0") == "1":
        return ExtStatus(None, "disabled by MORPHO_DISABLE_EXT=1", None, False)
    info = _read_build_info()
    built = info.get("torch") if info else None
    # A binary built against another torch can crash on import (ABI), so compare first.
    if built is not None and built != torch.__version__:
        return ExtStatus(
            None,
            f"built for torch {built}, found torch {torch.__version__}: rebuild with "
            "`pip install --no-build-isolation --no-deps -e .`",
            built,
            False,
        )
    try:
        mod = importlib.import_module("morpho_kernels._C")
    except ImportError as exc:
        why = "not built (installed with MORPHO_SKIP_EXT=1?)" if info is None else str(exc)
        return ExtStatus(None, f"extension morpho_kernels._C unavailable: {why}", built, False)
    except OSError as exc:  # e.g. a missing shared library
        return ExtStatus(None, f"extension morpho_kernels._C failed to load: {exc}", built, False)
    found = mod.torch_version()
    if found != torch.__version__:
        return ExtStatus(
            None,
            f"built for torch {found}, found torch {torch.__version__}: rebuild the extension",
            found,
            False,
        )
    _register_fakes()
    openmp = bool(mod.has_openmp()) if hasattr(mod, "has_openmp") else False
    return ExtStatus(mod, None, found, bool(mod.has_cuda()), openmp)


def _register_fakes() -> None:
    """Fake (meta) kernels of the C++ ops, so they trace under torch.compile."""

    @torch.library.register_fake("morpho::masked_weight")
    def _masked_weight_fake(weight, mask_logits, temperature):
        return weight.new_empty(weight.shape)  # the C++ kernels return contiguous tensors

    @torch.library.register_fake("morpho::masked_weight_backward")
    def _masked_weight_backward_fake(grad, weight, mask_logits, temperature):
        return weight.new_empty(weight.shape), weight.new_empty(weight.shape)


def status() -> ExtStatus:
    """Load the extension once (thread-safe) and return what happened."""
    global _status
    if _status is None:
        with _lock:
            if _status is None:
                _status = _load()
    return _status


def ops() -> Any:
    """`torch.ops.morpho` after making sure the extension is loaded; raises if it is not."""
    st = status()
    if not st.loaded:
        raise RuntimeError(f"morpho extension unavailable: {st.reason}")
    return torch.ops.morpho
