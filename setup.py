"""Builds lofi._C: C++ CPU kernels always, CUDA kernels when nvcc and a CUDA torch are present.

Environment:
  LOFI_CUDA=0|1           force the CUDA kernels off or on (default: on when nvcc and torch.version.cuda exist)
  TORCH_CUDA_ARCH_LIST    defaults to 9.0 when unset and no GPU is visible (otherwise every arch is compiled)
  MAX_JOBS                parallel compile jobs (ninja)
"""
import glob
import os
import site
import sys

import torch
from setuptools import find_packages, setup

# torch derives CUDA_HOME from `which nvcc`; where that is a wrapper script (/usr/local/bin/nvcc here) it guesses
# /usr/local, which has no libcudart. Prefer the real toolkit when the caller did not choose one.
if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def build_cuda() -> bool:
    forced = os.environ.get("LOFI_CUDA")
    if forced not in (None, "", "0", "1"):
        sys.exit(f"setup.py: LOFI_CUDA must be 0 or 1, got {forced!r}")
    if forced:
        return forced == "1"
    return CUDA_HOME is not None and torch.version.cuda is not None


def cuda_include_dirs() -> list:
    """The pip CUDA headers (cuBLAS, cuSPARSE, ...) that torch's headers include; the system toolkit may lack them."""
    roots = site.getsitepackages() + [site.getusersitepackages()] + [os.path.dirname(os.path.dirname(torch.__file__))]
    found = []
    for root in roots:
        path = os.path.join(root, "nvidia", "cu13", "include")
        if os.path.isdir(path) and path not in found:
            found.append(path)
    return found


def extension():
    cpp_sources = [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*.cpp"), recursive=True))]
    # -fopenmp: at::parallel_for is inlined from ATen's OpenMP backend into this extension; without it the CPU kernels
    # run on one thread. At run time the OpenMP runtime torch loaded (same soname, libgomp.so.1) serves both.
    # -falign-loops=64: the CPU kernels' inner loops start on a cache line. Without it their speed depended on where
    # the linker happened to place them: the same SGAlign scatter source took 75 or 118 ms (one thread) from build to build.
    cxx = ["-O3", "-std=c++20", "-g0", "-fopenmp", "-falign-loops=64"]
    link = ["-fopenmp"]
    if not build_cuda():
        return CppExtension("lofi._C", cpp_sources, extra_compile_args={"cxx": cxx}, extra_link_args=link)
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    cu_sources = [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*.cu"), recursive=True))]
    nvcc = ["-O3", "-std=c++20", "-Xcompiler", "-g0", "--expt-relaxed-constexpr"]
    return CUDAExtension(
        "lofi._C",
        cpp_sources + cu_sources,
        include_dirs=cuda_include_dirs(),
        define_macros=[("WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx + ["-DWITH_CUDA"], "nvcc": nvcc},
        extra_link_args=link,
    )


setup(
    name="lofi",
    version="0.1.0",
    description="Low-fidelity end-to-end encoder training for temporal action localization (LoFi, NeurIPS 2021)",
    packages=find_packages(include=["lofi", "lofi.*"]),
    package_data={"lofi": ["configs/*.yaml"]},
    python_requires=">=3.10",
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
