"""Build of the optional C++/CUDA extension `morpho_kernels._C`.

* CPU sources (csrc/*.cpp, csrc/cpu/*.cpp) are always compiled.
* CUDA sources (csrc/cuda/*.cu) are compiled only when the installed torch was built with CUDA
  (`torch.version.cuda`) and a toolkit is found (`CUDA_HOME`); never decided from whether a GPU is
  present. Architectures come from TORCH_CUDA_ARCH_LIST (default 9.0).
* MORPHO_SKIP_EXT=1 installs pure Python; MORPHO_SKIP_CUDA=1 builds the CPU part only.

Install with `pip install --no-build-isolation -e .` so the extension is built against the torch
that will import it. The versions it was built against are written to
morpho_kernels/_build_info.json, which the loader compares before importing the binary.
"""

import glob
import json
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _extension():
    if _flag("MORPHO_SKIP_EXT"):
        print("morpho: MORPHO_SKIP_EXT=1, installing without the extension")
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    use_cuda = torch.version.cuda is not None and CUDA_HOME is not None and not _flag(
        "MORPHO_SKIP_CUDA"
    )
    # -fno-trapping-math lets GCC if-convert the float selects of the sigmoid so its loops
    # vectorise (without it: "control flow in loop", 2.3x slower than torch.sigmoid).
    # -fopenmp: at::parallel_for is a header template whose `#pragma omp parallel` is compiled
    # into this extension; without the flag every CPU kernel here ran on one thread whatever
    # torch.get_num_threads() said. The link resolves to torch's own libgomp (same soname).
    # Elsewhere than Linux (Apple clang has no -fopenmp) the build goes without, and
    # `python -m morpho_kernels.info` says the CPU kernels run on one thread.
    omp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    cxx = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd", *omp]
    link = omp
    macros = [("MORPHO_TORCH_VERSION", f'"{torch.__version__}"')]
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        macros.append(("MORPHO_WITH_CUDA", None))
        ext = CUDAExtension(
            "morpho_kernels._C",
            sources,
            define_macros=macros,
            extra_compile_args={
                "cxx": cxx,
                "nvcc": ["-O3", "--expt-relaxed-constexpr"],
            },
            extra_link_args=link,
        )
    else:
        ext = CppExtension(
            "morpho_kernels._C", sources, define_macros=macros, extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        )
    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda if use_cuda else None,
        "cuda_archs": os.environ.get("TORCH_CUDA_ARCH_LIST") if use_cuda else None,
        "with_cuda": use_cuda,
    }
    with open(os.path.join(ROOT, "morpho_kernels", "_build_info.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(f"morpho: building morpho_kernels._C ({'CPU+CUDA' if use_cuda else 'CPU only'})")
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extension()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
