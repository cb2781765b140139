"""The self-supervised pretext stages on the clip set (``data.clip_shards``), as ``ctx.stage``:

* ``arrow`` (Arrow of Time) and ``speed`` (SpeedNet): the encoder with a linear head on its pooled features learns
  whether a clip plays forwards or backwards, or at normal speed or sped up; training reads no label.
* ``acp+arrow`` and ``acp+speed``: ACP's cross-entropy on the clip as sampled plus ``weight`` × that pretext loss,
  on every step (each clip is encoded twice: as sampled and transformed).

The two views of every clip are chosen in the data front end's plan (lofi.data.pretext), so both backends serve
them. Each stage trains like ACP (lofi.stages.classification: its section's fixed fidelity, epochs, batch size and
optimizer), writes ``<stage>/encoder.pt`` for the later stages, and its pretext accuracy (and ACP's accuracy for the
combined stages) on the validation clips to ``metrics.json`` and the log; also the pretext accuracy per source class
(``val_pretext_accuracy/<class>``), which tells whether some classes give the task away (a motion that is never seen
reversed, say).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from lofi.config import stage_key
from lofi.data.pretext import VIEWS, Pretext
from lofi.models.pretext import PretextClassifier

from .base import Context, encoder_source, export_encoder, make_encoder, read_manifest
from .classification import heldout_accuracy, labels_of, train_on_clips


def pretext_task(ctx: Context) -> Pretext:
    """The views of ``ctx.stage``'s task, from its config section (the rates and zoom of the speed stages)."""
    task = ctx.stage.rsplit("+", 1)[-1]
    sc = getattr(ctx.cfg, stage_key(ctx.stage))
    if task == "speed":
        return Pretext(task, tuple(sc.normal), tuple(sc.fast), tuple(sc.zoom))
    return Pretext(task)


def pretext_targets(meta) -> torch.Tensor:
    """The pretext labels (B·V,) of a batch's views, in the order the model flattens them."""
    return torch.tensor([label for m in meta for label in m["pretext"]])


def run(ctx: Context) -> Path:
    """Pretext (or ACP + pretext) training of the encoder on the clip set; writes ``<stage>/encoder.pt``."""
    cfg, info, stage = ctx.cfg, ctx.info, ctx.stage
    sc, task = getattr(cfg, stage_key(stage)), pretext_task(ctx)
    shards = cfg.data.clip_shards
    manifest = read_manifest(shards)
    names = manifest.get("classes", [])
    classes = names if stage.startswith("acp+") else []  # ACP + pretext
    init = encoder_source(ctx, stage)
    ctx.log.info(f"[{stage}] {task.task} pretext on the clips of {shards}"
                 + (f", weight {sc.weight:g}, beside ACP's cross-entropy over {len(classes)} classes" if classes
                    else ", no labels") + f"; encoder {cfg.model.encoder} from {init or 'random initialization'}")
    model = PretextClassifier(make_encoder(cfg, init), len(classes), VIEWS).to(info.device)

    def loss(net, batch):
        pretext_logits, class_logits = net(batch["frames"].to(info.device, non_blocking=True))
        targets = pretext_targets(batch["meta"]).to(info.device)
        pretext_loss = F.cross_entropy(pretext_logits, targets)
        logs = {"pretext_loss": float(pretext_loss.detach()),
                "pretext_acc": float((pretext_logits.argmax(1) == targets).float().mean())}
        if class_logits is None:
            return pretext_loss, logs
        labels = labels_of(batch["meta"]).to(info.device)
        class_loss = F.cross_entropy(class_logits, labels)
        logs.update(class_loss=float(class_loss.detach()), acc=float((class_logits.argmax(1) == labels).float().mean()))
        return class_loss + sc.weight * pretext_loss, logs

    def score(frames, meta):
        pretext_logits, class_logits = model(frames)
        targets = pretext_targets(meta).to(info.device)
        hits = (pretext_logits.argmax(1) == targets).view(len(meta), VIEWS).cpu()
        out = {"val_pretext_accuracy": (int(hits.sum()), hits.numel())}
        if class_logits is None and not all("label_id" in m for m in meta):
            return out  # a clip set without labels: no breakdown by class
        labels = labels_of(meta)
        for c in labels.unique().tolist():
            out[f"val_pretext_accuracy/{names[c]}"] = (int(hits[labels == c].sum()), hits[labels == c].numel())
        if class_logits is not None:
            out["val_accuracy"] = (int((class_logits.argmax(1).cpu() == labels).sum()), len(meta))
        return out

    val_loader = train_on_clips(ctx, model, loss, shards, pretext=task)
    if cfg.data.val_subset in manifest.get("splits", {}):
        result = heldout_accuracy(ctx, stage, model, val_loader, score) or {}
        by_class = sorted((v, k.split("/", 1)[1]) for k, v in result.items() if "/" in k)
        if by_class:
            shown = by_class if len(by_class) <= 10 else by_class[:3] + by_class[-3:]
            ctx.log.info(f"[{stage}] validation pretext accuracy by source class"
                         + (" (the 3 lowest and highest)" if len(shown) < len(by_class) else "") + ": "
                         + ", ".join(f"{name} {100 * v:.1f}%" for v, name in shown))
    return export_encoder(ctx, stage, model.encoder)
