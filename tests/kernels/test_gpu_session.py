"""bench/gpu_session.sh checked on the CPU: its syntax, and its --dry-run (python, torch and
triton import, every bench script's --help, the commands each stage would run and their time
limits within the session's 8-minute budget)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_session.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(*args, tmp_path, **env):
    env = {**os.environ, "OUT": str(tmp_path), "PY": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=240, env=env)


def test_syntax():
    r = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_dry_run(tmp_path):
    r = _run("--dry-run", tmp_path=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for f in ("bench_block_sparse", "bench_masked_linear", "bench_ext"):
        assert f"ok   bench/{f}.py --help" in out, out
    for stage in ("build", "test", "block_sparse", "regrow", "masked_linear", "ext"):
        assert any(line.startswith(stage + " ") for line in out.splitlines()), (stage, out)
    assert "TORCH_CUDA_ARCH_LIST=9.0" in out and "tests/kernels" in out and " -x" in out
    # the CPU-side compile checks would spend the test stage's limit on the GPU machine
    (test_line,) = [line for line in out.splitlines() if line.startswith("test ")]
    for f in ("test_sm90_compile.py", "test_sass.py", "test_gpu_session.py"):
        assert f"--ignore=tests/kernels/{f}" in test_line, test_line
    assert "bench_ext.py --device cuda" in out and "--targets" in out
    total = int(out.split("sum of stage limits: ")[1].split("s")[0])
    assert total <= 480, out  # the 8 minutes of machine time


def test_dry_run_refuses_limits_over_budget(tmp_path):
    r = _run("--dry-run", "ext", tmp_path=tmp_path, EXT_TIMEOUT="600")
    assert r.returncode == 1 and "exceed the budget" in r.stdout


def test_unknown_stage(tmp_path):
    r = _run("nope", tmp_path=tmp_path)
    assert r.returncode == 2 and "unknown stage nope" in r.stdout
