"""Ahead-of-time sm_90 (Hopper) compile checks of @triton.jit kernels, on a machine with no GPU.

Each `Case` names a kernel, representative arguments and the configs to try; `check` compiles
every config for ``GPUTarget("cuda", 90, 32)`` with the installed Triton and reads what came out:

* registers and spills from the bundled ptxas (``ptxas -v --gpu-name=sm_90a``): spills fail;
* shared memory (``metadata.shared``) must fit 227 KB (232448 bytes, the opt-in limit per block);
* the main (K) loop, the innermost ``scf.for`` of the TTGIR holding the kernel's MMA: its pipeline
  depth (the leading dimension of the multi-buffered shared allocations its MMA operands come
  from, followed through registers for an operand computed in the loop; 1 when an operand is
  loaded and copied to shared memory inside the loop) must be what num_stages asks of Triton's
  pipeliner: num_stages buffers when an async ``warp_group_dot`` reads them from shared memory
  (one more than the num_stages − 1 loads in flight: the MMA still reads one), num_stages − 1
  for an operand copied to registers first (``mma.sync``, or wgmma's register operand);
* no wait-for-all inside the K loop (``ttg.async_wait {num = 0}``: every copy in flight drained
  each iteration, the pipeline lost whatever num_stages says);
* MMAs not serialised: on Hopper the loop's ``warp_group_dot`` must be async and its wait must
  keep at least one MMA pending (``warp_group_dot_wait {pendings = 0}`` right after every dot
  serialises them);
* no global scratch memory (``metadata.global_scratch_size``, e.g. device-side tensor
  descriptors): Triton allocates it per launch through ``triton.set_allocator``, which the
  project does not call, so such a kernel compiles but cannot launch;
* with ``ctas_per_sm``: that many programs fit one SM together (shared memory plus the 1 KB the
  driver reserves per block within 228 KB; registers, allocated per warp in units of 256,
  within 64 K), as a persistent grid sized SMs × ctas_per_sm assumes.

Arguments are specialised as Triton's JIT does at launch (an int equal to 1 becomes a constexpr,
a multiple of 16 gets a divisibility hint, pointers are assumed 16-byte aligned), so the compiled
code is the one a launch with those values would run. The checker needs only Triton (and
whatever the kernel's module imports); TRITON_INTERPRET must be unset, since under the
interpreter `triton.jit` compiles nothing. Run another Triton version in a subprocess:

    PYTHONPATH=build/triton-3.6 python -m morpho_kernels.triton.sm90 \
        morpho_kernels.triton.block_sparse:sm90_cases --json

A case spec is ``module:function`` or ``path/to/file.py:function``; the function returns a list
of `Case`. Kernel modules that want the check export such a function (block_sparse.sm90_cases).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any, Optional

__all__ = ["SMEM_LIMIT", "SM_REGS", "SM_SMEM", "Case", "Report", "analyse_ttgir", "check",
           "check_config", "load_cases", "main"]

SMEM_LIMIT = 232448  # bytes of shared memory one block may opt into on sm_90 (227 KB)
SM_SMEM = 233472  # bytes of shared memory of one sm_90 SM (228 KB)
SM_REGS = 65536  # 32-bit registers of one sm_90 SM


@dataclasses.dataclass
class Case:
    """One kernel with representative arguments.

    Attributes:
        name: label of the case in reports.
        kernel: a ``@triton.jit`` function or a ``@triton.autotune`` wrapping one.
        args: every argument that is not a ``tl.constexpr``: a pointer as its Triton type string
            (``"*bf16"``, ``"*i32"``), a TMA descriptor as its type string
            (``"tensordesc<bf16[128, 64]>"``), a scalar as a representative Python int; or a
            callable taking the config's kwargs and returning one of those (descriptor block
            shapes follow the config).
        constexprs: the ``tl.constexpr`` arguments that the configs do not set.
        configs: ``triton.Config`` objects to compile; None = the autotuner's configs, filtered
            by ``config_filter`` (e.g. the kernel's own pruning for these arguments).
        config_filter: optional callable(list of configs) -> list of configs.
        mma: whether the K loop must run Hopper's warp_group_dot (bf16 / fp16 operands with
            an MMA tile of ≥ 64 rows); a callable taking the config's kwargs may decide per
            config (smaller tiles run mma.sync, which is not checked for serialisation).
        pipelined: whether the K loop must be software-pipelined (depth = num_stages).
        ctas_per_sm: programs that must fit one SM together (an int, or a callable taking the
            config's kwargs); None = not checked.
    """

    name: str
    kernel: Any
    args: dict
    constexprs: dict
    configs: Optional[list] = None
    config_filter: Optional[Callable[[list], list]] = None
    mma: Any = True
    pipelined: bool = True
    ctas_per_sm: Any = None

    def config_list(self) -> list:
        configs = self.configs if self.configs is not None else list(self.kernel.configs)
        return self.config_filter(configs) if self.config_filter else configs


@dataclasses.dataclass
class Report:
    """What one compiled config showed; ``problems`` is empty when every check passed."""

    case: str
    kernel: str
    config: str
    triton: str
    num_warps: int
    num_stages: int
    shared: int
    registers: Optional[int]
    spill_stores: Optional[int]
    spill_loads: Optional[int]
    k_loop: bool
    depth: Optional[int]
    wait_all_in_loop: bool
    mma: str
    mma_serialised: bool
    problems: list
    global_scratch: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- TTGIR reading

_DEF = re.compile(r"^\s*(%[\w.$-]+)(?::\d+)?\s*=\s*([\w.]+)(.*)$")
_MEMDESC = re.compile(r"!ttg\.memdesc<([0-9x]+)x[a-z]+\d*")
_VIEW_OPS = {"ttg.memdesc_index", "ttg.memdesc_subview", "ttg.memdesc_trans",
             "ttg.memdesc_reinterpret", "ttg.memdesc_subslice", "ttg.local_load",
             "ttg.convert_layout", "tt.trans", "ttg.memdesc_reshape"}
_DOTS = ("ttng.warp_group_dot ", "tt.dot ", "ttng.tc_gen5_mma ")
_DOT_OPERANDS = r"(?:warp_group_dot|tt\.dot|tc_gen5_mma)\s+(%[\w.$#-]+),\s*(%[\w.$#-]+)"


def _base(name: str) -> str:
    return name.split("#")[0]


def _loops(lines: list[str]) -> list[tuple[int, int, int]]:
    """(first line, last line, depth) of every scf.for region."""
    stack, loops = [], []
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith("}"):
            if stack:
                kind, start, depth = stack.pop()
                if kind == "for":
                    loops.append((start, i, depth))
        if s.endswith("{") and not s.startswith("} else {"):
            stack.append(("for" if " scf.for " in f" {s}" else "other", i, len(stack)))
        elif s.startswith("} else {"):
            stack.append(("other", i, len(stack)))
    return loops


def _operand_sources(name: str, defs: dict, in_loop: set, seen: set) -> list:
    """Where an MMA operand's data comes from, as (pipeline depth, through registers) per
    source: a multi-buffered ``local_alloc`` (rank ≥ 3) gives its leading dimension; a copy
    into shared memory made inside the loop (``local_alloc %tensor``) or a ``tt.load`` left in
    the loop gives 1. An operand computed in registers (``local_load`` then arithmetic, as a
    fused prologue does) is followed back to the buffers it was loaded from; values defined
    outside the loop (loop-invariant) and constants are no source."""
    name = _base(name)
    if name in seen or name not in defs:
        return []
    seen.add(name)
    op, rest = defs[name]
    if op == "ttg.local_alloc":
        if rest.lstrip().startswith("%"):  # local_alloc %tensor: a copy made where it is used
            return [(1, False)] if name in in_loop else []
        m = _MEMDESC.search(rest)
        dims = [int(d) for d in m.group(1).split("x")] if m else []
        return [(dims[0] if len(dims) >= 3 else 1, False)]
    if op in _VIEW_OPS:
        m = re.match(r"\s*(%[\w.$#-]+)", rest)
        found = _operand_sources(m.group(1), defs, in_loop, seen) if m else []
        return [(d, True) for d, _ in found] if op == "ttg.local_load" else found
    if name not in in_loop:
        return []
    if op == "tt.load":  # a load the pipeliner left in the loop: waited for every step
        return [(1, True)]
    operands = rest.split(" : ")[0]  # the operands, not the types
    return [src for o in re.findall(r"%[\w.$#-]+", operands)
            for src in _operand_sources(o, defs, in_loop, seen)]


def analyse_ttgir(text: str) -> dict:
    """Read a kernel's TTGIR: its K loop (the innermost scf.for holding an MMA), the loop's
    pipeline depth, whether it waits for all copies, which MMA it runs and whether the MMAs are
    serialised. Iteration arguments of the loop are followed to their initial values."""
    lines = text.splitlines()
    defs: dict[str, tuple[str, str]] = {}
    for line in lines:
        m = _DEF.match(line)
        if m:
            defs[m.group(1)] = (m.group(2), m.group(3).lstrip(" ="))
    out = {"k_loop": False, "depth": None, "sources": [], "wait_all_in_loop": False,
           "mma": "none", "mma_serialised": False}
    loops = sorted(_loops(lines), key=lambda t: -t[2])  # innermost first
    for start, end, _ in loops:
        inner = [(a, b) for a, b, _ in loops if start < a and b < end]
        body = [lines[i] for i in range(start + 1, end)
                if not any(a <= i <= b for a, b in inner)]
        dots = [ln for ln in body if any(d in ln for d in _DOTS)]
        if not dots:
            continue
        _alias_iter_args(lines[start], defs)
        in_loop = {m.group(1) for m in map(_DEF.match, body) if m}
        out["k_loop"] = True
        out["mma"] = "wgmma" if "warp_group_dot " in dots[0] else dots[0].split("=")[1].split()[0]
        sources = []
        for ln in dots:
            ops = re.search(_DOT_OPERANDS, ln)
            if ops:
                for operand in ops.groups():
                    sources += _operand_sources(operand, defs, in_loop, set())
        out["sources"] = sorted(set(sources))
        out["depth"] = min(d for d, _ in sources) if sources else None
        out["wait_all_in_loop"] = any("ttg.async_wait" in ln and "num = 0 :" in ln for ln in body)
        waits = [ln for ln in body if "warp_group_dot_wait" in ln]
        sync_dot = any("warp_group_dot " in ln and "isAsync = true" not in ln for ln in dots)
        out["mma_serialised"] = out["mma"] == "wgmma" and (
            sync_dot or any("pendings = 0 :" in ln for ln in waits))
        break
    return out


def _alias_iter_args(for_line: str, defs: dict) -> None:
    """Map a loop's iteration arguments to their initial values (``%x = %init``), so an MMA
    operand carried around the loop resolves to the buffer it started in."""
    m = re.search(r"iter_args\((.*)\)\s*->", for_line)
    if not m:
        return
    for arg, init in re.findall(r"(%[\w.$-]+)\s*=\s*(%[\w.$#-]+)", m.group(1)):
        defs.setdefault(arg, ("ttg.convert_layout", init))


# ----------------------------------------------------------------------------- compiling


def _specialise(fn, args: dict, constexprs: dict):
    """(signature, constexprs, attrs) the JIT would build for these argument values."""
    from triton.backends.compiler import BaseBackend
    from triton.runtime import jit

    spec = getattr(jit, "native_specialize_impl", None)
    dns = set(getattr(fn, "do_not_specialize", ()) or ())
    names = list(fn.arg_names)
    missing = [n for n in names if n not in args and n not in constexprs]
    extra = [n for n in list(args) + list(constexprs) if n not in names]
    if missing or extra:
        raise ValueError(f"{fn.__name__}: arguments missing {missing}, unknown {extra}")
    sig, cst, attrs = {}, dict(constexprs), {}
    for i, n in enumerate(names):
        if n in constexprs:
            sig[n] = "constexpr"
            continue
        v = args[n]
        if isinstance(v, str):  # pointer type
            sig[n] = v
            attrs[(i,)] = [["tt.divisibility", 16]]
            continue
        special = i not in dns and n not in dns
        if spec is not None:
            ty, key = spec(BaseBackend, v, False, special, True)[:2]
        else:  # no native helper: the same rules
            ty = "constexpr" if special and v == 1 else ("i64" if abs(v) >= 2**31 else "i32")
            key = "D" if special and ty != "constexpr" and v % 16 == 0 else ""
        if ty == "constexpr":
            sig[n] = "constexpr"
            cst[n] = v
            continue
        sig[n] = ty
        if key == "D":
            attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, cst, attrs


def _jit_fn(kernel):
    fn = kernel
    while not hasattr(fn, "arg_names") or not hasattr(fn, "src"):
        fn = fn.fn  # Autotuner / Heuristics wrap the JITFunction
    return fn


def _ptxas() -> Optional[str]:
    try:  # the ptxas the backend itself runs for sm_90 (3.9: ptxas-blackwell, 3.6: ptxas)
        from triton.backends.nvidia.compiler import get_ptxas
        path = get_ptxas(90).path
        if path and os.path.exists(path):
            return path
    except Exception:  # older Triton, or a bundle without ptxas
        pass
    return shutil.which("ptxas")


def _ptxas_info(ptx: str) -> dict:
    """Registers and spill bytes of the PTX compiled for sm_90a (cached by the PTX's hash)."""
    ptxas = _ptxas()
    if ptxas is None:
        return {"registers": None, "spill_stores": None, "spill_loads": None}
    cache = os.path.join(os.environ.get("TRITON_CACHE_DIR",
                                        os.path.expanduser("~/.triton/cache")), "morpho-sm90")
    key = hashlib.sha256((ptxas + ptx).encode()).hexdigest()
    path = os.path.join(cache, key + ".json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        res = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", src, "-o",
                              os.path.join(tmp, "k.cubin")], capture_output=True, text=True)
    log = res.stdout + res.stderr
    if res.returncode:
        raise RuntimeError(f"ptxas failed:\n{log[-2000:]}")
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    info = {"registers": int(regs.group(1)) if regs else None,
            "spill_stores": int(spills.group(1)) if spills else 0,
            "spill_loads": int(spills.group(2)) if spills else 0}
    os.makedirs(cache, exist_ok=True)
    with open(path, "w") as f:
        json.dump(info, f)
    return info


def _config_str(cfg) -> str:
    kw = ", ".join(f"{k}: {v}" for k, v in cfg.kwargs.items())
    return f"{kw}, num_warps: {cfg.num_warps}, num_stages: {cfg.num_stages}"


def check_config(case: Case, cfg) -> Report:
    """Compile one config of ``case`` for sm_90 and check it (see the module docstring)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter compiles nothing")
    fn = _jit_fn(case.kernel)
    args = {n: v(cfg.kwargs) if callable(v) else v for n, v in case.args.items()}
    sig, cst, attrs = _specialise(fn, args, {**case.constexprs, **cfg.kwargs})
    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    opts = backend.parse_options({"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    src = ASTSource(fn=fn, signature=sig, constexprs=cst, attrs=attrs)
    compiled = triton.compile(src, target=target, options=opts.__dict__)
    ir = analyse_ttgir(compiled.asm["ttgir"])
    ptx = _ptxas_info(compiled.asm["ptx"])
    shared = int(compiled.metadata.shared)
    problems = []
    if ptx["spill_stores"] or ptx["spill_loads"]:
        problems.append(f"register spills: {ptx['spill_stores']} bytes stored, "
                        f"{ptx['spill_loads']} loaded ({ptx['registers']} registers)")
    if shared > SMEM_LIMIT:
        problems.append(f"shared memory {shared} bytes > {SMEM_LIMIT}")
    # global scratch (device-side tensor descriptors, tl.make_tensor_descriptor, need it on
    # sm_90): Triton asks triton.set_allocator's allocator for it at every launch, and the
    # project sets none, so such a launch raises "no allocator was set" on the GPU
    scratch = int(getattr(compiled.metadata, "global_scratch_size", 0) or 0)
    if scratch:
        problems.append(f"needs {scratch} bytes of global scratch per program: launches fail "
                        "without triton.set_allocator")
    ctas = case.ctas_per_sm(cfg.kwargs) if callable(case.ctas_per_sm) else case.ctas_per_sm
    if ctas and ptx["registers"] is not None:
        regs = -(-ptx["registers"] * 32 // 256) * 256 * cfg.num_warps  # per block
        if ctas * (shared + 1024) > SM_SMEM or ctas * regs > SM_REGS:
            problems.append(f"{ctas} programs do not fit one SM: {ctas} × ({shared} + 1024) "
                            f"bytes of shared memory (≤ {SM_SMEM}), {ctas} × {regs} registers "
                            f"(≤ {SM_REGS})")
    wgmma = case.mma(cfg.kwargs) if callable(case.mma) else case.mma
    if wgmma or case.pipelined:
        if not ir["k_loop"]:
            problems.append("no K loop with an MMA found in the TTGIR")
        else:
            if case.pipelined and not ir["sources"]:
                problems.append("the K loop's MMA operands trace to no buffer or load")
            for depth, via_registers in ir["sources"] if case.pipelined else ():
                # wgmma reads its shared operands while the next loads land: num_stages
                # buffers; an operand copied to registers first frees its buffer: one less
                regs = via_registers or ir["mma"] != "wgmma"
                want = cfg.num_stages - 1 if regs else cfg.num_stages
                if depth != want:
                    problems.append(f"K-loop pipeline depth {depth} != {want} (num_stages "
                                    f"{cfg.num_stages}, {ir['mma']}, operand read "
                                    f"{'through registers' if regs else 'from shared memory'})")
            if ir["wait_all_in_loop"]:
                problems.append("wait-for-all (ttg.async_wait {num = 0}) inside the K loop")
            if wgmma and ir["mma"] != "wgmma":
                problems.append(f"K loop runs {ir['mma']}, not warp_group_dot (wgmma)")
            if ir["mma_serialised"]:
                problems.append("MMAs serialised (warp_group_dot_wait {pendings = 0} or a "
                                "synchronous warp_group_dot in the K loop)")
    return Report(case=case.name, kernel=fn.__name__, config=_config_str(cfg),
                  triton=triton.__version__,
                  num_warps=cfg.num_warps, num_stages=cfg.num_stages, shared=shared,
                  registers=ptx["registers"], spill_stores=ptx["spill_stores"],
                  spill_loads=ptx["spill_loads"], k_loop=ir["k_loop"], depth=ir["depth"],
                  wait_all_in_loop=ir["wait_all_in_loop"], mma=ir["mma"],
                  mma_serialised=ir["mma_serialised"], problems=problems,
                  global_scratch=scratch)


def check(cases: list[Case]) -> list[Report]:
    """Every config of every case, compiled and checked."""
    return [check_config(case, cfg) for case in cases for cfg in case.config_list()]


def load_cases(spec: str) -> list[Case]:
    """Cases from ``module:function`` or ``path/to/file.py:function``."""
    target, _, func = spec.rpartition(":")
    if not target or not func:
        raise ValueError(f"case spec must be module:function or file.py:function, got {spec!r}")
    if target.endswith(".py"):
        name = "_sm90_cases_" + hashlib.sha1(target.encode()).hexdigest()[:8]
        loader = importlib.util.spec_from_file_location(name, target)
        module = importlib.util.module_from_spec(loader)
        sys.modules[name] = module
        loader.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    return getattr(module, func)()


def main(argv: Optional[list[str]] = None) -> int:
    """CLI: check the cases of each spec; exit 1 when a check failed (0 with --json, which
    prints one report per line for a caller to judge)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("specs", nargs="+", help="module:function or file.py:function")
    p.add_argument("--json", action="store_true", help="one JSON report per line")
    a = p.parse_args(argv)
    failed = False
    for spec in a.specs:
        try:
            cases = load_cases(spec)
        except Exception as exc:  # a module that does not import: say so, check the others
            cases, failed = [], True
            _emit(a.json, {"spec": spec, "error": f"{type(exc).__name__}: {exc}"})
        for case in cases:
            for cfg in case.config_list():
                try:
                    rep = check_config(case, cfg).to_dict()
                except Exception as exc:  # e.g. a signature that changed under its case
                    rep = {"case": case.name, "kernel": _jit_fn(case.kernel).__name__,
                           "config": _config_str(cfg), "error": f"{type(exc).__name__}: {exc}"}
                failed |= bool(rep.get("problems", True))
                _emit(a.json, {"spec": spec, **rep})
    return 0 if a.json or not failed else 1


def _emit(as_json: bool, rep: dict) -> None:
    if as_json:
        print(json.dumps(rep), flush=True)
    elif "error" in rep:
        print(f"{rep.get('case', rep.get('spec'))} {{{rep.get('config', '')}}}: ERROR "
              f"{rep['error']}", flush=True)
    else:
        status = "ok" if not rep["problems"] else "; ".join(rep["problems"])
        print(f"[triton {rep['triton']}] {rep['case']} {{{rep['config']}}} "
              f"shared={rep['shared']} regs={rep['registers']} depth={rep['depth']}: {status}",
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
