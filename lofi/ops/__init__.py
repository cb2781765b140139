"""Custom ops: thin Python APIs over ``csrc/`` kernels, each beside its pure-PyTorch reference."""
from .extension import available, cuda_compiled

__all__ = ["available", "cuda_compiled"]
