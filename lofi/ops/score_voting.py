"""Score voting after NMS (ActionFormer, Zhang, Wu and Li, ECCV 2022: ``seg_voting`` in its public release), batched.

Each kept segment k of video b (one of its first ``counts[b]``) is replaced by the weighted mean of the pre-NMS
candidates j of that video (its first ``num_valid[b]``) that overlap it by ``IoU >= iou``::

    kept_k <- sum_j w_kj · candidate_j / sum_j w_kj,    w_kj = score_j if IoU(kept_k, candidate_j) >= iou else 0

start and end alike. The weights are the candidates' plain pre-NMS scores, as in ActionFormer's release (which defines
a score offset of 1.5 there but does not apply it to the weights); a negative score counts as 0. The kept segment is
usually itself a candidate (IoU 1), so a segment that no other candidate reaches stays where it is. A kept segment with
no weight at all (no candidate reaches ``iou``, or all score 0) and the padding rows are returned unchanged. IoU is
lofi.ops.soft_nms's exact 1-D IoU (any unit; a union <= 0 gives 0). Memory: O(B·K·N).
"""
import math
from typing import Optional

import torch

from .soft_nms import DTYPES, _iou_with

__all__ = ["score_voting"]


def _check_counts(name, t, b, device):
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.shape[0] != b:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a (B,) = ({b},) tensor, got {shape}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{name} must have an integer dtype, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but candidates is on {device}")


def _validate(kept, counts, candidates, scores, num_valid, iou):
    for name, t in (("kept", kept), ("candidates", candidates), ("scores", scores)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in DTYPES:
            raise ValueError(f"{name} must be float32 or float64, got {t.dtype}")
        if t.dtype != candidates.dtype or t.device != candidates.device:
            raise ValueError(f"{name} is {t.dtype} on {t.device} but candidates is {candidates.dtype} on "
                             f"{candidates.device}")
    if candidates.dim() != 3 or candidates.shape[-1] != 2:
        raise ValueError(f"candidates must have shape (B, N, 2) [start, end], got {tuple(candidates.shape)}")
    b = candidates.shape[0]
    if kept.dim() != 3 or kept.shape[0] != b or kept.shape[-1] != 2:
        raise ValueError(f"kept must have shape (B={b}, K, 2) [start, end], got {tuple(kept.shape)}")
    if scores.shape != candidates.shape[:-1]:
        raise ValueError(f"scores must have shape (B, N) matching candidates {tuple(candidates.shape)}, "
                         f"got {tuple(scores.shape)}")
    _check_counts("counts", counts, b, candidates.device)
    if num_valid is not None:
        _check_counts("num_valid", num_valid, b, candidates.device)
    if isinstance(iou, bool) or not isinstance(iou, (int, float)) or not (math.isfinite(iou) and 0 < iou <= 1):
        raise ValueError(f"iou must be a number in (0, 1], got {iou!r}")


def score_voting(kept: torch.Tensor, counts: torch.Tensor, candidates: torch.Tensor, scores: torch.Tensor,
                 num_valid: Optional[torch.Tensor], iou: float) -> torch.Tensor:
    """Refines kept segments by score voting over the pre-NMS candidates, all videos at once.

    kept (B, K, 2) [start, end], of which the first counts[b] rows of video b are real (counts (B,) integer);
    candidates (B, N, 2) and scores (B, N), of which the first num_valid[b] are real (num_valid (B,) integer, or None:
    all N); iou in (0, 1]. Same unit for kept and candidates. Returns the refined segments (B, K, 2) in kept's dtype.
    """
    _validate(kept, counts, candidates, scores, num_valid, iou)
    b, k, n = kept.shape[0], kept.shape[1], candidates.shape[1]
    if kept.numel() == 0 or n == 0:
        return kept.clone()
    real = torch.arange(n, device=candidates.device) < (n if num_valid is None else num_valid[:, None])  # (B, N)
    real = real.expand(b, n)
    # Padding may hold anything (NaN, inf): zeroed, so that a zero weight times it adds nothing.
    starts = torch.where(real, candidates[..., 0], 0)[:, None, :]  # (B, 1, N)
    ends = torch.where(real, candidates[..., 1], 0)[:, None, :]
    overlap = _iou_with(starts, ends, ends - starts, kept[..., 0:1], kept[..., 1:2])  # (B, K, N)
    weights = torch.where((overlap >= iou) & real[:, None, :], scores.clamp_min(0)[:, None, :], 0)
    total = weights.sum(-1)  # (B, K)
    voted = torch.stack([(weights * starts).sum(-1), (weights * ends).sum(-1)], -1) / total[..., None]
    rows = torch.arange(k, device=kept.device) < counts[:, None]  # (B, K)
    return torch.where((rows & (total > 0))[..., None], voted, kept)
