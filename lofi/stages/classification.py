"""The ``acp`` and ``acp+`` stages: classification training of the encoder (ClipClassifier, cross-entropy) at one
fixed fidelity, on the clip set (acp) or on the target dataset's foreground segments (acp+)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F

from lofi.config import stage_key
from lofi.engine import distributed as D
from lofi.fidelity import Fidelity
from lofi.models import ClipClassifier

from .base import (Context, batch_plan, encoder_source, export_encoder, loader_factory, make_encoder, make_optimizer,
                   make_trainer, read_manifest, run_trainer)


def labels_of(meta: List[dict], key: str = "label_id") -> torch.Tensor:
    missing = [m.get("id") for m in meta if key not in m]
    if missing:
        raise KeyError(f"batch meta has no {key!r} for videos {missing[:5]} (classification shards or foreground=True)")
    return torch.tensor([int(m[key]) for m in meta])


def run(ctx: Context) -> Path:
    """ACP (clip shards) or ACP+ (the target's foreground segments), as ``ctx.stage``: cross-entropy on
    ClipClassifier; writes ``<stage>/encoder.pt``."""
    cfg, info, stage = ctx.cfg, ctx.info, ctx.stage
    sc = getattr(cfg, stage_key(stage))
    shards = cfg.data.clip_shards if stage == "acp" else cfg.data.shards
    manifest = read_manifest(shards)
    classes = manifest["classes"]
    init = encoder_source(ctx, stage)
    ctx.log.info(f"[{stage}] {len(classes)} classes from {shards}; encoder {cfg.model.encoder} from "
                 f"{init or 'random initialization'}")
    model = ClipClassifier(make_encoder(cfg, init), len(classes)).to(info.device)
    net = D.wrap_ddp(model, info, cfg.model.sync_bn)
    fid = Fidelity(sc.fidelity.L, sc.fidelity.T, sc.fidelity.size, sc.fidelity.size, sc.fidelity.stride)
    per, accum = batch_plan(ctx, stage, sc.batch_size)
    optimizer, scheduler = make_optimizer(model.parameters(), sc.optim)

    def step(batch, generator):
        logits = net(batch["frames"].to(info.device, non_blocking=True))
        labels = labels_of(batch["meta"]).to(info.device)
        loss = F.cross_entropy(logits, labels)
        return loss, {"acc": float((logits.argmax(1) == labels).float().mean())}

    trainer = make_trainer(ctx, stage, modules={"model": net}, step_fn=step,
                           loader_fn=loader_factory(ctx, shards, cfg.data.train_subset, per, lambda e, i: fid, True,
                                                    foreground=stage == "acp+"),
                           optimizer=optimizer, scheduler=scheduler, epochs=sc.epochs, accum_steps=accum,
                           describe=lambda b: str(b["fidelity"]))
    run_trainer(ctx, trainer)
    if cfg.data.val_subset in manifest.get("splits", {}):
        classification_accuracy(ctx, stage, model, loader_factory(ctx, shards, cfg.data.val_subset, per,
                                                                  lambda e, i: fid, False, foreground=stage == "acp+"))
    return export_encoder(ctx, stage, model.encoder)


def classification_accuracy(ctx: Context, stage: str, net: torch.nn.Module, loader_fn) -> Optional[float]:
    """Top-1 accuracy of ``net`` (unwrapped: no DDP collectives, so ranks may skip padding-only batches) on every clip
    of the validation loader (padding skipped, gathered over ranks);
    logged as ``metrics[stage]`` and returned on rank 0 (None elsewhere, or when the subset is empty)."""
    net.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in loader_fn(0):
            keep = [i for i, m in enumerate(batch["meta"]) if not m.get("pad")]
            if keep:
                logits = net(batch["frames"][keep].to(ctx.info.device, non_blocking=True))
                labels = labels_of([batch["meta"][i] for i in keep]).to(ctx.info.device)
                correct += int((logits.argmax(1) == labels).sum())
                total += len(keep)
    net.train()
    parts = D.gather_to_main((correct, total))
    if parts is None or not sum(t for _, t in parts):
        return None
    correct, total = sum(c for c, _ in parts), sum(t for _, t in parts)
    ctx.log.metrics(stage_key(stage), {"val_accuracy": correct / total, "val_clips": total})
    ctx.log.info(f"[{stage}] validation accuracy {100 * correct / total:.1f}% on {total} clips "
                 f"({ctx.cfg.data.val_subset})")
    return correct / total
