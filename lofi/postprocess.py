"""Post-processing (G-TAD's, with OpenTAD's end-of-video correction by default): G-TAD outputs → proposals → detections.

1. Boundary filter per video: a snippet is a start (end) candidate if it is a strict local peak of the start (end)
   probability or above 0.5·max; snippet 0 is always a start, snippet L−1 always an end.
2. Every valid map cell (d, s) with start candidate s is a proposal [s, s+d+1] snippets, score = cls × reg, when its
   end passes the candidate rule (``CANDIDATE_RULES``): ``opentad`` reads the end candidate at s+d (the last included
   snippet) and keeps proposals ending at the video's end; ``gtad`` (G-TAD's inference) reads it at s+d+1 and keeps
   only proposals with s+d+1 < L, so none ends at the video's end.
3. Gaussian soft-NMS over the whole batch (``lofi.ops.batched_soft_nms``), top-k per video.
4. Seconds = snippets / L · duration, clipped to [0, duration].
5. Video-level classification fusion: each of the top-2 classes × each proposal (score product) → ≤ 2·top_k
   detections per video. Class scores come from an external CUHK-format file (the video-level scores G-TAD uses)
   or from the caller's (B, K) probabilities, e.g. ``lofi.models.VideoClassifier`` softmax outputs.
"""
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch

from lofi import ops
from lofi.models.gtad import proposal_cells

CANDIDATE_RULES = ("opentad", "gtad")


def boundary_candidates(prob: torch.Tensor) -> torch.Tensor:
    """prob (B, L) → bool (B, L): strict local peak (outside neighbours count as −∞) or > 0.5·max of the video."""
    pad = torch.nn.functional.pad(prob, (1, 1), value=float("-inf"))
    peak = (prob > pad[:, :-2]) & (prob > pad[:, 2:])
    return peak | (prob > 0.5 * prob.amax(1, keepdim=True))


def load_cuhk(path) -> Dict[str, object]:
    """Reads an external video-classifier file in the CUHK format ``{"results": {vid: [K scores]}, "class": [K names]}``
    → {"classes": [K names], "scores": {vid without "v_": tensor (K,)}, "source": path}."""
    path = Path(path)
    with open(path) as f:
        data = json.load(f)
    for field in ("results", "class"):
        if field not in data:
            raise ValueError(f"{path}: missing field {field!r} (CUHK format: {{'results': {{vid: [scores]}}, 'class': [names]}})")
    classes = list(data["class"])
    scores = {}
    for vid, values in data["results"].items():
        if len(values) != len(classes):
            raise ValueError(f"{path}: results[{vid!r}] has {len(values)} scores for {len(classes)} classes")
        scores[vid[2:] if vid.startswith("v_") else vid] = torch.tensor(values, dtype=torch.float64)
    return {"classes": classes, "scores": scores, "source": str(path)}


def batch_proposals(start: torch.Tensor, end: torch.Tensor, maps: torch.Tensor, sigma: float = 0.8,
                    top_k: int = 100, candidates: str = "opentad"):
    """G-TAD outputs → (segments (B, top_k, 2) in snippets, scores (B, top_k), counts (B,)) after soft-NMS;
    rows beyond ``counts[b]`` are padding. ``candidates``: the end rule, one of ``CANDIDATE_RULES``."""
    if candidates not in CANDIDATE_RULES:
        raise ValueError(f"postprocess.candidates: expected one of {CANDIDATE_RULES}, got {candidates!r}")
    B, L = start.shape
    d, s = proposal_cells(L, start.device)
    e = s + d + (1 if candidates == "gtad" else 0)  # the snippet whose end probability is read
    inside = e < L
    start_ok, end_ok = boundary_candidates(start), boundary_candidates(end)
    start_ok[:, 0] = True
    end_ok[:, L - 1] = True
    keep = start_ok[:, s] & end_ok[:, e.clamp(max=L - 1)] & inside
    flat = maps.flatten(2)[:, :, d * L + s].float()  # (B, 2, N)
    score = flat[:, 1] * flat[:, 0]
    segs = torch.stack([s, s + d + 1], 1).to(score.dtype)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    num_valid = keep.sum(1)
    cand_scores = score.gather(1, order)
    cand_segs = segs[order]  # (B, N, 2)
    idx, nms_scores = ops.batched_soft_nms(cand_segs, cand_scores, num_valid, sigma=sigma, top_k=top_k)
    counts = (idx >= 0).sum(1)
    out = cand_segs.gather(1, idx.clamp(min=0).unsqueeze(-1).expand(-1, -1, 2))
    return out, nms_scores, counts


def _class_scores(class_scores, classes, meta):
    """→ (per-video score tensors (K,), class names, classifier description)."""
    if isinstance(class_scores, (str, os.PathLike)):
        class_scores = load_cuhk(class_scores)
    if isinstance(class_scores, dict):
        missing = [m["id"] for m in meta if m["id"] not in class_scores["scores"]]
        if missing:
            raise KeyError(f"{class_scores['source']}: no class scores for videos {missing[:10]}")
        return ([class_scores["scores"][m["id"]] for m in meta], class_scores["classes"],
                f"external CUHK-format file {class_scores['source']}")
    if classes is None or class_scores.shape != (len(meta), len(classes)):
        raise ValueError(f"detect: class_scores must be (B={len(meta)}, K=len(classes)); got "
                         f"{tuple(class_scores.shape)} with {None if classes is None else len(classes)} classes")
    return list(class_scores.detach().double().cpu()), list(classes), "VideoClassifier (project's linear video head)"


def detect(pred: Dict[str, torch.Tensor], meta: List[dict], *,
           class_scores: Union[torch.Tensor, str, os.PathLike, dict, None] = None,
           classes: Optional[Sequence[str]] = None, sigma: float = 0.8, top_k: int = 100, top_classes: int = 2,
           candidates: str = "opentad") -> dict:
    """GTAD output for a batch + the reader's meta (``id``, ``duration`` s) → ActivityNet-format results.
    Videos marked ``pad`` (the reader's padding duplicates) are left out.

    ``class_scores``: (B, K) probabilities with ``classes`` (K names), a CUHK-format file path, or ``load_cuhk``'s
    output; None gives proposals only. ``candidates``: the end rule of step 2 (``CANDIDATE_RULES``). Returns {"detections": {vid: [{label, score, segment}]} (≤ top_classes·top_k per
    video), "proposals": {vid: [{score, segment}]} (class-agnostic, for AR@AN), "classifier": description or None}.
    """
    segs, scores, counts = batch_proposals(pred["start"], pred["end"], pred["maps"], sigma=sigma, top_k=top_k,
                                           candidates=candidates)
    L = pred["start"].shape[1]
    proposals = {}
    for b, m in enumerate(meta):
        if m.get("pad"):  # the reader's padding duplicate of a video already in the evaluation
            continue
        duration = float(m["duration"])
        seconds = (segs[b, :counts[b]].double() / L * duration).clamp(0.0, duration).cpu().tolist()
        proposals[m["id"]] = [{"score": float(sc), "segment": seg}
                              for sc, seg in zip(scores[b, :counts[b]].cpu().tolist(), seconds)]
    if class_scores is None:
        return {"detections": {}, "proposals": proposals, "classifier": None}
    per_video, names, source = _class_scores(class_scores, classes, meta)
    detections = {}
    for m, cls in zip(meta, per_video):
        if m.get("pad"):
            continue
        top = torch.topk(cls, min(top_classes, cls.numel()))
        detections[m["id"]] = [{"label": names[c], "score": p["score"] * float(cs), "segment": p["segment"]}
                               for p in proposals[m["id"]] for cs, c in zip(top.values.tolist(), top.indices.tolist())]
    return {"detections": detections, "proposals": proposals, "classifier": source}


def result_json(results: Dict[str, list], classifier: Optional[str], version: str = "ANET v1.3, LoFi") -> dict:
    """ActivityNet result file content; ``external_data`` records which classifier produced the labels."""
    return {"version": version, "results": results, "external_data": {"used": classifier is not None,
                                                                      "classifier": classifier}}
