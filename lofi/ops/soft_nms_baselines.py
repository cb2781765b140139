"""What the soft-NMS tests and tools/bench_soft_nms.py share: G-TAD's and BMN's per-video soft-NMS loops in Python
floats (oracles written independently of lofi.ops.soft_nms, and the speed baselines) and G-TAD-like inputs."""
import math

import torch


def gtad_style_soft_nms(segments, scores, sigma, top_k):
    """G-TAD's Soft_NMS loop (gtad_postprocess.py) in Python floats, with three fixes: no sort (so max() ties go
    to the lowest index), the last remaining candidate is emitted too, and a union <= 0 gives IoU 0."""

    def iou(s1, e1, s2, e2):
        if s2 > e1 or s1 > e2:
            return 0.0
        union = max(e1, e2) - min(s1, s2)
        return (min(e1, e2) - max(s1, s2)) / union if union > 0 else 0.0

    tstart = [float(s) for s, _ in segments]
    tend = [float(e) for _, e in segments]
    tscore = [float(s) for s in scores]
    tindex = list(range(len(tscore)))
    rindex, rscore = [], []
    while len(tscore) > 0 and len(rscore) < top_k and max(tscore) > 0:
        max_index = tscore.index(max(tscore))
        for idx in range(len(tscore)):
            if idx != max_index:
                tmp_iou = iou(tstart[max_index], tend[max_index], tstart[idx], tend[idx])
                if tmp_iou > 0:
                    tscore[idx] = tscore[idx] * math.exp(-tmp_iou * tmp_iou / sigma)
        rindex.append(tindex.pop(max_index))
        rscore.append(tscore.pop(max_index))
        tstart.pop(max_index)
        tend.pop(max_index)
    return rindex, rscore


def bmn_style_soft_nms(segments, scores, sigma, low, high, top_k):
    """BMN's soft-NMS rule (Lin et al. ICCV 2019) on one video in Python floats: after each pick of width w, a remaining
    candidate whose IoU with the pick exceeds low + (high - low)·w has its score multiplied by exp(-IoU²/sigma).
    lofi.ops.soft_nms's conventions: the best current score wins (ties: the lowest index), the loop stops when no
    remaining score is positive, and a union <= 0 gives IoU 0. Returns the picked indices and their scores."""
    bounds = [(float(s), float(e)) for s, e in segments]
    current = {i: float(score) for i, score in enumerate(scores)}
    picks, picked_scores = [], []
    while current and len(picks) < top_k:
        best = max(current, key=lambda i: (current[i], -i))
        if not current[best] > 0:
            break
        picks.append(best)
        picked_scores.append(current.pop(best))
        pick_start, pick_end = bounds[best]
        width = pick_end - pick_start
        threshold = low + (high - low) * width
        for i in current:
            start, end = bounds[i]
            overlap = max(min(end, pick_end) - max(start, pick_start), 0.0)
            union = (end - start) + width - overlap
            iou = overlap / union if union > 0 else 0.0
            if iou > threshold:
                current[i] *= math.exp(-(iou * iou) / sigma)
    return picks, picked_scores


def gtad_like_inputs(videos: int, t: int, seed: int, dtype: torch.dtype = torch.float32):
    """All T(T+1)/2 anchors [s, e]/T of a G-TAD map per video, (B, N, 2) in ``dtype``, and scores cls·reg (B, N): reg is
    the best IoU with 1-4 random ground-truth segments, cls a smooth logistic map of it; both with smooth noise."""
    gen = torch.Generator().manual_seed(seed)
    s, e = torch.triu_indices(t + 1, t + 1, offset=1).double() / t
    segments = torch.stack([s, e], -1).expand(videos, -1, -1)
    count = torch.randint(1, 5, (videos, 1), generator=gen)
    gt = torch.sort(torch.rand(videos, 4, 2, generator=gen, dtype=torch.float64), -1).values
    inter = (torch.minimum(e[None, :, None], gt[:, None, :, 1]) - torch.maximum(s[None, :, None], gt[:, None, :, 0]))
    inter = inter.clamp_min(0)
    union = (e - s)[None, :, None] + (gt[..., 1] - gt[..., 0])[:, None] - inter
    iou = torch.where((torch.arange(4) < count)[:, None], inter / union, 0).amax(-1)

    def smooth_noise():
        a, b, c = torch.rand(3, videos, 1, generator=gen, dtype=torch.float64)
        return torch.sin(6 * a * s + 6 * b * e + 6 * c)

    reg = (iou + 0.1 * smooth_noise()).clamp(0, 1)
    cls = torch.sigmoid(8 * (iou - 0.4) + smooth_noise())
    return segments.to(dtype).contiguous(), (cls * reg).to(dtype)
