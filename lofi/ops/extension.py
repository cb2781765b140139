"""Access to the compiled ``lofi._C`` extension, with a one-time warning when it is missing.

Set ``LOFI_DISABLE_EXTENSION=1`` to force the pure-PyTorch references (the tests use this too).
"""
import os
import warnings

import torch

_C = None
_load_error = None
if os.environ.get("LOFI_DISABLE_EXTENSION", "0") != "1":
    try:
        from lofi import _C  # noqa: F401  (registers the torch.ops.lofi kernels)
    except ImportError as err:  # not built: the references serve every call
        _load_error = err
else:
    _load_error = ImportError("LOFI_DISABLE_EXTENSION=1")

_warned = False


def available() -> bool:
    """True when lofi._C was imported."""
    return _C is not None


def cuda_compiled() -> bool:
    """True when lofi._C holds the CUDA kernels."""
    return _C is not None and bool(_C.cuda_compiled())


def use_kernel(tensor: torch.Tensor) -> bool:
    """True when a compiled kernel serves ``tensor``'s device; otherwise warns once and returns False."""
    global _warned
    if _C is not None and (not tensor.is_cuda or cuda_compiled()):
        return True
    if not _warned:
        reason = _load_error if _C is None else "lofi._C was built without CUDA"
        warnings.warn(f"lofi.ops: using the pure-PyTorch reference implementations ({reason})", stacklevel=3)
        _warned = True
    return False
