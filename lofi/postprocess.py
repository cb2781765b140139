"""Post-processing: a localization head's outputs → ActivityNet-format detections.

1. The head's class-agnostic proposals (``TALHead.proposals``: its candidates, soft-NMS by the ``postprocess``
   section, top-k per video), in normalized time.
2. Seconds = normalized time · duration, clipped to [0, duration]; proposals shorter than ``min_duration_s`` dropped.
3. Video-level classification fusion: each of the top-2 classes × each proposal (score product) → ≤ 2·top_k
   detections per video. Class scores come from an external CUHK-format file (the video-level scores G-TAD uses)
   or from the caller's (B, K) probabilities, e.g. ``lofi.models.VideoClassifier`` softmax outputs.
"""
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch


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


def detect(head, pred: Dict[str, torch.Tensor], meta: List[dict], pp, *,
           class_scores: Union[torch.Tensor, str, os.PathLike, dict, None] = None,
           classes: Optional[Sequence[str]] = None) -> dict:
    """A batch's outputs of ``head`` (a ``lofi.models.tal_head.TALHead``) + the reader's meta (``id``, ``duration``
    s) → ActivityNet-format results, by the ``postprocess`` config section ``pp``. Videos marked ``pad`` (the
    reader's padding duplicates) are left out.

    ``class_scores``: (B, K) probabilities with ``classes`` (K names), a CUHK-format file path, or ``load_cuhk``'s
    output; None gives proposals only. Returns {"detections": {vid: [{label, score, segment}]} (≤ top_classes·top_k
    per video), "proposals": {vid: [{score, segment}]} (class-agnostic, for AR@AN), "classifier": description or
    None}.
    """
    segs, scores, counts = head.proposals(pred, pp)
    proposals = {}
    for b, m in enumerate(meta):
        if m.get("pad"):  # the reader's padding duplicate of a video already in the evaluation
            continue
        duration = float(m["duration"])
        seconds = (segs[b, :counts[b]] * duration).clamp(0.0, duration)
        keep = seconds[:, 1] - seconds[:, 0] >= pp.min_duration_s
        proposals[m["id"]] = [{"score": float(sc), "segment": seg} for sc, seg, k in
                              zip(scores[b, :counts[b]].cpu().tolist(), seconds.cpu().tolist(), keep.tolist()) if k]
    if class_scores is None:
        return {"detections": {}, "proposals": proposals, "classifier": None}
    per_video, names, source = _class_scores(class_scores, classes, meta)
    detections = {}
    for m, cls in zip(meta, per_video):
        if m.get("pad"):
            continue
        top = torch.topk(cls, min(pp.top_classes, cls.numel()))
        detections[m["id"]] = [{"label": names[c], "score": p["score"] * float(cs), "segment": p["segment"]}
                               for p in proposals[m["id"]] for cs, c in zip(top.values.tolist(), top.indices.tolist())]
    return {"detections": detections, "proposals": proposals, "classifier": source}


def result_json(results: Dict[str, list], classifier: Optional[str], version: str = "ANET v1.3, LoFi") -> dict:
    """ActivityNet result file content; ``external_data`` records which classifier produced the labels."""
    return {"version": version, "results": results, "external_data": {"used": classifier is not None,
                                                                      "classifier": classifier}}
