"""The resume policy: which checkpoint a stage continues from, whether its config may differ (the stage table's
resume-free keys), and how a changed optimizer recipe applies from the checkpoint's position on."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from lofi.config import ConfigError, config_changes, stage_key, to_dict, upgrade
from lofi.engine.checkpoint import Checkpointer, atomic_save, load
from lofi.engine.loop import Trainer

from . import table

if TYPE_CHECKING:  # base imports this module
    from .base import Context


def resume_state(ctx: Context, ckpt: Checkpointer, stage: str, config: Optional[dict] = None
                 ) -> Optional[Dict[str, Any]]:
    """The checkpoint to resume ``stage`` from: ``--resume PATH``, or its last.pt under ``--resume auto``. Its saved
    config is compared with ``config`` (what this run's checkpoints will hold; default: the run's config).
    ``auto`` refuses (ConfigError) a checkpoint written with a config that differs in a key the stage depends on, so
    a finished or half-trained stage is never continued under another recipe; an explicit PATH is taken and the
    changed keys apply from its position on (:func:`resume_trainer`), except a changed optimizer type, which cannot
    (ConfigError)."""
    if ctx.resume is None:
        return None
    path = ckpt.latest() if ctx.resume == "auto" else Path(ctx.resume)
    if path is None:
        return None
    state = load(path)
    saved = state.get("config")
    changes = [] if saved is None else config_changes(upgrade(saved), config or to_dict(ctx.cfg),
                                                      table.resume_free(stage))
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


def resume_trainer(ctx: Context, trainer: Trainer) -> None:
    """Restores ``trainer`` from the checkpoint :func:`resume_state` picks (nothing when none), applying this run's
    optimizer recipe from its position on."""
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
