"""Custom ops: thin Python APIs over ``csrc/`` kernels, each beside its pure-PyTorch reference."""
from .extension import available, cuda_compiled
from .soft_nms import batched_soft_nms, batched_soft_nms_reference, soft_nms, soft_nms_reference

__all__ = ["available", "cuda_compiled"]
__all__ += ["soft_nms", "batched_soft_nms", "soft_nms_reference", "batched_soft_nms_reference"]
