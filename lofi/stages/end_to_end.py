"""The ``lofi`` stage: encoder + localization head trained end to end on the TAL loss; every batch's fidelity comes
from the LoFi schedule (never the full one)."""
from __future__ import annotations

from pathlib import Path

from lofi.config import Config
from lofi.engine import distributed as D
from lofi.engine.global_loss import GlobalBatchLoss
from lofi.engine.memory import auto_micro_batch
from lofi.fidelity import LoFiSchedule
from lofi.models import head_from_config
from lofi.models.tal import EndToEnd

from .base import (Context, batch_plan, encoder_source, export_encoder, full_fidelity, loader_factory, make_encoder,
                   make_optimizer, make_trainer, run_trainer)


def lofi_schedule(cfg: Config) -> LoFiSchedule:
    s = cfg.lofi.schedule
    return LoFiSchedule(s.mode, full_fidelity(cfg), r_t=s.r_t, r_s=s.r_s, st_r_t=s.st_r_t, st_r_s=s.st_r_s,
                        c_s=s.c_s, c_l=s.c_l)


def run(ctx: Context) -> Path:
    """Encoder + head end to end on the TAL loss; every batch's fidelity comes from the LoFi schedule. Writes
    ``lofi/encoder.pt``."""
    cfg, info = ctx.cfg, ctx.info
    schedule = lofi_schedule(cfg)
    init = encoder_source(ctx, "lofi")
    ctx.log.info(f"[lofi] {schedule}; encoder from {init or 'random initialization'}")
    encoder = make_encoder(cfg, init)
    model = EndToEnd(encoder, head_from_config(cfg, encoder.out_dim)).to(info.device)
    if cfg.lofi.batch_size == "auto":
        fit = auto_micro_batch(model, schedule.fidelities(), cfg.lofi.memory_budget_gib, info.device)
        per, accum = D.split_batch(cfg.lofi.auto_global_batch, info.world_size, max_per_process=fit)
        ctx.log.info(f"[lofi] batch_size auto: {fit} videos fit {cfg.lofi.memory_budget_gib} GiB per process; "
                     f"global batch {cfg.lofi.auto_global_batch} = {info.world_size} × {per} × {accum} accumulated")
    else:
        per, accum = batch_plan(ctx, "lofi", cfg.lofi.batch_size)
    net = D.wrap_ddp(model, info, cfg.model.sync_bn)
    optimizer, scheduler = make_optimizer(model.parameters(), cfg.lofi.optim)
    global_loss = GlobalBatchLoss(info, accum, lambda batch: batch["frames"].shape[1], model.head)

    def step(batch, generator):
        pred = net(batch["frames"].to(info.device, non_blocking=True))
        losses = global_loss(pred, batch)
        return losses["loss"], {k: float(losses[k].detach()) for k in model.head.loss_terms}

    # One optimizer step = `accum` loader batches: the schedule counts optimizer steps (mini-batches of the global batch).
    trainer = make_trainer(ctx, "lofi", modules={"model": net}, step_fn=step,
                           loader_fn=loader_factory(ctx, cfg.data.shards, cfg.data.train_subset, per,
                                                    lambda e, i: schedule(e, i // accum), True),
                           optimizer=optimizer, scheduler=scheduler, epochs=cfg.lofi.epochs, accum_steps=accum,
                           describe=lambda b: str(b["fidelity"]), prepare=global_loss.prepare)
    run_trainer(ctx, trainer)
    return export_encoder(ctx, "lofi", model.encoder)
