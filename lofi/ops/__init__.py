"""Custom ops: thin Python APIs over ``csrc/`` kernels, each beside its pure-PyTorch reference."""
from .extension import available, cuda_compiled
from .sg_align import sg_align, sg_align_project, sg_align_project_reference, sg_align_reference

__all__ = ["available", "cuda_compiled"]
__all__ += ["sg_align", "sg_align_project", "sg_align_reference", "sg_align_project_reference"]
