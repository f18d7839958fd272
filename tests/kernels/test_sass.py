"""Checks of the CUDA extrema kernels that need nvcc but no GPU (issue 22, item 6).

csrc/cuda/extrema_kernels.cuh and extrema_launch.cuh are compiled for sm_90 with the flags torch
gives CUDA sources, and:
* its SASS is read: instructions per element of the bf16 hot loop stay under a bound that the
  previous kernel (tests/kernels/sass_fixtures/extrema_old.cuh, verbatim) exceeds;
* ptxas reports no spills and no stack frame for any kernel the launcher can pick;
* the source has one launch site, and graph.cu's extrema path launches nothing after it;
* the per-thread code (packed compares, lane counters and their flush, sums, thresholds) runs on
  the host (sass_fixtures/extrema_host.cu) and is compared with the reference on awkward shapes.
The same kernels on a GPU: test_extrema.py::test_cuda_* (skipped without one).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from morpho_kernels import reference_graph

ROOT = Path(__file__).resolve().parents[2]
HEADER = ROOT / "csrc" / "cuda" / "extrema_launch.cuh"  # includes extrema_kernels.cuh
KERNELS = ROOT / "csrc" / "cuda" / "extrema_kernels.cuh"
FIXTURES = Path(__file__).resolve().parent / "sass_fixtures"
# The flags torch.utils.cpp_extension gives every .cu file (no implicit half conversions).
TORCH_NVCC_FLAGS = ["-std=c++17", "--expt-relaxed-constexpr", "-D__CUDA_NO_HALF_OPERATORS__",
                    "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
                    "-D__CUDA_NO_HALF2_OPERATORS__"]
# Instructions per element of the bf16 main loop. The issue measured ≈14 on the previous kernel
# (the fixture: 14.4 with nvcc 13.0) and asked for "well under half"; the packed kernel measures
# 4.7 (per 4 rows × 4 column pairs: 16 VHMNMX, 32 HSET2, 16 IADD3 for the lane counters, 32
# conversions, 32 FADD, loads and addresses). 7 is half the old count, with room for compiler
# versions, and flags the old kernel by a factor of two.
MAX_INSTR_PER_ELEMENT = 7.0


def _tool(name: str) -> str | None:
    """nvcc from PATH, CUDA_HOME or /usr/local/cuda; cuobjdump also from Triton's bundled
    CUDA tools."""
    found = shutil.which(name)
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / name).exists():
            return str(Path(home) / "bin" / name)
    if name == "cuobjdump":
        try:
            import triton.backends.nvidia as tn
        except ImportError:
            return None
        p = Path(tn.__file__).parent / "bin" / name
        return str(p) if p.exists() else None
    return None


NVCC, CUOBJDUMP = _tool("nvcc"), _tool("cuobjdump")
pytestmark = pytest.mark.skipif(
    NVCC is None or CUOBJDUMP is None,
    reason=f"needs nvcc and cuobjdump (found nvcc={NVCC}, cuobjdump={CUOBJDUMP})")

# Every kernel the launcher can pick comes in through launch<T> (kernel_for<T>).
_INSTANTIATE = """
#include "{header}"
namespace me = morpho::extrema;
#define LAUNCH(T) template cudaError_t me::launch<T>(const me::Plan&, const T*, long long, \\
    long long, long long, double, double, void*, long long*, long long*, float*, float*, \\
    float*, long long*, cudaStream_t);
LAUNCH(__nv_bfloat16)
LAUNCH(__half)
LAUNCH(float)
LAUNCH(double)
"""
_OLD = '#include "{header}"\n'


def _nvcc(args: list[str], cwd: Path, flags: list[str] = TORCH_NVCC_FLAGS) -> str:
    r = subprocess.run([NVCC, *flags, *args], cwd=cwd, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"nvcc {' '.join(args)} failed:\n{r.stderr[-4000:]}"
    return r.stderr


def _cubin(tmp: Path, name: str, source: str, flags: list[str] = TORCH_NVCC_FLAGS):
    """(cubin, ptxas -v report) of source compiled for sm_90 at -O3."""
    (tmp / f"{name}.cu").write_text(source)
    log = _nvcc(["-cubin", "-arch=sm_90", "-O3", "-Xptxas", "-v", f"{name}.cu", "-o",
                 f"{name}.cubin"], tmp, flags)
    return tmp / f"{name}.cubin", log


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sass")
    new = _cubin(tmp, "new", _INSTANTIATE.format(header=HEADER))
    # the old kernel relied on c10::BFloat16's implicit conversions: __nv_bfloat16 with its own
    # (no __CUDA_NO_BFLOAT16_CONVERSIONS__) stands in for it
    old = _cubin(tmp, "old", _OLD.format(header=FIXTURES / "extrema_old.cuh"),
                 ["-std=c++17", "--expt-relaxed-constexpr"])
    return {"new": new, "old": old, "tmp": tmp}


# ----------------------------------------------------------------------------- SASS reading

_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_LOAD_BYTES = {".128": 16, ".64": 8, ".U16": 2, ".S16": 2, ".U8": 1, ".S8": 1}


@functools.cache
def sass_functions(cubin: Path) -> dict[str, list[tuple[int, str]]]:
    """{kernel name: [(address, instruction)]} from cuobjdump -sass."""
    out = subprocess.run([CUOBJDUMP, "-sass", str(cubin)], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    funcs: dict[str, list[tuple[int, str]]] = {}
    cur = None
    for line in out.splitlines():
        m = re.match(r"\s+Function : (\S+)", line)
        if m:
            cur = funcs.setdefault(m.group(1), [])
            continue
        m = _INSTR.search(line)
        if m and cur is not None:
            cur.append((int(m.group(1), 16), m.group(2)))
    return funcs


def _opcode(ins: str) -> str:
    parts = ins.split()
    return parts[1] if parts[0].startswith("@") else parts[0]


def load_bytes(ins: str) -> int:
    """Bytes of a global load (0 if not one)."""
    op = _opcode(ins)
    if not op.startswith("LDG"):
        return 0
    return next((v for k, v in _LOAD_BYTES.items() if k in op), 4)


def innermost_loops(instrs: list[tuple[int, str]]) -> list[tuple[int, int]]:
    """(first, last) address of each loop (a backward branch) containing no other loop."""
    loops = []
    for addr, ins in instrs:
        m = re.search(r"\bBRA (0x[0-9a-f]+)", ins)
        if m and int(m.group(1), 16) <= addr:
            loops.append((int(m.group(1), 16), addr))
    return [a for a in loops
            if not any(b != a and a[0] <= b[0] and b[1] <= a[1] for b in loops)]


def hot_loop(instrs: list[tuple[int, str]], load_width: int) -> tuple[int, int]:
    """(instructions, bytes loaded) per iteration of the innermost loop that issues the most
    `load_width`-byte global loads: the main loop over rows (the remainder loop and the last
    block's merge of partials load less, or narrower)."""
    best = None
    for lo, hi in innermost_loops(instrs):
        body = [i for a, i in instrs if lo <= a <= hi and not _opcode(i).startswith("NOP")]
        wide = sum(1 for i in body if load_bytes(i) == load_width)
        if wide and (best is None or wide > best[0]):
            best = (wide, len(body), sum(load_bytes(i) for i in body))
    assert best is not None, f"no loop with {load_width}-byte loads"
    return best[1], best[2]


def _find(funcs: dict, *parts: str) -> list[tuple[int, str]]:
    hits = [v for k, v in funcs.items() if all(p in k for p in parts)]
    assert len(hits) == 1, f"{len(hits)} kernels match {parts}: {list(funcs)}"
    return hits[0]


def instr_per_element(instrs, elem_bytes: int = 2, load_width: int = 16) -> float:
    n, nbytes = hot_loop(instrs, load_width)
    return n / (nbytes / elem_bytes)


# ----------------------------------------------------------------------------- tests


def test_bf16_hot_loop_instructions_per_element(build):
    new = instr_per_element(_find(sass_functions(build["new"][0]), "columns_kernel",
                                  "nv_bfloat16Li8"))
    old = instr_per_element(_find(sass_functions(build["old"][0]), "extrema_columns_kernel"))
    print(f"bf16 instructions per element: packed {new:.2f}, previous kernel {old:.2f}")
    assert new <= MAX_INSTR_PER_ELEMENT, f"packed kernel: {new:.2f} instructions per element"
    # the check flags the kernel the issue measured (≈14 per value)
    assert old > MAX_INSTR_PER_ELEMENT, f"previous kernel passes the bound ({old:.2f})"


def test_fp16_hot_loop_is_packed_too(build):
    n = instr_per_element(_find(sass_functions(build["new"][0]), "columns_kernel", "halfLi8"))
    assert n <= MAX_INSTR_PER_ELEMENT, f"fp16: {n:.2f} instructions per element"


def test_hot_loop_uses_packed_instructions(build):
    """The main loop's min / max and compares are bf16x2 instructions, one per column pair."""
    funcs = sass_functions(build["new"][0])
    instrs = _find(funcs, "columns_kernel", "nv_bfloat16Li8")
    lo, hi = max(innermost_loops(instrs),
                 key=lambda r: sum(load_bytes(i) == 16 for a, i in instrs if r[0] <= a <= r[1]))
    ops = [_opcode(i) for a, i in instrs if lo <= a <= hi]
    packed = [o for o in ops if "BF16_V2" in o]
    assert sum("MNMX" in o for o in packed) >= 8 and sum("HSET2" in o for o in packed) >= 16
    assert not any(o.startswith(("FSETP", "FSEL", "DADD", "F2F")) for o in ops), \
        "per-value compares, selects or double sums in the bf16 main loop"


def test_no_spills(build):
    """ptxas -v: no stack frame, no spill stores / loads for any kernel the launcher can pick
    (14: columns at each vector width and channels, for bf16, fp16, fp32, fp64)."""
    log = build["new"][1]
    entries = re.findall(r"Compiling entry function '(\S+)'", log)
    props = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill "
                       r"loads", log)
    assert len(entries) == 14 and len(props) == 14, log[-3000:]
    for name, (stack, st, ld) in zip(entries, props):
        assert (stack, st, ld) == ("0", "0", "0"), f"{name}: stack {stack}, spills {st}/{ld}"
    assert all("extrema" in e and ("columns_kernel" in e or "channels_kernel" in e)
               for e in entries), entries


def _strip_comments(src: str) -> str:
    return re.sub(r"//[^\n]*", "", src)


def test_one_launch_and_no_follow_up_kernels():
    """One kernel launch per call: one `<<<` in the headers (launch<T>, kernel chosen by
    pointer); graph.cu's extrema path launches nothing and runs no ATen op on the results (the
    old path finished with 8 ATen kernels: sums, amin, amax, a division, casts and fills)."""
    assert "<<<" not in _strip_comments(KERNELS.read_text())
    header = _strip_comments(HEADER.read_text())
    assert header.count("<<<") == 1
    launch = header[header.index("cudaError_t launch("):]
    assert "<<<" in launch[:launch.index("\n}\n")]
    graph = _strip_comments((ROOT / "csrc" / "cuda" / "graph.cu").read_text())
    start = graph.index("ExtremaOut extrema_stats_cuda(")
    body = graph[start:graph.index("\n}\n", start)]
    assert "<<<" not in body and "extrema::launch<" in body
    for op in (".sum(", ".amin(", ".amax(", ".to(", "at::full", "at::zeros", ".fill_(", "/ "):
        assert op not in body, f"ATen work after the kernel in extrema_stats_cuda: {op!r}"


# ----------------------------------------------------------------------------- host run

_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "f16", torch.float32: "f32",
                torch.float64: "f64"}


@pytest.fixture(scope="module")
def host_program(build):
    tmp = build["tmp"]
    # host code only matters; -arch=sm_90 keeps nvcc from building device code for a default arch
    _nvcc(["-O1", "-arch=sm_90", str(FIXTURES / "extrema_host.cu"), "-o", "extrema_host"], tmp)
    return tmp / "extrema_host"


def run_host(prog: Path, x3: torch.Tensor, low: float, high: float, resident: int, flush: int):
    """(path taken, outputs) of the per-thread device code run on the host on x3 (outer, C,
    inner)."""
    outer, c, inner = x3.shape
    x3 = x3.contiguous()
    raw = x3.view(torch.int16) if x3.element_size() == 2 else x3
    src, dst = prog.parent / "x.bin", prog.parent / "out.bin"
    src.write_bytes(raw.numpy().tobytes())
    r = subprocess.run([str(prog), _DTYPE_NAMES[x3.dtype], str(outer), str(c), str(inner),
                        repr(low), repr(high), str(resident), str(flush), str(src), str(dst)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    b = dst.read_bytes()
    i64 = torch.from_numpy(np.frombuffer(b[:16 * c], dtype=np.int64).copy())
    f32 = torch.from_numpy(np.frombuffer(b[16 * c:28 * c], dtype=np.float32).copy())
    count = int(np.frombuffer(b[28 * c:], dtype=np.int64)[0])
    return r.stdout.strip(), (i64[:c], i64[c:], f32[:c], f32[c:2 * c], f32[2 * c:], count)


# (outer, C, inner): bf16 / fp16 take the 8-wide path at C = 64 and 136 (a partial last tile),
# the 2-wide one at 130 and 6, the scalar one at odd C, the channels kernel where inner != 1
# (whole rows per block at inner 7 and 257 and 0, rows cut into spans at 3001 and 5000).
HOST_CASES = [(1003, 64, 1), (1003, 136, 1), (77, 130, 1), (1003, 129, 1), (123, 123, 1),
              (5, 5, 1), (1, 1, 1), (0, 6, 1), (33, 5, 7), (2, 3, 257), (3, 2, 3001),
              (1, 2, 5000), (4, 3, 0)]


def _expected_vec(dtype: torch.dtype, c: int, inner: int) -> int:
    """Columns per thread the launcher picks (16-byte loads when C allows, pairs for 16-bit
    types, else 1; 0 = channels kernel). Buffers are 16-byte aligned here as on the GPU."""
    if inner != 1:
        return 0
    size = torch.empty((), dtype=dtype).element_size()
    if c % (16 // size) == 0:
        return 16 // size
    return 2 if size == 2 and c % 2 == 0 else 1


def _poison(x: torch.Tensor) -> torch.Tensor:
    """NaN, ±inf, −0 and values equal to the thresholds' neighbours in the first column."""
    flat = x.view(-1)
    for i, v in ((3, float("nan")), (7, float("inf")), (11, float("-inf")), (12, -0.0),
                 (13, -0.3), (14, 1.1)):
        if i < flat.numel():
            flat[i] = v
    return x


@pytest.mark.parametrize("dtype", list(_DTYPE_NAMES), ids=str)
@pytest.mark.parametrize("shape", HOST_CASES, ids=str)
def test_host_run_matches_reference(host_program, shape, dtype):
    """Counts exact, min / max exact (NaN where a NaN was seen), mean within fp32 accumulation
    error; 7 resident blocks split the rows so several blocks meet in the last one; the lane
    counters flushed every 3 steps and at the kernel's interval."""
    vec = _expected_vec(dtype, shape[1], shape[2])
    g = torch.Generator().manual_seed(sum(shape))
    x = _poison((torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype))
    ref = reference_graph.extrema_stats(x, -0.3, 1.1)
    truth = x.double().mean((0, 2)).float() if x.numel() else ref[2]
    for flush in (3, 0):
        path, out = run_host(host_program, x, -0.3, 1.1, resident=7, flush=flush)
        assert path.startswith(f"vec={vec} "), path
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1]), "below / above"
        for got, want, name in ((out[3], ref[3], "min"), (out[4], ref[4], "max")):
            assert torch.equal(got.isnan(), want.isnan()), name
            assert torch.equal(got.nan_to_num(0.0), want.nan_to_num(0.0)), name
        assert torch.equal(out[2].isnan(), ref[2].isnan()), "mean NaN"
        inf = ref[2].isinf()
        assert torch.equal(out[2][inf], ref[2][inf]), "mean ±inf"
        ok = ref[2].isfinite()
        if ok.any():  # the suite's floor for fp32 results (tests/tolerances.py)
            tol = 64 * torch.finfo(torch.float32).eps * (truth[ok].abs().max().item() + 1)
            assert (out[2][ok] - truth[ok]).abs().max().item() <= tol, "mean"
        assert out[5] == int(ref[5])


def test_host_cases_cover_every_path(host_program):
    assert {_expected_vec(torch.bfloat16, c, i) for _, c, i in HOST_CASES} == {8, 2, 1, 0}
    assert {_expected_vec(torch.float32, c, i) for _, c, i in HOST_CASES} == {4, 1, 0}
    spans = {run_host(host_program, torch.zeros(s), 0.0, 1.0, 7, 0)[0].split("spans=")[1]
             for s in HOST_CASES if s[2] != 1}
    assert "0" in spans and len(spans) > 1, spans  # both ways of splitting a channel


def test_host_run_thresholds_exact(host_program):
    """A threshold that no bf16 / fp16 equals is rounded up (low) or down (high) to the type, so
    x < low and x > high compare as in float64; ±inf thresholds count nothing."""
    for dtype in (torch.bfloat16, torch.float16):
        x = torch.linspace(-2, 2, 4096, dtype=torch.float64).to(dtype).reshape(256, 16, 1)
        for low, high in ((0.3, 0.3), (-1e-7, 1e-7), (-1e30, 1e30), (float("-inf"), float("inf")),
                          (0.1 + 2**-12, 0.7 - 2**-13)):
            _, out = run_host(host_program, x, low, high, resident=3, flush=3)
            want = reference_graph.extrema_stats(x, low, high)
            assert torch.equal(out[0], want[0]) and torch.equal(out[1], want[1]), (dtype, low)
