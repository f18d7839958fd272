"""What every Triton kernel family of morpho_kernels shares: the interpreter switch, the launch
lock, the dtype flags of the kernels' tl.dot, and the device guard of a launch.

Kernel modules (masked_linear.py, block_sparse.py) import these names; none imports another
kernel module.
"""

from __future__ import annotations

import contextlib
import os
import threading

import torch

__all__ = ["INTERPRET", "LAUNCH_LOCK", "dtype_flags", "on_device", "tf32_enabled"]

# TRITON_INTERPRET=1 runs the kernels on CPU tensors (tests): one config per autotuned kernel,
# bf16 / fp16 upcast before tl.dot (DESIGN.md, "Testing Triton kernels without a GPU").
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Triton's autotuner keeps per-call state on the shared kernel object (its arguments while it
# tunes, its choice in `best_config`): every autotuned launch of every family takes this lock,
# so threads launching at once (one autograd thread per device) do not mix them up.
LAUNCH_LOCK = threading.Lock()


def tf32_enabled() -> bool:
    """Whether torch's fp32 matmuls may use TF32 (``torch.backends.cuda.matmul``)."""
    # torch >= 2.9 has the fp32_precision API, and reading the legacy allow_tf32 flag after a
    # user set the new one raises ("mix of the legacy and new APIs").
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)
    if precision is not None:
        return precision == "tf32"
    return bool(matmul.allow_tf32)


def dtype_flags(dtype: torch.dtype) -> dict:
    """The constexprs ``UPCAST``, ``IS_FP32`` and ``PRECISION`` a kernel's tl.dot takes for
    operands of ``dtype``."""
    is_fp32 = dtype == torch.float32
    # fp32 follows torch's matmul setting so results match F.linear (IEEE unless TF32 is on).
    tf32 = is_fp32 and not INTERPRET and tf32_enabled()
    return {
        "UPCAST": INTERPRET and not is_fp32,  # the interpreter's low-precision dot is wrong
        "IS_FP32": is_fp32,
        "PRECISION": "tf32" if tf32 else "ieee",
    }


def on_device(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensor's (a no-op on CPU)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
