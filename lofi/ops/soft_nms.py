"""1-D soft-NMS over temporal segments (G-TAD's Gaussian rule, OpenTAD's linear and hard rules, BMN's rule).

Semantics, per video:
  1. pick the remaining candidate with the highest current score (ties: the lowest index);
  2. output it with its current, already decayed, score and remove it;
  3. multiply every other remaining score by a weight of its IoU with the pick:
     ``gaussian``: ``exp(-IoU²/sigma)``; ``linear``: ``1 - IoU`` if ``IoU >= iou_threshold`` else 1;
     ``hard``: 0 if ``IoU >= iou_threshold`` else 1;
     ``bmn`` (BMN, Lin et al. ICCV 2019, as in mmaction2's BMN post-processing): ``exp(-IoU²/sigma)`` if
     ``IoU > low + (high - low)·w`` else 1, where ``low`` = ``iou_threshold``, ``high`` = ``high_threshold`` and ``w``
     is the pick's width ``end - start`` in the segments' unit (normalized time [0, 1] for BMN; ActivityNet: sigma 0.4,
     low 0.5, high 0.9, top_k 100). ``high_threshold`` is ignored by the other methods, ``iou_threshold`` by
     ``gaussian``;
  4. stop after ``top_k`` picks, or when no remaining candidate has a positive score.
IoU is the exact 1-D IoU of ``[start, end]`` segments (any unit; a pair whose union is <= 0 has IoU 0; a segment with
``end < start`` overlaps nothing). Unlike G-TAD's Python loop, the last remaining candidate is emitted too.
Scores are decayed in float64 whatever the input dtype (G-TAD computes in Python floats); output scores have the input
dtype. The compiled kernels (csrc/soft_nms.h: C++ on the CPU, one CUDA launch per batch) keep a Gaussian or bmn
score as log(score) - sum(IoU²)/sigma over the picks that decayed it, so they agree with the references below up to
float64 rounding, and pick differently only where two candidates' scores are that close (the tests allow 1e-6
relative). Every implementation is deterministic; CPU and CUDA can differ in the last bits of exp/log.
"""
import math
from typing import Optional, Tuple

import torch

from . import extension

METHODS = {"gaussian": 0, "linear": 1, "hard": 2, "bmn": 3}
DTYPES = (torch.float32, torch.float64)

__all__ = ["soft_nms", "batched_soft_nms", "soft_nms_reference", "batched_soft_nms_reference"]


def _validate(segments, scores, num_valid, sigma, top_k, method, iou_threshold, high_threshold, check, batched):
    """Raises ValueError naming the argument; with ``check`` also rejects NaN/inf and out-of-range num_valid (syncs)."""
    lead = "(B, N" if batched else "(N"
    for name, t in (("segments", segments), ("scores", scores)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in DTYPES:
            raise ValueError(f"{name} must be float32 or float64, got {t.dtype}")
    rank = 2 if batched else 1
    if segments.dim() != rank + 1 or segments.shape[-1] != 2:
        raise ValueError(f"segments must have shape {lead}, 2) [start, end], got {tuple(segments.shape)}")
    if scores.dim() != rank or scores.shape != segments.shape[:-1]:
        raise ValueError(f"scores must have shape {lead}) matching segments {tuple(segments.shape)}, "
                         f"got {tuple(scores.shape)}")
    if scores.dtype != segments.dtype:
        raise ValueError(f"scores dtype {scores.dtype} differs from segments dtype {segments.dtype}")
    if scores.device != segments.device:
        raise ValueError(f"scores is on {scores.device} but segments is on {segments.device}")
    if num_valid is not None:
        if not isinstance(num_valid, torch.Tensor) or num_valid.dim() != 1 or num_valid.shape[0] != scores.shape[0]:
            shape = tuple(num_valid.shape) if isinstance(num_valid, torch.Tensor) else type(num_valid).__name__
            raise ValueError(f"num_valid must be a (B,) = ({scores.shape[0]},) tensor, got {shape}")
        if num_valid.dtype.is_floating_point or num_valid.dtype.is_complex or num_valid.dtype == torch.bool:
            raise ValueError(f"num_valid must have an integer dtype, got {num_valid.dtype}")
        if num_valid.device != scores.device:
            raise ValueError(f"num_valid is on {num_valid.device} but scores is on {scores.device}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
    if (isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0
            or not math.isfinite(1.0 / sigma)):  # a subnormal sigma: the Gaussian decay's 1/sigma overflows
        raise ValueError(f"sigma must be a finite number > 0 with a finite reciprocal, got {sigma!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    for name, value in (("iou_threshold", iou_threshold), ("high_threshold", high_threshold)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if check:
        for name, t in (("segments", segments), ("scores", scores)):
            if t.numel() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} contains NaN or inf")
        if num_valid is not None and num_valid.numel():
            n = scores.shape[1]
            if bool(((num_valid < 0) | (num_valid > n)).any()):
                raise ValueError(f"num_valid must lie in [0, N={n}], got min {int(num_valid.min())}, "
                                 f"max {int(num_valid.max())}")


def _iou_with(starts, ends, lengths, pick_start, pick_end):
    """IoU of every segment (B, N) with one pick per row (B, 1), in the exact order of operations of the kernels."""
    inter = (torch.minimum(ends, pick_end) - torch.maximum(starts, pick_start)).clamp_min(0)
    union = (lengths + (pick_end - pick_start)) - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(inter))


def _weight(iou, sigma, method, iou_threshold, high_threshold, pick_length):
    """Each candidate's weight (B, N) after picks of width ``pick_length`` (B, 1), in the kernels' threshold order."""
    if method == "gaussian":
        return torch.exp(-(iou * iou) / sigma)
    if method == "bmn":
        decays = iou > iou_threshold + (high_threshold - iou_threshold) * pick_length
        return torch.where(decays, torch.exp(-(iou * iou) / sigma), torch.ones_like(iou))
    keep = iou < iou_threshold
    if method == "linear":
        return torch.where(keep, torch.ones_like(iou), 1 - iou)
    return keep.to(iou.dtype)


def batched_soft_nms_reference(segments: torch.Tensor, scores: torch.Tensor, num_valid: Optional[torch.Tensor] = None,
                               sigma: float = 0.8, top_k: int = 100, method: str = "gaussian",
                               iou_threshold: float = 0.5, high_threshold: float = 0.9,
                               check: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pure-PyTorch soft-NMS of B videos at once (the tests' oracle), O(top_k·B·N).

    segments (B, N, 2) [start, end]; scores (B, N); num_valid (B,) integer: only the first num_valid[b] candidates of
    video b count (None: all N). Returns indices (B, top_k) int64 into N, padded with -1, and their decayed scores
    (B, top_k) in the scores' dtype, padded with 0, in selection order.
    """
    _validate(segments, scores, num_valid, sigma, top_k, method, iou_threshold, high_threshold, check, batched=True)
    b, n = scores.shape
    out_idx = torch.full((b, top_k), -1, dtype=torch.int64, device=scores.device)
    out_score = torch.zeros((b, top_k), dtype=scores.dtype, device=scores.device)
    if b == 0 or n == 0:
        return out_idx, out_score
    seg = segments.to(torch.float64)
    starts, ends = seg[..., 0], seg[..., 1]
    lengths = ends - starts
    cur = scores.to(torch.float64)
    alive = cur > 0  # NaN is never alive
    if num_valid is not None:
        alive &= torch.arange(n, device=scores.device) < num_valid.to(scores.device)[:, None]
    rows = torch.arange(b, device=scores.device)
    neg_inf = torch.tensor(-math.inf, dtype=torch.float64, device=scores.device)
    for k in range(min(top_k, n)):
        pick = torch.argmax(torch.where(alive, cur, neg_inf), dim=1)  # documented: first maximal index
        active = alive[rows, pick]
        if not bool(active.any()):
            break
        out_idx[:, k] = torch.where(active, pick, -1)
        out_score[:, k] = torch.where(active, cur[rows, pick], 0).to(scores.dtype)
        alive[rows, pick] = False
        iou = _iou_with(starts, ends, lengths, starts[rows, pick][:, None], ends[rows, pick][:, None])
        cur = cur * _weight(iou, float(sigma), method, float(iou_threshold), float(high_threshold),
                            lengths[rows, pick][:, None])
        alive &= cur > 0
    return out_idx, out_score


def soft_nms_reference(segments: torch.Tensor, scores: torch.Tensor, sigma: float = 0.8, top_k: int = 100,
                       method: str = "gaussian", iou_threshold: float = 0.5, high_threshold: float = 0.9,
                       check: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pure-PyTorch soft-NMS of one video: segments (N, 2), scores (N,) -> indices (K,), scores (K,), K <= top_k."""
    _validate(segments, scores, None, sigma, top_k, method, iou_threshold, high_threshold, check, batched=False)
    idx, out = batched_soft_nms_reference(segments[None], scores[None], None, sigma, top_k, method, iou_threshold,
                                          high_threshold, check=False)
    return _trim(idx[0], out[0])


def _trim(idx, out):
    k = int((idx >= 0).sum())
    return idx[:k], out[:k]


def batched_soft_nms(segments: torch.Tensor, scores: torch.Tensor, num_valid: Optional[torch.Tensor] = None,
                     sigma: float = 0.8, top_k: int = 100, method: str = "gaussian", iou_threshold: float = 0.5,
                     high_threshold: float = 0.9, check: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Soft-NMS of every video of a batch in one call (compiled kernel when available, else the reference).

    segments (B, N, 2) [start, end]; scores (B, N); num_valid (B,) integer or None (all N valid).
    Returns indices (B, top_k) int64 padded with -1 and scores (B, top_k) padded with 0, in selection order.
    ``check=False`` skips the NaN/inf and num_valid range checks, which sync with the GPU.
    """
    _validate(segments, scores, num_valid, sigma, top_k, method, iou_threshold, high_threshold, check, batched=True)
    if not extension.use_kernel(scores):
        return batched_soft_nms_reference(segments, scores, num_valid, sigma, top_k, method, iou_threshold,
                                          high_threshold, check=False)
    if num_valid is not None:
        num_valid = num_valid.to(torch.int64)
    return torch.ops.lofi.batched_soft_nms(segments, scores, num_valid, float(sigma), top_k, METHODS[method],
                                           float(iou_threshold), float(high_threshold))


def _fake_batched_soft_nms(segments, scores, num_valid, sigma, top_k, method, iou_threshold, high_threshold=0.9):
    """Shapes of the kernel's outputs: indices (B, top_k) int64 and scores (B, top_k) in the scores' dtype."""
    return (scores.new_empty(scores.shape[0], top_k, dtype=torch.int64), scores.new_empty(scores.shape[0], top_k))


if extension.available():  # the op has no autograd: its outputs are picks, not a function to differentiate
    torch.library.register_fake("lofi::batched_soft_nms", _fake_batched_soft_nms)


def soft_nms(segments: torch.Tensor, scores: torch.Tensor, sigma: float = 0.8, top_k: int = 100,
             method: str = "gaussian", iou_threshold: float = 0.5, high_threshold: float = 0.9,
             check: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Soft-NMS of one video: segments (N, 2) [start, end], scores (N,) -> indices (K,) int64 and decayed scores (K,)
    in selection order, K <= top_k. ``iou_threshold`` is used by ``linear``, ``hard`` and ``bmn`` (its low threshold),
    ``high_threshold`` only by ``bmn``."""
    _validate(segments, scores, None, sigma, top_k, method, iou_threshold, high_threshold, check, batched=False)
    idx, out = batched_soft_nms(segments[None], scores[None], None, sigma, top_k, method, iou_threshold,
                                high_threshold, check=False)
    return _trim(idx[0], out[0])
