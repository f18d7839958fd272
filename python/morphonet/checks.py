"""The checks every morphonet system uses: `morpho_kernels.checks` (numbers, choices, flags,
lists: one message form everywhere) plus the device rule of the configs.

Import from here inside morphonet; the helpers are the very functions of
`morpho_kernels.checks` (written once, re-exported)."""

from __future__ import annotations

from typing import Any

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

__all__ = ["check_bool", "check_choice", "check_device", "check_fraction", "check_instance",
           "check_int", "check_int_list", "check_real", "is_int", "is_real", "resolve_device"]


def check_device(name: str, v: Any) -> str:
    """A device setting: "auto" (CUDA when available, else the CPU), "cpu", "cuda" or
    "cuda:N"."""
    if not isinstance(v, str):
        raise TypeError(f"{name} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {v!r}")
    if not (v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit())):
        raise ValueError(f"{name} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {v!r}")
    return v


def resolve_device(device: str) -> torch.device:
    """"auto" → CUDA when available, else CPU; anything else as given (checked: CUDA must be
    available when asked for)."""
    check_device("device", device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available")
    return dev
