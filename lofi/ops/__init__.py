"""Custom ops: thin Python APIs over ``csrc/`` kernels, each beside its pure-PyTorch reference."""
from .extension import available, cuda_compiled
from .sg_align import (SamplingPlan, sampling_plan, sg_align, sg_align_project, sg_align_project_reference,
                       sg_align_reference)
from .score_voting import score_voting
from .soft_nms import batched_soft_nms, batched_soft_nms_reference, soft_nms, soft_nms_reference

__all__ = [
    "available",
    "cuda_compiled",
    "sg_align",
    "sg_align_project",
    "sg_align_reference",
    "sg_align_project_reference",
    "SamplingPlan",
    "sampling_plan",
    "soft_nms",
    "batched_soft_nms",
    "soft_nms_reference",
    "batched_soft_nms_reference",
    "score_voting",
]
