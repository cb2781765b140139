"""What every stage shares: the run context, the encoder a stage starts from, the loaders, optimizers and the
trainer built from the config, and the encoder a stage hands on (``<stage>/encoder.pt``)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from lofi.config import Config, OptimConfig, stage_key, to_dict
from lofi.data import build_loader
from lofi.data.remote import is_remote, read_manifest as read_remote
from lofi.engine import distributed as D
from lofi.engine.checkpoint import Checkpointer, atomic_save
from lofi.engine.logger import RunLogger
from lofi.engine.loop import Trainer
from lofi.fidelity import Fidelity
from lofi.models import encoder_from_config

from . import table
from .resume import resume_trainer


@dataclass
class Context:
    """A run: its config, process, logger, ``--resume`` (None, "auto" or a checkpoint path) and the stage running."""
    cfg: Config
    info: D.DistInfo
    log: RunLogger
    resume: Optional[str] = None
    stage: Optional[str] = None

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage_key(stage)


def read_manifest(shards: str) -> Dict[str, Any]:
    if is_remote(shards):
        return read_remote(shards)
    path = Path(shards) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{shards}: no manifest.json (make the shards with tools/make_shards.py)")
    return json.loads(path.read_text())


def full_fidelity(cfg: Config) -> Fidelity:
    f = cfg.fidelity
    return Fidelity(f.L, f.T, f.size, f.size, f.stride)


def make_optimizer(params, opt: OptimConfig, lr: Optional[float] = None):
    """SGD or Adam (L2 weight decay, as G-TAD) or AdamW (decoupled weight decay) with a StepLR stepped once per
    epoch."""
    lr = opt.lr if lr is None else lr
    if opt.name == "sgd":
        optimizer = torch.optim.SGD(params, lr=lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    else:
        kind = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
        optimizer = kind(params, lr=lr, weight_decay=opt.weight_decay)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, opt.step_size, opt.gamma)


def make_encoder(cfg: Config, weights: Optional[str]):
    """The registered encoder ``model.encoder`` with ``weights`` (None: random initialization)."""
    return encoder_from_config(cfg.model, weights)


def encoder_source(ctx: Context, stage: str) -> Optional[str]:
    """The encoder a stage starts from: the newest earlier stage's ``encoder.pt`` in this run (the table's
    ``encoder_from``), else model.weights."""
    for prev in table.get(stage).encoder_from:
        path = ctx.stage_dir(prev) / "encoder.pt"
        if path.is_file():
            return str(path)
    return ctx.cfg.model.weights


def loader_factory(ctx: Context, shards: str, subset: str, batch: int, schedule, train: bool, **kw):
    cfg, info = ctx.cfg, ctx.info
    kw = {"cache_dir": cfg.data.cache_dir, "cache_max_gib": cfg.data.cache_max_gib,
          "fetch_retries": cfg.data.fetch_retries, **kw}  # shards on a web or object store (lofi.data.remote)

    def make(epoch: int, start: int = 0):
        return build_loader(shards, subset, batch_size=batch, schedule=schedule, train=train, epoch=epoch,
                            seed=cfg.seed, backend=cfg.data.backend, num_workers=cfg.data.num_workers,
                            rank=info.rank, world_size=info.world_size, start=start,
                            max_corrupt_fraction=cfg.data.max_corrupt_fraction, **kw)
    return make


def make_trainer(ctx: Context, stage: str, *, modules: Dict[str, torch.nn.Module], step_fn: Callable,
                 loader_fn: Callable, optimizer, scheduler, epochs: int, accum_steps: int,
                 directory: Optional[Path] = None, config: Optional[dict] = None, **own) -> Trainer:
    """The Trainer of ``stage`` with everything the config decides (seed, checkpoints in ``directory``, default the
    stage's folder, logging, NaN guard, amp, the stage's gradient clipping; ``config``, default the run's, saved in its checkpoints); the stage
    passes its own pieces, and ``own`` the optional ``validate``/``select``/``minimize``/``prepare``/``describe``."""
    cfg, info = ctx.cfg, ctx.info
    return Trainer(stage=stage, modules=modules, step_fn=step_fn, loader_fn=loader_fn, optimizer=optimizer,
                   scheduler=scheduler, epochs=epochs, info=info,
                   checkpointer=Checkpointer(directory or ctx.stage_dir(stage), cfg.checkpoint.keep, info.is_main),
                   logger=ctx.log, seed=cfg.seed, accum_steps=accum_steps, max_bad_steps=cfg.max_bad_steps,
                   every_iters=cfg.checkpoint.every_iters, log_every=cfg.log.every_iters, amp=cfg.model.amp,
                   max_grad_norm=getattr(cfg, stage_key(stage)).optim.max_grad_norm,
                   config=to_dict(cfg) if config is None else config, **own)


def run_trainer(ctx: Context, trainer: Trainer) -> Trainer:
    """Resumes ``trainer`` as ``--resume`` asks (:mod:`lofi.stages.resume`), then trains it to the end."""
    resume_trainer(ctx, trainer)
    trainer.fit()
    return trainer


def export_encoder(ctx: Context, stage: str, encoder: torch.nn.Module) -> Path:
    """``<stage>/encoder.pt``: the encoder's state dict (``backbone.*`` keys), what the next stage loads."""
    path = ctx.stage_dir(stage) / "encoder.pt"
    if ctx.info.is_main:
        atomic_save({k: v.detach().cpu() for k, v in encoder.state_dict().items()}, path)
    D.barrier()
    return path


def batch_plan(ctx: Context, stage: str, batch_size) -> Tuple[int, int]:
    per, accum = D.split_batch(batch_size, ctx.info.world_size)
    ctx.log.info(f"[{stage}] global batch {batch_size} = {ctx.info.world_size} process(es) × {per} videos"
                 + (f" × {accum} accumulated micro-batches" if accum > 1 else ""))
    return per, accum
