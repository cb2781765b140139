"""The ``eval`` stage: validation detections in ActivityNet JSON, mAP per tIoU and average mAP (lofi.evaluation),
AR@AN, a uniform-random-proposal baseline scored the same way, the printed table, and the run's PNG plots.

The baseline replaces the head's outputs by uniform random ones of the same shapes (``TALHead.random_outputs``: for
G-TAD and BMN, start/end probabilities and maps), then runs the same post-processing (the head's candidates,
soft-NMS, top-k) and the same video-classifier fusion, so it measures what the localization adds over the classifier
alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from lofi.atomic import write_json
from lofi.config import ConfigError
from lofi.engine import distributed as D
from lofi.engine.checkpoint import atomic_save, state_hash
from lofi.engine.feature_cache import Entry, FeatureLoader
from lofi.engine.plots import plot_curves, plot_timelines
from lofi.evaluation import evaluate_detection, evaluate_proposals
from lofi.models.tal import load_head
from lofi.models.tal_head import TALHead
from lofi.postprocess import detect, result_json

from .base import Context, encoder_source, make_encoder
from .features import gt_database, predict, subset_features


def bundle_encoder_file(ctx: Context, bundle: Dict[str, Any], model_path: Path) -> str:
    """The encoder file the eval features come from; it holds exactly ``model.pt``'s encoder (the one its head was
    trained on): the run's frozen-encoder file, so the head stage's feature cache is reused, or, when the run has
    none, model.pt's encoder written to ``eval/encoder.pt``. ConfigError when the run's encoder file holds other
    weights (an earlier stage ran again, or model.weights changed, since the head stage)."""
    cfg = ctx.cfg
    path = encoder_source(ctx, "head")
    if path is None and (ctx.stage_dir("head") / "encoder.pt").is_file():  # the head stage's random encoder
        path = str(ctx.stage_dir("head") / "encoder.pt")
    if path is None:
        path = str(ctx.stage_dir("eval") / "encoder.pt")
        if ctx.info.is_main:
            atomic_save(bundle["encoder"], path)
        D.barrier()
        return path
    if bundle["encoder_name"] != cfg.model.encoder or \
            state_hash(make_encoder(cfg, path).state_dict()) != state_hash(bundle["encoder"]):
        raise ConfigError(f"--stage eval: {model_path}'s head was trained on the features of another encoder than "
                          f"the run's current one, {path} (an earlier stage ran again, or model.weights changed, "
                          "since the head stage); run the head stage again (--stage head --overwrite) to pair a "
                          "head with this encoder")
    return path


def random_detections(head: TALHead, entries: Dict[str, Entry], class_scores: Dict[str, List[float]],
                      classes: List[str], ctx: Context) -> Dict[str, list]:
    """Detections from ``head``'s uniform random outputs (seeded by eval.baseline_seed) with the model's class
    scores."""
    g = torch.Generator().manual_seed(ctx.cfg.eval.baseline_seed)
    out: Dict[str, list] = {}
    for batch in FeatureLoader(entries, 16, False):
        meta = [m for m in batch["meta"] if not m["pad"]]
        pred = head.random_outputs(len(meta), batch["features"].shape[-1], g)
        scores = torch.tensor([class_scores[m["id"]] for m in meta])
        out.update(detect(head, pred, meta, ctx.cfg.postprocess, class_scores=scores, classes=classes)["detections"])
    return out


def table(tious: List[float], rows: Dict[str, Dict[str, Any]]) -> str:
    head = "| method | " + " | ".join(f"mAP@{t:g}" for t in tious) + " | average mAP |"
    lines = [head, "|" + "---|" * (len(tious) + 2)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * v:.2f}" for v in r["mAP"]) + f" | {100 * r['average_mAP']:.2f} |")
    return "\n".join(lines)


def run(ctx: Context, model_path: Optional[Path] = None) -> Optional[Dict[str, Any]]:
    """Evaluates ``model.pt`` on the validation subset; returns the metrics on rank 0 (None elsewhere)."""
    cfg, info = ctx.cfg, ctx.info
    model_path = model_path or ctx.run_dir / "model.pt"
    model, bundle = load_head(model_path, info.device)
    val = subset_features(ctx, cfg.data.val_subset, bundle_encoder_file(ctx, bundle, model_path))
    result = predict(model, val, ctx, bundle["classes"])
    if not info.is_main:
        D.barrier()
        return None
    out = ctx.stage_dir("eval")
    gt = gt_database(val, "validation")
    write_json(result_json(result["detections"], result["classifier"]), out / "detections.json")
    write_json(result_json(result["proposals"], None), out / "proposals.json")
    ev = evaluate_detection(gt, {"results": result["detections"]}, subset="validation", tiou_thresholds=cfg.eval.tiou,
                             ignore_unknown_labels=True)
    prop = evaluate_proposals(gt, {"results": result["proposals"]}, subset="validation")
    random = random_detections(model.localizer, val, result["class_scores"], bundle["classes"], ctx)
    base = evaluate_detection(gt, {"results": random}, subset="validation", tiou_thresholds=cfg.eval.tiou,
                              ignore_unknown_labels=True)
    rows = {"LoFi (this run)": ev, "uniform random proposals": base}
    metrics = {"average_mAP": float(ev["average_mAP"]), "mAP": [float(v) for v in ev["mAP"]],
               "tiou_thresholds": list(cfg.eval.tiou), "classifier": result["classifier"],
               "AR@AN": {str(k): float(v) for k, v in prop["AR@AN"].items()}, "AUC": float(prop["AUC"]),
               "baseline_average_mAP": float(base["average_mAP"]), "num_videos": len(val),
               "ratio_to_baseline": float(ev["average_mAP"]) / max(float(base["average_mAP"]), 1e-12)}
    ctx.log.metrics("eval", metrics)
    videos = [dict(val[v][1], id=v) for v in sorted(val)[:cfg.eval.num_timelines]]
    plots = [plot_timelines(videos, result["detections"], out / "timelines.png"),
             plot_curves(ctx.run_dir / "log.jsonl", ctx.run_dir / "curves.png")]
    ar = ", ".join(f"AR@{k} {100 * metrics['AR@AN'][str(k)]:.1f}" for k in (1, 10, 100) if str(k) in metrics["AR@AN"])
    ctx.log.info(f"\n{len(val)} validation videos; class scores from: {result['classifier']}\n"
                 f"{table(list(cfg.eval.tiou), rows)}\n"
                 f"average mAP {100 * metrics['average_mAP']:.2f} vs uniform-random-proposal baseline "
                 f"{100 * metrics['baseline_average_mAP']:.2f} ({metrics['ratio_to_baseline']:.1f}×); {ar}\n"
                 f"detections: {out / 'detections.json'}; plots: {', '.join(str(p) for p in plots)}")
    D.barrier()
    return metrics
