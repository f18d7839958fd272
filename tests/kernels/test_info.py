"""`python -m morpho_kernels.info` reports versions, devices and every op's backends."""

import re
import subprocess
import sys

import torch


def test_info_report_lists_ops_backends_and_reasons():
    out = subprocess.run([sys.executable, "-m", "morpho_kernels.info"], capture_output=True,
                         text=True, check=True).stdout
    assert torch.__version__ in out
    assert "op masked_linear:" in out
    for name in ("triton", "ext", "reference"):
        assert name in out
    assert "cpu/float32: uses" in out
    if not torch.cuda.is_available():
        assert "no CUDA device here" in out
    from morpho_kernels import _ext

    if _ext.status().loaded:  # how many threads the CPU kernels get is part of the report
        parallel = re.search(r"CPU kernels on \d+ threads \(OpenMP\)", out) is not None
        assert parallel == _ext.status().openmp
        assert ("CPU kernels on ONE thread" in out) != _ext.status().openmp


def test_import_works_without_extension():
    code = ("import torch, morpho_kernels as mk; from morpho_kernels import _ext;"
            "x=torch.randn(2,3); w=torch.randn(4,3);"
            "y=mk.masked_linear(x,w,torch.zeros(4,3),1.0); assert y.shape==(2,4);"
            "print(_ext.status().reason)")
    import os

    env = dict(os.environ, MORPHO_DISABLE_EXT="1")
    env.pop("MORPHO_BACKEND", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout
    assert "MORPHO_DISABLE_EXT" in out
