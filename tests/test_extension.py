"""The extension loader: built kernels are found, and the fallback warns once when they are disabled."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

import lofi.ops


def test_extension_is_built_here():
    # tools/env.sh builds lofi._C before the tests run; CUDA kernels whenever this torch has CUDA and nvcc exists.
    assert lofi.ops.available()
    from torch.utils.cpp_extension import CUDA_HOME

    if torch.version.cuda is not None and CUDA_HOME is not None:
        assert lofi.ops.cuda_compiled()


def test_disabled_extension_warns_once():
    code = (
        "import warnings, torch; warnings.simplefilter('always');\n"
        "from lofi.ops import extension as e\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    assert not e.use_kernel(torch.zeros(1)); assert not e.use_kernel(torch.zeros(1))\n"
        "print(len(w), e.available())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"LOFI_DISABLE_EXTENSION": "1", "PATH": "/usr/bin"}, check=True)
    assert out.stdout.split() == ["1", "False"]


def test_cpu_kernels_are_built_with_openmp():
    # at::parallel_for is inlined from ATen's OpenMP backend: without -fopenmp the CPU kernels run on one thread.
    # The extension needs libgomp.so.1, and at run time it shares the one OpenMP runtime torch loaded.
    if shutil.which("readelf") is None or not os.path.exists("/proc/self/maps"):
        pytest.skip("needs readelf and /proc (Linux)")
    from lofi.ops import extension
    so = extension._C.__file__
    needed = subprocess.run(["readelf", "-d", so], capture_output=True, text=True, check=True).stdout
    assert "libgomp.so.1" in needed, f"{so} is not linked with OpenMP"
    runtimes = {line.split()[-1] for line in open("/proc/self/maps") if "libgomp" in line}
    assert len(runtimes) == 1, runtimes
