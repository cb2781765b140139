"""The ``head`` stage: a fresh localization head (``model.head``) + video classifier on frozen full-fidelity features
(G-TAD's recipe), trained at one lr or each of ``head.lr_search``; the epoch (and lr) picked by ``head.select``. Writes the
run's ``model.pt`` (encoder, head, classes, config)."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

from lofi.config import ConfigError, to_dict
from lofi.engine import distributed as D
from lofi.engine.checkpoint import atomic_save, load
from lofi.engine.feature_cache import FeatureLoader
from lofi.engine.global_loss import GlobalBatchLoss
from lofi.hashing import sha256_file
from lofi.models.tal import build_head_model

from .base import (Context, batch_plan, encoder_source, export_encoder, make_encoder, make_optimizer, make_trainer,
                   run_trainer)
from .features import class_names, gt_database, predict, score, subset_features


def video_label_targets(meta: List[dict], num_classes: int) -> torch.Tensor:
    """(B, K) target distribution: the video's annotated classes, equally weighted."""
    t = torch.zeros(len(meta), num_classes)
    for b, m in enumerate(meta):
        ids = sorted({int(a["label_id"]) for a in m["annotations"]})
        if ids:
            t[b, ids] = 1.0 / len(ids)
    return t

def frozen_encoder_file(ctx: Context) -> str:
    """The encoder the head stage freezes: the previous stage's encoder.pt or model.weights; with neither, a seeded
    random initialization written to head/encoder.pt (the ICP-without-ImageNet analogue)."""
    path = encoder_source(ctx, "head")
    if path is not None:
        return path
    torch.manual_seed(ctx.cfg.seed)
    ctx.log.info("[head] no earlier stage and no model.weights: the frozen encoder is randomly initialized")
    return str(export_encoder(ctx, "head", make_encoder(ctx.cfg, None)))


# head.select → (the validation metric, whether lower is better)
SELECT = {"val_loss": ("val_loss", True), "val_map": ("average_mAP", False)}


def head_picks(runs: List[Tuple[float, List[Dict[str, Any]]]]) -> Dict[str, Dict[str, Any]]:
    """[(lr, per-epoch validation history)] → {criterion of SELECT: {lr, epoch, val_loss, val_average_mAP}}: the
    epoch (and lr) each criterion picks, the first of ties in (lr, epoch) order, as the Trainer's ``best.pt``."""
    picks = {}
    for name, (key, lower) in SELECT.items():
        rows = [(row[key], lr, row) for lr, history in runs for row in history if math.isfinite(row.get(key, math.nan))]
        if not rows:
            raise RuntimeError(f"head: no finite validation {key} to select an epoch by (head.epochs = 0?)")
        best = (min if lower else max)(r[0] for r in rows)
        _, lr, row = next(r for r in rows if r[0] == best)
        picks[name] = {"lr": lr, "epoch": row["epoch"], "val_loss": row["val_loss"],
                       "val_average_mAP": row["average_mAP"]}
    return picks


def lr_context(ctx: Context, directory: Path, lr: float) -> Context:
    """The context of the head stage's training at ``lr`` under head.lr_search: an explicit ``--resume PATH`` belongs
    to the learning rate it was trained at (its StepLR base lr; ConfigError when the search has no such rate); every
    other rate resumes its own ``last.pt`` in ``directory`` when it has one, and starts afresh otherwise."""
    search = ctx.cfg.head.lr_search
    if not search or ctx.resume in (None, "auto"):
        return ctx
    trained = load(ctx.resume)["scheduler"]["base_lrs"][0]
    if not any(math.isclose(trained, r) for r in search):
        raise ConfigError(f"--resume {ctx.resume}: trained at lr {trained:g}, which head.lr_search {search} does not "
                          "hold")
    if math.isclose(trained, lr):
        return ctx
    own = directory / "last.pt"
    return replace(ctx, resume=str(own) if own.is_file() else None)


def run(ctx: Context) -> Path:
    """Fresh localization head + video classifier on frozen full-fidelity features; the epoch (and lr) by ``head.select``:
    the lowest validation loss (G-TAD's criterion) or the highest validation average mAP; both picks are reported."""
    cfg, info = ctx.cfg, ctx.info
    encoder_path = frozen_encoder_file(ctx)
    train = subset_features(ctx, cfg.data.train_subset, encoder_path)
    val = subset_features(ctx, cfg.data.val_subset, encoder_path)
    classes = class_names(cfg)
    gt = gt_database(val, "validation")
    in_dim = next(iter(train.values()))[0].shape[0]
    per, accum = batch_plan(ctx, "head", cfg.head.batch_size)
    metric, lower = SELECT[cfg.head.select]
    runs, dirs = [], {}
    # The features' encoder belongs to the recipe: --resume auto never continues a head trained on another one.
    saved_config = dict(to_dict(cfg), head_encoder_sha256=sha256_file(encoder_path))
    for lr in cfg.head.lr_search or [cfg.head.optim.lr]:
        directory = ctx.stage_dir("head") / (f"lr{lr:g}" if cfg.head.lr_search else "")
        torch.manual_seed(cfg.seed)
        model = build_head_model(cfg, in_dim, len(classes)).to(info.device)
        net = D.wrap_ddp(model, info)
        optimizer, scheduler = make_optimizer(model.parameters(), cfg.head.optim, lr)
        global_loss = GlobalBatchLoss(info, accum, lambda batch: batch["features"].shape[-1], model.localizer)

        def step(batch, generator, net=net, global_loss=global_loss):
            pred, logits = net(batch["features"].to(info.device, non_blocking=True))
            tal = global_loss(pred, batch)
            target = video_label_targets(batch["meta"], len(classes)).to(info.device)
            cls = -(target * logits.log_softmax(1)).sum(1).mean()
            return tal["loss"] + cls, {"tal": float(tal["loss"].detach()), "video_cls": float(cls.detach())}

        def validate(epoch, model=model):
            return score(ctx, predict(model, val, ctx, classes), gt)

        trainer = make_trainer(ctx, "head", modules={"model": net}, step_fn=step,
                               loader_fn=lambda e, start: FeatureLoader(train, per, True, info.rank, info.world_size,
                                                                        seed=cfg.seed, epoch=e, start=start),
                               optimizer=optimizer, scheduler=scheduler, epochs=cfg.head.epochs, accum_steps=accum,
                               directory=directory, config=saved_config, validate=validate, select=metric,
                               minimize=lower, prepare=global_loss.prepare)
        run_trainer(lr_context(ctx, directory, lr), trainer)
        runs.append((lr, trainer.state.history))
        dirs[lr] = directory
        by = head_picks(runs[-1:])
        ctx.log.info(f"[head] lr {lr:g}: lowest validation loss {by['val_loss']['val_loss']:.4f} (epoch "
                     f"{by['val_loss']['epoch']}), best validation average mAP {by['val_map']['val_average_mAP']:.4f} "
                     f"(epoch {by['val_map']['epoch']})")
    picks = head_picks(runs)
    pick, (other, other_pick) = picks[cfg.head.select], next((k, v) for k, v in picks.items() if k != cfg.head.select)
    ctx.log.info(f"[head] selected by {cfg.head.select}: lr {pick['lr']:g}, epoch {pick['epoch']} (validation loss "
                 f"{pick['val_loss']:.4f}, average mAP {pick['val_average_mAP']:.4f}); {other} would pick lr "
                 f"{other_pick['lr']:g}, epoch {other_pick['epoch']} (validation loss {other_pick['val_loss']:.4f}, "
                 f"average mAP {other_pick['val_average_mAP']:.4f})")
    path = ctx.run_dir / "model.pt"
    if info.is_main:
        head_state = load(dirs[pick["lr"]] / "best.pt")["models"]["model"]
        atomic_save({"encoder": make_encoder(cfg, encoder_path).state_dict(), "encoder_name": cfg.model.encoder,
                     "head_name": cfg.model.head, "head": head_state,
                     "in_dim": in_dim, "classes": classes, "config": to_dict(cfg), "lr": pick["lr"],
                     "epoch": pick["epoch"], "select": cfg.head.select,
                     "val_average_mAP": pick["val_average_mAP"]}, path)
        ctx.log.metrics("head", {"select": cfg.head.select, **pick, "picks": picks,
                                 "lr_search": {f"{lr:g}": head_picks([(lr, h)]) for lr, h in runs}})
    D.barrier()
    return path
