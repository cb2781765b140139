"""The extension loader: built kernels are found, and the fallback warns once when they are disabled."""
import subprocess
import sys

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
