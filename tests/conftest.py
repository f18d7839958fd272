"""Shared test setup.

Without CUDA, Triton kernels run on CPU tensors under TRITON_INTERPRET=1; the variable must be
set before the kernels are defined (triton.jit reads it), hence here, before any test imports
morpho_kernels. With CUDA the same tests run the compiled kernels on the GPU.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# On a GPU the block-sparse kernels run their first fitting config instead of benchmarking the
# whole tuned space per shape (minutes of compiling); the other program orders / token splits
# are each checked by test_triton_every_program_order_and_token_split (forced_config).
os.environ.setdefault("MORPHO_AUTOTUNE", "0")

HAS_CUDA = torch.cuda.is_available()
# Device the Triton backend is tested on: the GPU, or CPU tensors through the interpreter.
TRITON_DEVICE = "cuda" if HAS_CUDA else "cpu"


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def backend(monkeypatch):
    """Force a backend for the duration of a test: backend('triton')."""

    def force(name):
        monkeypatch.setenv("MORPHO_BACKEND", name)

    return force


@pytest.fixture(autouse=True)
def _clean_backend_env(monkeypatch):
    monkeypatch.delenv("MORPHO_BACKEND", raising=False)
    monkeypatch.delenv("MORPHO_FUSED_MAX_TOKENS", raising=False)
    torch.manual_seed(0)
