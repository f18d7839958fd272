"""`python -m morpho_kernels.info`: versions, devices, and which backend serves each op.

For every op, device and dtype it prints each backend as available or with the reason it is
not, and which backend a call would use now (MORPHO_BACKEND included), so a slow path is never
a surprise.
"""

from __future__ import annotations

import os
import platform
import sys

import torch

from . import _ext
from ._dispatch import ENV_VAR, BackendUnavailableError, CallSpec, forced_backend
from .ops.block_sparse_linear import DISPATCH as _BLOCK_SPARSE_DISPATCH
from .ops.edges import DISPATCH as _INSERT_DISPATCH
from .ops.extrema import DISPATCH as _EXTREMA_DISPATCH
from .ops.masked_linear import DISPATCH as _MASKED_LINEAR_DISPATCH
from .ops.regrow import DISPATCH as _REGROW_DISPATCH
from .ops.sparse_linear import DISPATCH as _SPARSE_LINEAR_DISPATCH

# Every op's dispatcher, by public name.
DISPATCHERS = {"masked_linear": _MASKED_LINEAR_DISPATCH,
               "block_sparse_linear": _BLOCK_SPARSE_DISPATCH,
               "extrema_stats": _EXTREMA_DISPATCH,
               "insert_connections": _INSERT_DISPATCH,
               "sparse_linear": _SPARSE_LINEAR_DISPATCH,
               "regrow": _REGROW_DISPATCH}  # BlockSparseLayout.regrow
_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo; the platform's processor name elsewhere): the
    device name of CPU records."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device | str) -> str:
    """The device's own name (GPU name, or the CPU model) for records and reports."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def _versions() -> list[str]:
    try:
        import triton

        tv = triton.__version__
    except Exception as exc:  # noqa: BLE001 - any failure means "no triton"
        tv = f"unavailable ({type(exc).__name__})"
    st = _ext.status()
    ext = "loaded" if st.loaded else f"not loaded: {st.reason}"
    if st.loaded:
        ext += f" (built for torch {st.built_for_torch}, CUDA kernels: {st.with_cuda})"
        pad = "\n           "
        ext += (f"{pad}CPU kernels on {torch.get_num_threads()} threads (OpenMP)" if st.openmp
                else f"{pad}CPU kernels on ONE thread: built without OpenMP, rebuild with "
                "`pip install --no-build-isolation --no-deps -e .`")
    return [
        f"python     {sys.version.split()[0]}",
        f"torch      {torch.__version__} (CUDA {torch.version.cuda})",
        f"triton     {tv}" + ("  [TRITON_INTERPRET=1]" if os.environ.get("TRITON_INTERPRET") == "1"
                              else ""),
        f"extension  {ext}",
        f"{ENV_VAR}  {os.environ.get(ENV_VAR, '') or 'auto'}",
    ]


def _devices() -> list[torch.device]:
    devs = [torch.device("cpu")]
    if torch.cuda.is_available():
        devs += [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return devs


def report() -> str:
    """The whole report as text."""
    lines = ["morpho_kernels info", *_versions(), "", "devices:"]
    for d in _devices():
        lines.append(f"  {d}: {device_name(d)}")
    if not torch.cuda.is_available():
        lines.append("  cuda: not available")
    lines.append("")
    try:
        forced_backend()
    except ValueError as exc:
        lines.append(f"warning: {exc}")
    for op, disp in DISPATCHERS.items():
        lines.append(f"op {op}:")
        for dev in [*_devices(), *([] if torch.cuda.is_available() else [torch.device("cuda")])]:
            for dtype in _DTYPES:
                spec = CallSpec(dev, dtype, (("tokens", 256), ("n", 1024), ("k", 1024)))
                try:
                    chosen = disp.choose(spec)
                except (BackendUnavailableError, ValueError) as exc:
                    chosen = f"none ({str(exc).splitlines()[0]})"
                if dev.type == "cuda" and not torch.cuda.is_available():
                    chosen = "nothing (no CUDA device here); backends on a CUDA machine would be"
                lines.append(f"  {dev.type}/{str(dtype).replace('torch.', '')}: uses {chosen}")
                lines.append(disp.explain(spec))
    return "\n".join(lines)


def main() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the report says it already
        print(report())


if __name__ == "__main__":
    main()
