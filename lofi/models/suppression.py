"""Class-agnostic suppression of a head's candidate proposals, by the ``postprocess`` config section: soft-NMS with
the section's rule (``nms``: G-TAD's Gaussian decay, or BMN's, which decays only above an IoU threshold that grows
with the picked proposal's width in normalized time), then, with ``voting_iou`` > 0, score voting."""
from typing import Any, Tuple

import torch

from lofi import ops


def suppress(segments: torch.Tensor, scores: torch.Tensor, num_valid: torch.Tensor,
             pp: Any) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidates (B, N, 2) [start, end], their scores (B, N), the first ``num_valid`` (B,) of each video valid →
    (kept segments (B, top_k, 2), their decayed scores (B, top_k), counts (B,)) in selection order; rows beyond
    ``counts[b]`` are padding. BMN's rule reads widths in the segments' unit: pass normalized time."""
    idx, kept_scores = ops.batched_soft_nms(segments, scores, num_valid, sigma=pp.sigma, top_k=pp.top_k,
                                            method=pp.nms, iou_threshold=pp.nms_low, high_threshold=pp.nms_high)
    counts = (idx >= 0).sum(1)
    kept = segments.gather(1, idx.clamp(min=0).unsqueeze(-1).expand(-1, -1, 2))
    if pp.voting_iou > 0:
        kept = ops.score_voting(kept, counts, segments, scores, num_valid, pp.voting_iou)
    return kept, kept_scores, counts
