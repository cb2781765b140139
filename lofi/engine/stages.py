"""The paper's stages on top of the shared loop: ``acp``/``acp+`` (classification), ``lofi`` (encoder + G-TAD end to
end at low fidelity), ``head`` (frozen encoder, cached full-fidelity features, fresh G-TAD + video classifier) and
``eval`` (detections, ActivityNet mAP, AR@AN, plots). Each stage writes ``work_dirs/NAME/<stage>/`` and the next one
reads the previous stage's ``encoder.pt`` (encoder state dict) or the head's ``model.pt``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from lofi.config import RESUME_FREE, Config, ConfigError, OptimConfig, config_changes, stage_key, to_dict, upgrade
from lofi.fidelity import Fidelity, LoFiSchedule

from . import distributed as D
from lofi.hashing import sha256_file

from .checkpoint import Checkpointer, atomic_save, load
from .feature_cache import Entry, FeatureCache, FeatureLoader, load_external
from .global_loss import GlobalBatchLoss
from .logger import RunLogger
from .loop import Trainer


@dataclass
class Context:
    cfg: Config
    info: D.DistInfo
    log: RunLogger
    resume: Optional[str] = None  # None, "auto" or a checkpoint path

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage_key(stage)


# ------------------------------------------------------------------------------------------------------- helpers

def read_manifest(shards: str) -> Dict[str, Any]:
    from lofi.data.remote import is_remote, read_manifest as read_remote
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
    """SGD or Adam (L2 weight decay, as G-TAD) with a StepLR stepped once per epoch."""
    lr = opt.lr if lr is None else lr
    if opt.name == "sgd":
        optimizer = torch.optim.SGD(params, lr=lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    else:
        optimizer = torch.optim.Adam(params, lr=lr, weight_decay=opt.weight_decay)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, opt.step_size, opt.gamma)


def make_encoder(cfg: Config, weights: Optional[str]):
    from lofi.models import build_encoder
    m = cfg.model
    return build_encoder(m.encoder, weights=weights, frozen_bn=m.frozen_bn, channels_last=m.channels_last,
                         checkpoint_chunks=m.checkpoint_chunks, amp=m.amp)


ENCODER_SOURCES = {"acp": (), "acp+": ("acp",), "lofi": ("acp+", "acp"), "head": ("lofi", "acp+", "acp")}


def encoder_source(ctx: Context, stage: str) -> Optional[str]:
    """The encoder a stage starts from: the newest earlier stage's ``encoder.pt`` in this run, else model.weights."""
    for prev in ENCODER_SOURCES[stage]:
        path = ctx.stage_dir(prev) / "encoder.pt"
        if path.is_file():
            return str(path)
    return ctx.cfg.model.weights


def shards_hash(shards: str) -> str:
    """What identifies a shard directory (local or remote): its manifest's hash, else its name."""
    from lofi.data.remote import is_remote, manifest_sha256
    if is_remote(shards):
        return manifest_sha256(shards)
    manifest = Path(shards) / "manifest.json"
    return sha256_file(manifest) if manifest.is_file() else str(shards)


def labels_of(meta: List[dict], key: str = "label_id") -> torch.Tensor:
    missing = [m.get("id") for m in meta if key not in m]
    if missing:
        raise KeyError(f"batch meta has no {key!r} for videos {missing[:5]} (classification shards or foreground=True)")
    return torch.tensor([int(m[key]) for m in meta])


def loader_factory(ctx: Context, shards: str, subset: str, batch: int, schedule, train: bool, **kw):
    from lofi.data import build_loader
    cfg, info = ctx.cfg, ctx.info
    kw = {"cache_dir": cfg.data.cache_dir, "cache_max_gib": cfg.data.cache_max_gib,
          "fetch_retries": cfg.data.fetch_retries, **kw}  # shards on a web or object store (lofi.data.remote)

    def make(epoch: int, start: int = 0):
        return build_loader(shards, subset, batch_size=batch, schedule=schedule, train=train, epoch=epoch,
                            seed=cfg.seed, backend=cfg.data.backend, num_workers=cfg.data.num_workers,
                            rank=info.rank, world_size=info.world_size, start=start,
                            max_corrupt_fraction=cfg.data.max_corrupt_fraction, **kw)
    return make


# The sections a stage's result does not depend on (those of the stages after it).
DOWNSTREAM = {"acp": ("acp_plus", "lofi", "head", "postprocess", "eval"),
              "acp+": ("lofi", "head", "postprocess", "eval"), "lofi": ("head", "postprocess", "eval"), "head": ()}


def resume_state(ctx: Context, ckpt: Checkpointer, stage: str, config: Optional[dict] = None
                 ) -> Optional[Dict[str, Any]]:
    """The checkpoint to resume ``stage`` from: ``--resume PATH``, or its last.pt under ``--resume auto``. Its saved
    config is compared with ``config`` (what this run's checkpoints will hold; default: the run's config).
    ``auto`` refuses (ConfigError) a checkpoint written with a config that differs in a key the stage depends on, so
    a finished or half-trained stage is never continued under another recipe; an explicit PATH is taken and the
    changed keys apply from its position on (:func:`run_trainer`), except a changed optimizer type, which cannot
    (ConfigError)."""
    if ctx.resume is None:
        return None
    path = ckpt.latest() if ctx.resume == "auto" else Path(ctx.resume)
    if path is None:
        return None
    state = load(path)
    saved = state.get("config")
    changes = [] if saved is None else config_changes(upgrade(saved), config or to_dict(ctx.cfg),
                                                      (*RESUME_FREE, *DOWNSTREAM[stage]))
    if changes and ctx.resume == "auto":
        raise ConfigError(f"--resume auto: {path} was written with another config ({'; '.join(changes)}). Start a "
                          f"new run (another name= or work_dir=), delete {ckpt.dir}, or resume from it on "
                          "purpose with --resume PATH")
    fixed = [c for c in changes if c.startswith(f"{stage_key(stage)}.optim.name:")]
    if fixed:
        raise ConfigError(f"--resume {path}: {'; '.join(fixed)} cannot apply to a resumed optimizer; keep the "
                          "checkpoint's value, or start the stage afresh with --overwrite")
    if changes:
        ctx.log.info(f"[{stage}] resuming {path}, written with another config; from its position on, this run "
                     f"applies: {'; '.join(changes)}"
                     + ("" if stage == "head" or not any(c.startswith("model.weights:") for c in changes) else
                        " (model.weights only initializes a stage: the checkpoint's weights replace it)"))
    return state


def optimizer_recipe(optimizer, scheduler) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """(each param group's hyperparameters but its current lr, the StepLR's step_size/gamma/base_lrs)."""
    groups = [{k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")} for g in optimizer.param_groups]
    return groups, {"step_size": scheduler.step_size, "gamma": scheduler.gamma, "base_lrs": list(scheduler.base_lrs)}


def apply_recipe(optimizer, scheduler, recipe: Tuple[List[Dict[str, Any]], Dict[str, Any]]) -> List[str]:
    """Puts ``recipe`` (:func:`optimizer_recipe` of this run's fresh optimizer) over what a checkpoint restored, only
    where they differ (so a resume under the same recipe stays bit-exact): every param-group hyperparameter, the
    StepLR's step size, gamma and base lr, the current lr then following StepLR at the restored epoch.
    Returns ``"name: old -> new"`` for each value changed."""
    groups, sched = recipe
    applied = []
    for group, want in zip(optimizer.param_groups, groups):
        for key, value in want.items():
            if group.get(key) != value:
                applied.append(f"{key}: {group.get(key)!r} -> {value!r}")
                group[key] = value
    changed = {key: value for key, value in sched.items() if getattr(scheduler, key) != value}
    for key, value in changed.items():
        applied.append(f"{key}: {getattr(scheduler, key)!r} -> {value!r}")
        setattr(scheduler, key, value)
    if changed:
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["initial_lr"] = base
            group["lr"] = base * scheduler.gamma ** (scheduler.last_epoch // scheduler.step_size)
    return applied


def keep_best(source: Path, trainer: Trainer) -> None:
    """After resuming from ``source``, makes the stage's ``best.pt`` the checkpoint of the best epoch up to that
    position (resumed into another directory, or from an earlier checkpoint, the directory's best.pt is missing or
    belongs to another history): the end of that epoch is ``source``'s folder's best.pt, ``source`` itself, or a step
    file there. ConfigError when none of them is."""
    best = trainer.state.best
    if best is None:  # no validation yet: the first one after resuming writes best.pt
        return
    epoch = next(h["epoch"] for h in trainer.state.history if h.get(trainer.select) == best)
    target = trainer.ckpt.dir / "best.pt"
    for candidate in (source.parent / "best.pt", source, source.parent / f"step-{epoch:04d}-000000.pt"):
        if candidate.is_file():
            state = load(candidate)
            if state["position"]["epoch"] == epoch and state["position"]["iteration"] == 0 \
                    and state.get("extra", {}).get("best") == best:
                if trainer.ckpt.enabled and candidate.resolve() != target.resolve():
                    atomic_save(state, target)
                return
    raise ConfigError(f"--resume {source}: the checkpoint of its best epoch ({epoch}, {trainer.select} {best:.4f}) "
                      f"is neither {source.parent / 'best.pt'} nor a step file there, so the stage could not pick "
                      "its best model; resume from a checkpoint whose folder holds it")


def run_trainer(ctx: Context, trainer: Trainer) -> Trainer:
    state = resume_state(ctx, trainer.ckpt, trainer.stage, trainer.config)
    if state is not None:
        recipe = optimizer_recipe(trainer.optimizer, trainer.scheduler)
        trainer.resume(state)
        if (trainer.state.epoch, trainer.state.iteration) > (trainer.epochs, 0):
            raise ConfigError(f"--resume {ctx.resume}: the checkpoint is at epoch {trainer.state.epoch}, iteration "
                              f"{trainer.state.iteration}, past {stage_key(trainer.stage)}.epochs="
                              f"{trainer.epochs}; set epochs to at least {trainer.state.epoch}")
        applied = apply_recipe(trainer.optimizer, trainer.scheduler, recipe)
        if applied:
            ctx.log.info(f"[{trainer.stage}] optimizer settings changed on resume: {'; '.join(applied)}")
        if ctx.resume != "auto" and trainer.select is not None:
            keep_best(Path(ctx.resume), trainer)
        ctx.log.info(f"[{trainer.stage}] resumed at epoch {trainer.state.epoch}, iteration {trainer.state.iteration}")
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


# ------------------------------------------------------------------------------------------------------- acp, acp+

def run_classification(ctx: Context, stage: str) -> Path:
    """ACP (clip shards) or ACP+ (the target's foreground segments): cross-entropy on ClipClassifier."""
    from lofi.models import ClipClassifier
    cfg, info = ctx.cfg, ctx.info
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

    trainer = Trainer(stage=stage, modules={"model": net}, step_fn=step,
                      loader_fn=loader_factory(ctx, shards, cfg.data.train_subset, per, lambda e, i: fid, True,
                                               foreground=stage == "acp+"),
                      optimizer=optimizer, scheduler=scheduler, epochs=sc.epochs, info=info,
                      checkpointer=Checkpointer(ctx.stage_dir(stage), cfg.checkpoint.keep, info.is_main),
                      logger=ctx.log, seed=cfg.seed, accum_steps=accum, max_bad_steps=cfg.max_bad_steps,
                      every_iters=cfg.checkpoint.every_iters, log_every=cfg.log.every_iters, amp=cfg.model.amp,
                      config=to_dict(cfg), describe=lambda b: str(b["fidelity"]))
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


# ------------------------------------------------------------------------------------------------------- lofi

class EndToEnd(torch.nn.Module):
    """Encoder + G-TAD: uint8 frames (B, L, T, 3, H, W) → G-TAD outputs at this batch's L."""

    def __init__(self, encoder: torch.nn.Module, head: torch.nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, frames: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.head(self.encoder(frames))


def lofi_schedule(cfg: Config) -> LoFiSchedule:
    s = cfg.lofi.schedule
    return LoFiSchedule(s.mode, full_fidelity(cfg), r_t=s.r_t, r_s=s.r_s, st_r_t=s.st_r_t, st_r_s=s.st_r_s,
                        c_s=s.c_s, c_l=s.c_l)


def run_lofi(ctx: Context) -> Path:
    """Encoder + G-TAD end to end on the TAL loss; every batch's fidelity comes from the LoFi schedule."""
    from lofi.models import GTAD
    from .memory import auto_micro_batch
    cfg, info = ctx.cfg, ctx.info
    schedule = lofi_schedule(cfg)
    init = encoder_source(ctx, "lofi")
    ctx.log.info(f"[lofi] {schedule}; encoder from {init or 'random initialization'}")
    encoder = make_encoder(cfg, init)
    model = EndToEnd(encoder, GTAD(encoder.out_dim, fused=cfg.model.gtad_fused)).to(info.device)
    if cfg.lofi.batch_size == "auto":
        fit = auto_micro_batch(model, schedule.fidelities(), cfg.lofi.memory_budget_gib, info.device)
        per, accum = D.split_batch(cfg.lofi.auto_global_batch, info.world_size, max_per_process=fit)
        ctx.log.info(f"[lofi] batch_size auto: {fit} videos fit {cfg.lofi.memory_budget_gib} GiB per process; "
                     f"global batch {cfg.lofi.auto_global_batch} = {info.world_size} × {per} × {accum} accumulated")
    else:
        per, accum = batch_plan(ctx, "lofi", cfg.lofi.batch_size)
    net = D.wrap_ddp(model, info, cfg.model.sync_bn)
    optimizer, scheduler = make_optimizer(model.parameters(), cfg.lofi.optim)
    global_loss = GlobalBatchLoss(info, accum, lambda batch: batch["frames"].shape[1])

    def step(batch, generator):
        pred = net(batch["frames"].to(info.device, non_blocking=True))
        losses = global_loss(pred, batch)
        return losses["loss"], {k: float(losses[k].detach()) for k in ("tem", "reg", "cls")}

    # One optimizer step = `accum` loader batches: the schedule counts optimizer steps (mini-batches of the global batch).
    trainer = Trainer(stage="lofi", modules={"model": net}, step_fn=step,
                      loader_fn=loader_factory(ctx, cfg.data.shards, cfg.data.train_subset, per,
                                               lambda e, i: schedule(e, i // accum), True),
                      optimizer=optimizer, scheduler=scheduler, epochs=cfg.lofi.epochs, info=info,
                      checkpointer=Checkpointer(ctx.stage_dir("lofi"), cfg.checkpoint.keep, info.is_main),
                      logger=ctx.log, seed=cfg.seed, accum_steps=accum, max_bad_steps=cfg.max_bad_steps,
                      every_iters=cfg.checkpoint.every_iters, log_every=cfg.log.every_iters, amp=cfg.model.amp,
                      config=to_dict(cfg), describe=lambda b: str(b["fidelity"]), prepare=global_loss.prepare)
    run_trainer(ctx, trainer)
    return export_encoder(ctx, "lofi", model.encoder)


# ------------------------------------------------------------------------------------------------------- features

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
        from lofi.data.remote import fetch_file, is_remote
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
    from lofi.data.annotations import load_annotations
    ann = load_annotations(cfg.head.annotations)
    missing = [r.id for r in ann.records if r.duration is None]
    if missing:
        raise ValueError(f"head.annotations: {cfg.head.annotations} gives no duration for videos {missing[:10]}")
    return {r.id: {"id": r.id, "subset": r.subset, "duration": float(r.duration),
                   "annotations": [{"segment": [a.start, a.end], "label": a.label, "label_id": ann.label_ids[a.label]}
                                   for a in r.annotations]} for r in ann.records}


def class_names(cfg: Config) -> List[str]:
    if cfg.head.features and cfg.head.annotations:
        from lofi.data.annotations import load_annotations
        return load_annotations(cfg.head.annotations).classes
    return read_manifest(cfg.data.shards)["classes"]


# ------------------------------------------------------------------------------------------------------- head

class HeadModel(torch.nn.Module):
    """G-TAD + VideoClassifier on snippet features (B, C, L) → (G-TAD outputs, class logits (B, K))."""

    def __init__(self, in_dim: int, num_classes: int, fused: bool):
        super().__init__()
        from lofi.models import GTAD, VideoClassifier
        self.gtad = GTAD(in_dim, fused=fused)
        self.classifier = VideoClassifier(in_dim, num_classes)

    def forward(self, features: torch.Tensor):
        return self.gtad(features), self.classifier(features)


def video_label_targets(meta: List[dict], num_classes: int) -> torch.Tensor:
    """(B, K) target distribution: the video's annotated classes, equally weighted."""
    t = torch.zeros(len(meta), num_classes)
    for b, m in enumerate(meta):
        ids = sorted({int(a["label_id"]) for a in m["annotations"]})
        if ids:
            t[b, ids] = 1.0 / len(ids)
    return t


def predict(model: HeadModel, entries: Dict[str, Entry], ctx: Context, classes: List[str]) -> Dict[str, Any]:
    """Detections + proposals for every video of ``entries`` (gathered on rank 0; None elsewhere) and the mean loss."""
    from lofi.models import build_targets, gtad_loss
    from lofi.postprocess import detect, load_cuhk
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
            res = detect(pred, meta, class_scores=scores, classes=classes, sigma=pp.sigma, top_k=pp.top_k,
                         top_classes=pp.top_classes, candidates=pp.candidates)
            out["detections"].update(res["detections"])
            out["proposals"].update(res["proposals"])
            out["classifier"] = res["classifier"]
            out["class_scores"].update({m["id"]: p.tolist() for m, p in zip(meta, probs.cpu())})
            if all(m.get("annotations") is not None for m in meta):
                loss = gtad_loss(pred, build_targets(meta, pred["start"].shape[1]), generator=generator)["loss"]
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
    from lofi.evaluation import evaluate_detection
    metrics = None
    if result is not None:
        ev = evaluate_detection(gt, {"results": result["detections"]}, subset="validation",
                                tiou_thresholds=ctx.cfg.eval.tiou, ignore_unknown_labels=True)
        metrics = {"average_mAP": float(ev["average_mAP"]), "mAP": [float(v) for v in ev["mAP"]],
                   "val_loss": float(result["loss"])}
    return D.broadcast_object(metrics)


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


def run_head(ctx: Context) -> Path:
    """Fresh G-TAD + video classifier on frozen full-fidelity features; the epoch (and lr) by ``head.select``:
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
    global_loss = GlobalBatchLoss(info, accum, lambda batch: batch["features"].shape[-1])
    runs, dirs = [], {}
    # The features' encoder belongs to the recipe: --resume auto never continues a head trained on another one.
    saved_config = dict(to_dict(cfg), head_encoder_sha256=sha256_file(encoder_path))
    for lr in cfg.head.lr_search or [cfg.head.optim.lr]:
        directory = ctx.stage_dir("head") / (f"lr{lr:g}" if cfg.head.lr_search else "")
        torch.manual_seed(cfg.seed)
        model = HeadModel(in_dim, len(classes), cfg.model.gtad_fused).to(info.device)
        net = D.wrap_ddp(model, info)
        optimizer, scheduler = make_optimizer(model.parameters(), cfg.head.optim, lr)

        def step(batch, generator, net=net):
            pred, logits = net(batch["features"].to(info.device, non_blocking=True))
            tal = global_loss(pred, batch)
            target = video_label_targets(batch["meta"], len(classes)).to(info.device)
            cls = -(target * logits.log_softmax(1)).sum(1).mean()
            return tal["loss"] + cls, {"tal": float(tal["loss"].detach()), "video_cls": float(cls.detach())}

        def validate(epoch, model=model):
            return score(ctx, predict(model, val, ctx, classes), gt)

        trainer = Trainer(stage="head", modules={"model": net}, step_fn=step,
                          loader_fn=lambda e, start: FeatureLoader(train, per, True, info.rank, info.world_size,
                                                                   seed=cfg.seed, epoch=e, start=start),
                          optimizer=optimizer, scheduler=scheduler, epochs=cfg.head.epochs, info=info,
                          checkpointer=Checkpointer(directory, cfg.checkpoint.keep, info.is_main), logger=ctx.log,
                          seed=cfg.seed, accum_steps=accum, max_bad_steps=cfg.max_bad_steps,
                          every_iters=cfg.checkpoint.every_iters, log_every=cfg.log.every_iters, amp=cfg.model.amp,
                          validate=validate, select=metric, minimize=lower, config=saved_config,
                          prepare=global_loss.prepare)
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
        atomic_save({"encoder": make_encoder(cfg, encoder_path).state_dict(), "encoder_name": cfg.model.encoder, "head": head_state,
                     "in_dim": in_dim, "classes": classes, "config": to_dict(cfg), "lr": pick["lr"],
                     "epoch": pick["epoch"], "select": cfg.head.select,
                     "val_average_mAP": pick["val_average_mAP"]}, path)
        ctx.log.metrics("head", {"select": cfg.head.select, **pick, "picks": picks,
                                 "lr_search": {f"{lr:g}": head_picks([(lr, h)]) for lr, h in runs}})
    D.barrier()
    return path
