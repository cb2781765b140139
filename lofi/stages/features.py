"""Snippet features and their scoring, shared by the head and eval stages (and tools/extract_features.py): a
subset's features from the frozen encoder through the feature cache (or external features), the detections a
HeadModel predicts on them, and their ActivityNet mAP."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from lofi.config import Config
from lofi.data.annotations import load_annotations
from lofi.data.remote import fetch_file, is_remote, manifest_sha256
from lofi.engine import distributed as D
from lofi.engine.feature_cache import Entry, FeatureCache, FeatureLoader, load_external
from lofi.evaluation import evaluate_detection
from lofi.hashing import sha256_file
from lofi.models.tal import HeadModel
from lofi.postprocess import detect, load_cuhk

from .base import Context, full_fidelity, loader_factory, make_encoder, read_manifest


def shards_hash(shards: str) -> str:
    """What identifies a shard directory (local or remote): its manifest's hash, else its name."""
    if is_remote(shards):
        return manifest_sha256(shards)
    manifest = Path(shards) / "manifest.json"
    return sha256_file(manifest) if manifest.is_file() else str(shards)


@torch.no_grad()
def extract_batches(encoder: torch.nn.Module, loader, device: torch.device):
    """(features (B, C, L) on the CPU, meta) for each batch of an evaluation loader, the encoder in eval mode."""
    encoder.eval()
    for batch in loader:
        yield encoder(batch["frames"].to(device, non_blocking=True)).float().cpu(), batch["meta"]


def subset_features(ctx: Context, subset: str, encoder_path: str) -> Dict[str, Entry]:
    """{id: (features (C, L), meta)} of a subset: external features (head.features), or the feature cache, built
    at full fidelity with the frozen encoder when missing or when the encoder or fidelity changed."""
    cfg, info = ctx.cfg, ctx.info
    if cfg.head.features:
        metas = {vid: m for vid, m in annotation_metas(cfg).items() if m.get("subset") == subset}
        features = cfg.head.features
        if is_remote(features):
            features = fetch_file(features, cfg.data.cache_dir, cfg.data.fetch_retries)
        return load_external(features, metas, cfg.fidelity.L, cfg.head.feature_layout, cfg.head.video_info)
    fid = full_fidelity(cfg)
    key = {"encoder": sha256_file(encoder_path), "encoder_name": cfg.model.encoder, "fidelity": str(fid), "subset": subset,
           "shards": shards_hash(cfg.data.shards)}
    cache = FeatureCache(Path(cfg.head.cache_dir or ctx.run_dir / "features") / subset, key)
    if not D.broadcast_object(cache.valid()):  # rank 0 decides, so every rank takes the same (collective) path
        ctx.log.info(f"[head] extracting {subset} features at {fid} into {cache.dir}")
        encoder = make_encoder(cfg, encoder_path).to(info.device)
        per = max(1, cfg.head.batch_size // info.world_size)
        loader = loader_factory(ctx, cfg.data.shards, subset, per, lambda e, i: fid, False)(0)
        cache.build(extract_batches(encoder, loader, info.device), info, cfg.head.cache_shard_size)
        if getattr(loader, "corrupt", None):
            ctx.log.info(f"[head] skipped corrupt samples: {loader.corrupt}")
    else:
        ctx.log.info(f"[head] reusing cached {subset} features in {cache.dir} (same encoder and fidelity)")
    return cache.load()


def annotation_metas(cfg: Config) -> Dict[str, Dict[str, Any]]:
    """{id: {id, subset, duration (s), annotations [{segment, label, label_id}]}} from head.annotations (any format
    lofi.data.annotations reads), for external features."""
    ann = load_annotations(cfg.head.annotations)
    missing = [r.id for r in ann.records if r.duration is None]
    if missing:
        raise ValueError(f"head.annotations: {cfg.head.annotations} gives no duration for videos {missing[:10]}")
    return {r.id: {"id": r.id, "subset": r.subset, "duration": float(r.duration),
                   "annotations": [{"segment": [a.start, a.end], "label": a.label, "label_id": ann.label_ids[a.label]}
                                   for a in r.annotations]} for r in ann.records}


def class_names(cfg: Config) -> List[str]:
    if cfg.head.features and cfg.head.annotations:
            return load_annotations(cfg.head.annotations).classes
    return read_manifest(cfg.data.shards)["classes"]


def predict(model: HeadModel, entries: Dict[str, Entry], ctx: Context, classes: List[str]) -> Dict[str, Any]:
    """Detections + proposals for every video of ``entries`` (gathered on rank 0; None elsewhere) and the mean loss."""
    cfg, info = ctx.cfg, ctx.info
    pp = cfg.postprocess
    model.eval()
    loader = FeatureLoader(entries, max(1, cfg.head.batch_size // info.world_size), False, info.rank, info.world_size)
    out = {"detections": {}, "proposals": {}, "classifier": None, "loss": [], "class_scores": {}}
    external = load_cuhk(pp.classifier_file) if pp.classifier_file else None
    generator = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        for batch in loader:
            keep = [i for i, m in enumerate(batch["meta"]) if not m["pad"]]
            feats, meta = batch["features"][keep].to(info.device), [batch["meta"][i] for i in keep]
            if not meta:
                continue
            pred, logits = model(feats)
            probs = logits.softmax(1)
            scores = external or probs
            res = detect(model.localizer, pred, meta, pp, class_scores=scores, classes=classes)
            out["detections"].update(res["detections"])
            out["proposals"].update(res["proposals"])
            out["classifier"] = res["classifier"]
            out["class_scores"].update({m["id"]: p.tolist() for m, p in zip(meta, probs.cpu())})
            if all(m.get("annotations") is not None for m in meta):
                loss = model.localizer.batch_loss(pred, meta, feats.shape[-1], generator)["loss"]
                out["loss"].append(float(loss) * len(meta))
    parts = D.gather_to_main(out)
    if parts is None:
        return None
    merged = {"detections": {}, "proposals": {}, "class_scores": {}, "classifier": parts[0]["classifier"]}
    losses = []
    for p in parts:
        for k in ("detections", "proposals", "class_scores"):
            merged[k].update(p[k])
        losses += p["loss"]
    merged["loss"] = sum(losses) / max(1, len(merged["detections"]) or len(merged["proposals"]))
    return merged


def gt_database(entries: Dict[str, Entry], subset: str) -> Dict[str, Any]:
    """ActivityNet-format ground truth of the cached videos (for lofi.evaluation)."""
    return {"database": {vid: {"subset": subset, "duration": float(m["duration"]),
                               "annotations": [{"segment": list(a["segment"]), "label": a["label"]}
                                               for a in m["annotations"]]}
                         for vid, (_, m) in entries.items()}}


def score(ctx: Context, result: Optional[Dict[str, Any]], gt: Dict[str, Any]) -> Dict[str, Any]:
    """Average mAP, mAP per tIoU and validation loss of rank 0's ``result``, broadcast to every rank. Predicted
    classes absent from the validation GT (possible on a small benchmark) are ignored, as they cannot match."""
    metrics = None
    if result is not None:
        ev = evaluate_detection(gt, {"results": result["detections"]}, subset="validation",
                                tiou_thresholds=ctx.cfg.eval.tiou, ignore_unknown_labels=True)
        metrics = {"average_mAP": float(ev["average_mAP"]), "mAP": [float(v) for v in ev["mAP"]],
                   "val_loss": float(result["loss"])}
    return D.broadcast_object(metrics)
