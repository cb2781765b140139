"""G-TAD's training targets (Xu et al., CVPR 2020) for any number of snippets L, from the annotations in seconds.

Snippet j covers [j/L, (j+1)/L] of the features' time span in normalized time; a ground-truth segment [s, e] seconds
is normalized by that span and clipped to [0, 1]. The span is the meta's ``feature_duration`` (s) when present
(G-TAD's ``corrected_second``: its features cover only the first featureFrame of numFrame frames), else the
annotated ``duration``.
"""
from typing import Dict, List

import torch

from .proposal_map import valid_mask


def normalized_segments(meta: dict) -> torch.Tensor:
    """One video's annotations → (G, 2) float64 normalized by ``feature_duration`` (else ``duration``) seconds,
    clipped to [0, 1]."""
    vid = meta.get("id", "?")
    key = "feature_duration" if meta.get("feature_duration") is not None else "duration"
    duration = float(meta.get(key, 0.0))
    if not duration > 0:
        raise ValueError(f"video {vid}: {key} must be > 0 seconds, got {meta.get(key)!r}")
    segs = []
    for i, ann in enumerate(meta.get("annotations", [])):
        start, end = (float(v) for v in ann["segment"])
        if end < start:
            raise ValueError(f"video {vid}: annotations[{i}].segment {ann['segment']} ends before it starts")
        segs.append((start / duration, end / duration))
    return torch.tensor(segs, dtype=torch.float64).reshape(-1, 2).clamp(0.0, 1.0)


def _overlap(a0, a1, b0, b1):
    return (torch.minimum(a1, b1) - torch.maximum(a0, b0)).clamp(min=0)


def video_targets(gt: torch.Tensor, L: int) -> Dict[str, torch.Tensor]:
    """gt (G, 2) normalized → start (L,), end (L,), iou_map (L, L) [d, s], float32.

    iou_map[d, s] = max over GT of IoU([s/L, (s+d+1)/L], gt), 0 on invalid cells. start[j] = max over GT of the IoA of
    the boundary region [x − 1.5/L, x + 1.5/L] (x a GT start) in the anchor [(j − 0.5)/L, (j + 1.5)/L] (G-TAD/BMN's
    2-gap anchor; IoA > 0.5 ⇔ x ∈ ((j − 1)/L, (j + 2)/L)); end likewise with the GT ends.
    """
    if gt.numel() == 0:
        return {"start": torch.zeros(L), "end": torch.zeros(L), "iou_map": torch.zeros(L, L)}
    g0, g1 = gt[:, 0].view(-1, 1, 1), gt[:, 1].view(-1, 1, 1)
    idx = torch.arange(L, dtype=torch.float64)
    a0 = (idx.view(1, 1, L) / L).expand(1, L, L)  # [., d, s]
    a1 = (idx.view(1, 1, L) + idx.view(1, L, 1) + 1) / L
    inter = _overlap(a0, a1, g0, g1)
    union = (a1 - a0) + (g1 - g0) - inter
    iou = (inter / union).amax(0) * valid_mask(L)

    b0, b1 = (idx - 0.5) / L, (idx + 1.5) / L  # (L,)
    half = 1.5 / L

    def ioa(x):  # x (G,) boundary positions → (L,)
        x = x.view(-1, 1)
        return (_overlap(b0.view(1, -1), b1.view(1, -1), x - half, x + half) / (b1 - b0)).amax(0)

    return {"start": ioa(gt[:, 0]).float(), "end": ioa(gt[:, 1]).float(), "iou_map": iou.float()}


def build_targets(meta: List[dict], L: int) -> Dict[str, torch.Tensor]:
    """Batch targets from the reader's ``meta`` (``duration`` s, ``annotations`` [{segment [s, e] s}]):
    {"start": (B, L), "end": (B, L), "iou_map": (B, L, L) [d, s]}, float32 on the CPU."""
    per_video = [video_targets(normalized_segments(m), L) for m in meta]
    return {key: torch.stack([t[key] for t in per_video]) for key in ("start", "end", "iou_map")}
