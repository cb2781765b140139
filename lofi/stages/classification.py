"""The ``acp`` and ``acp+`` stages: classification training of the encoder (ClipClassifier, cross-entropy) at one
fixed fidelity, on the clip set (acp) or on the target dataset's foreground segments (acp+)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

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
    shards = cfg.data.clip_shards if stage == "acp" else cfg.data.shards
    manifest = read_manifest(shards)
    classes = manifest["classes"]
    init = encoder_source(ctx, stage)
    ctx.log.info(f"[{stage}] {len(classes)} classes from {shards}; encoder {cfg.model.encoder} from "
                 f"{init or 'random initialization'}")
    model = ClipClassifier(make_encoder(cfg, init), len(classes)).to(info.device)

    def loss(net, batch):
        logits = net(batch["frames"].to(info.device, non_blocking=True))
        labels = labels_of(batch["meta"]).to(info.device)
        return F.cross_entropy(logits, labels), {"acc": float((logits.argmax(1) == labels).float().mean())}

    val_loader = train_on_clips(ctx, model, loss, shards, foreground=stage == "acp+")
    if cfg.data.val_subset in manifest.get("splits", {}):
        classification_accuracy(ctx, stage, model, val_loader)
    return export_encoder(ctx, stage, model.encoder)


def train_on_clips(ctx: Context, model: torch.nn.Module, loss_fn: Callable, shards: str, **loader_kw) -> Callable:
    """Trains ``model`` (on the device) as stage ``ctx.stage`` at its section's one fixed fidelity, epochs, batch size
    and optimizer, on the training subset of ``shards``; ``loss_fn(net, batch) -> (loss, logs)`` with ``net`` the
    DDP-wrapped model; ``loader_kw`` go to the loaders (foreground, pretext). Returns the factory of the same
    loader on the validation subset."""
    cfg, info, stage = ctx.cfg, ctx.info, ctx.stage
    sc = getattr(cfg, stage_key(stage))
    net = D.wrap_ddp(model, info, cfg.model.sync_bn)
    fid = Fidelity(sc.fidelity.L, sc.fidelity.T, sc.fidelity.size, sc.fidelity.size, sc.fidelity.stride)
    per, accum = batch_plan(ctx, stage, sc.batch_size)
    optimizer, scheduler = make_optimizer(model.parameters(), sc.optim)

    def loaders(subset: str, train: bool) -> Callable:
        return loader_factory(ctx, shards, subset, per, lambda e, i: fid, train, **loader_kw)

    trainer = make_trainer(ctx, stage, modules={"model": net}, step_fn=lambda batch, generator: loss_fn(net, batch),
                           loader_fn=loaders(cfg.data.train_subset, True), optimizer=optimizer, scheduler=scheduler,
                           epochs=sc.epochs, accum_steps=accum, describe=lambda b: str(b["fidelity"]))
    run_trainer(ctx, trainer)
    return loaders(cfg.data.val_subset, False)


def classification_accuracy(ctx: Context, stage: str, net: torch.nn.Module, loader_fn) -> Optional[float]:
    """Top-1 accuracy of ``net`` on every clip of the validation loader (:func:`heldout_accuracy`), logged as
    ``metrics[stage].val_accuracy`` and returned on rank 0 (None elsewhere, or when the subset is empty)."""
    def score(frames, meta):
        labels = labels_of(meta).to(ctx.info.device)
        return {"val_accuracy": (int((net(frames).argmax(1) == labels).sum()), len(meta))}
    result = heldout_accuracy(ctx, stage, net, loader_fn, score)
    return None if result is None else result["val_accuracy"]


def heldout_accuracy(ctx: Context, stage: str, net: torch.nn.Module, loader_fn,
                     score: Callable[[torch.Tensor, List[dict]], Dict[str, Tuple[int, int]]]
                     ) -> Optional[Dict[str, float]]:
    """Accuracies of ``net`` (unwrapped: no DDP collectives, so ranks may skip padding-only batches; in eval mode
    meanwhile) on every clip of the validation loader (padding skipped, gathered over ranks): ``score(frames, meta)``
    of a batch's real clips (frames on the device) returns {name: (correct, total)}. Logged as ``metrics[stage]``
    ({name: accuracy, val_clips}) and returned on rank 0 (None elsewhere, or when the subset is empty); a name with a
    ``/`` (a breakdown, e.g. per class) goes to the metrics but gets no log line of its own."""
    net.eval()
    counts: Dict[str, Tuple[int, int]] = {}
    clips = 0
    with torch.no_grad():
        for batch in loader_fn(0):
            keep = [i for i, m in enumerate(batch["meta"]) if not m.get("pad")]
            if keep:
                frames = batch["frames"][keep].to(ctx.info.device, non_blocking=True)
                for name, (correct, total) in score(frames, [batch["meta"][i] for i in keep]).items():
                    counts[name] = (counts.get(name, (0, 0))[0] + correct, counts.get(name, (0, 0))[1] + total)
                clips += len(keep)
    net.train()
    parts = D.gather_to_main((counts, clips))
    if parts is None or not sum(n for _, n in parts):
        return None
    clips = sum(n for _, n in parts)
    names = dict.fromkeys(name for c, _ in parts for name in c)
    result = {name: sum(c[name][0] for c, _ in parts if name in c) / sum(c[name][1] for c, _ in parts if name in c)
              for name in names}
    ctx.log.metrics(stage_key(stage), {**result, "val_clips": clips})
    for name, value in result.items():
        if "/" in name:
            continue
        ctx.log.info(f"[{stage}] validation {name.removeprefix('val_').replace('_', ' ')} {100 * value:.1f}% on "
                     f"{clips} clips ({ctx.cfg.data.val_subset})")
    return result
