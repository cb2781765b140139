"""The training loop shared by every stage: accumulation, DDP, the NaN guard, checkpoints, resume and logging.

A stage supplies ``step_fn(batch, generator) -> (loss, logs)`` and ``loader_fn(epoch, start) -> loader`` (``len()``:
the epoch's batches; iteration yields them from batch ``start`` on, so a run resumed mid-epoch never reads the
batches it already trained on); the loop never knows which stage or LoFi mode it runs. Positions count *optimizer
steps*: ``iteration`` i of an epoch consumes loader batches ``i·accum .. i·accum + accum − 1``.

Determinism: the global RNGs are reseeded from (seed, rank, epoch) before an epoch's loader is created, so the
loader draws the same numbers however far into the epoch a run resumes; each micro-batch's forward/backward runs
with the global RNGs seeded from (seed, rank, epoch, iteration) and restored afterwards, and the loss's sampling
generator from (seed, epoch, iteration), the same on every process (rank 0's step seed), so that draws for the
whole global batch do not depend on the process that holds a video. A run resumed from any checkpoint therefore
continues exactly as the uninterrupted run would (tested with ``torch.equal``).
Remaining nondeterminism: CUDA kernels without a deterministic implementation, and DataLoader worker timing only
where a reader consumes global RNG state inside its workers.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch

from lofi.seeding import derive_seed

from . import distributed as D
from .checkpoint import Checkpointer, capture_rng, restore_rng
from .logger import RunLogger, memory_mib


class BadLossError(RuntimeError):
    """Raised after ``max_bad_steps`` consecutive steps with a NaN or infinite loss."""


def reseed(seed: int) -> None:
    """Seeds Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def isolated_rng(seed: int):
    """Runs the block with every global RNG seeded from ``seed``, then puts the previous states back, so what the
    block draws (dropout, augmentation in the model) never shifts what the data loader draws, and vice versa."""
    state = capture_rng()
    reseed(seed)
    try:
        yield
    finally:
        restore_rng(state)


class NanGuard:
    """Counts consecutive steps whose loss was not finite on any process; raises after ``max_bad`` of them."""

    def __init__(self, max_bad: int, device: torch.device = torch.device("cpu")):
        self.max_bad = max_bad
        self.device = device
        self.consecutive = 0
        self.skipped = 0

    def is_bad(self, loss: torch.Tensor) -> bool:
        """True when ``loss`` is NaN/inf on this **or any other** process (a collective call under DDP)."""
        local = 0.0 if bool(torch.isfinite(loss.detach()).all()) else 1.0
        return D.all_reduce_max(local, self.device) > 0

    def record(self, bad: bool, where: str) -> None:
        if not bad:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.skipped += 1
        warnings.warn(f"{where}: the loss is NaN or infinite; step skipped "
                      f"({self.consecutive}/{self.max_bad} consecutive)", RuntimeWarning, stacklevel=2)
        if self.consecutive >= self.max_bad:
            raise BadLossError(f"{where}: {self.consecutive} consecutive steps had a NaN or infinite loss "
                               f"(max_bad_steps={self.max_bad}); lower the learning rate, check the data, "
                               "or resume from an earlier checkpoint")


@dataclass
class LoopState:
    """What one ``fit`` call ended with (the best value is the highest ``select`` metric, e.g. average mAP, or the
    lowest with ``minimize``, e.g. the validation loss)."""
    epoch: int = 0
    iteration: int = 0
    global_step: int = 0
    best: Optional[float] = None
    history: list = field(default_factory=list)


def count_videos(batch: Dict[str, Any]) -> int:
    """Real (non-padding) videos in a batch: from ``meta`` when present, else the first tensor's length."""
    if "meta" in batch:
        return sum(1 for m in batch["meta"] if not m.get("pad"))
    return next(v.shape[0] for v in batch.values() if torch.is_tensor(v))


StepFn = Callable[[Dict[str, Any], torch.Generator], Tuple[torch.Tensor, Dict[str, float]]]


class Trainer:
    """Runs ``epochs`` epochs of ``step_fn`` over ``loader_fn(epoch, start)``.

    ``modules`` are the trained modules by checkpoint name (already DDP-wrapped where distributed); ``validate``
    (optional) returns a dict of metrics at each epoch end, and ``select`` names the one whose maximum (minimum with
    ``minimize``) picks ``best.pt``, the first epoch that reaches it. ``videos_per_batch(batch)`` counts the real
    videos of a micro-batch for videos/s. ``prepare(batches, generator)`` (optional) is called once per optimizer
    step, on every process, with this process's ``accum`` micro-batches and the step's generator before the first
    forward, e.g. to put loss statistics over the global batch into them (``lofi.engine.global_loss``).
    ``max_grad_norm`` > 0 clips the gradients' global L2 norm (of the step's whole global batch) before each step."""

    def __init__(self, *, stage: str, modules: Dict[str, torch.nn.Module], step_fn: StepFn,
                 loader_fn: Callable[[int, int], Iterable], optimizer: torch.optim.Optimizer, scheduler,
                 epochs: int, info: D.DistInfo, checkpointer: Checkpointer, logger: RunLogger, seed: int,
                 accum_steps: int = 1, max_bad_steps: int = 5, every_iters: int = 0, log_every: int = 10,
                 amp: bool = False, validate: Optional[Callable[[int], Dict[str, float]]] = None,
                 select: Optional[str] = None, minimize: bool = False, config: Optional[dict] = None,
                 describe: Optional[Callable[[Dict[str, Any]], str]] = None,
                 prepare: Optional[Callable[[List[Dict[str, Any]], torch.Generator], None]] = None,
                 max_grad_norm: float = 0.0):
        self.stage, self.modules, self.step_fn, self.loader_fn = stage, modules, step_fn, loader_fn
        self.optimizer, self.scheduler, self.epochs, self.info = optimizer, scheduler, epochs, info
        self.ckpt, self.log, self.seed, self.accum = checkpointer, logger, seed, accum_steps
        self.guard = NanGuard(max_bad_steps, info.device)
        self.every_iters, self.log_every = every_iters, log_every
        self.amp = amp and info.device.type == "cuda"
        # bf16 autocast needs no loss scaling; the scaler is kept (disabled) so checkpoints have one format.
        self.scaler = torch.amp.GradScaler(info.device.type, enabled=False)
        self.validate, self.select, self.minimize, self.config = validate, select, minimize, config
        self.describe = describe or (lambda batch: "")
        self.prepare, self.max_grad_norm = prepare, max_grad_norm
        self.state = LoopState()
        self._done = False

    # ----------------------------------------------------------------------------------------------- checkpoints
    def _save(self, epoch: int, iteration: int, done: bool = False, best: bool = False, step_file: bool = True):
        state = self.ckpt.state(self.modules, self.optimizer, self.scheduler, self.scaler, epoch=epoch,
                                iteration=iteration, done=done, config=self.config,
                                extra={"best": self.state.best, "global_step": self.state.global_step,
                                       "history": self.state.history, "skipped_steps": self.guard.skipped})
        self.ckpt.save(state, best=best, step_file=step_file)

    def resume(self, state: Dict[str, Any]) -> None:
        """Continues from a checkpoint of this stage (models, optimizer, scheduler, scaler, RNG, position)."""
        pos = Checkpointer.restore(state, self.modules, self.optimizer, self.scheduler, self.scaler)
        extra = state.get("extra", {})
        self.state = LoopState(pos["epoch"], pos["iteration"], extra.get("global_step", 0), extra.get("best"),
                               list(extra.get("history", [])))
        self.guard.skipped = extra.get("skipped_steps", 0)
        self._done = pos["epoch"] >= self.epochs  # a finished checkpoint continues when epochs grew

    # ----------------------------------------------------------------------------------------------- loop
    def _autocast(self):
        if self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _no_sync(self, last: bool):
        ctxs = contextlib.ExitStack()
        if not last:
            for m in self.modules.values():
                if isinstance(m, torch.nn.parallel.DistributedDataParallel):
                    ctxs.enter_context(m.no_sync())
        return ctxs

    def _step(self, it: Iterator, epoch: int, iteration: int) -> Tuple[Optional[Dict[str, float]], int, str]:
        """One optimizer step over ``accum`` micro-batches; None logs when the step was skipped."""
        step_seed = derive_seed(self.seed, self.info.rank, epoch, iteration, 1)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, 0, epoch, iteration, 1))
        self.optimizer.zero_grad(set_to_none=True)
        totals: Dict[str, float] = {}
        videos, desc, bad = 0, "", False
        batches = [next(it) for _ in range(self.accum)]  # the whole step, so the data position is kept when skipping
        if self.prepare is not None:
            self.prepare(batches, generator)
        for k, batch in enumerate(batches):
            if bad:
                continue
            videos += count_videos(batch)
            desc = self.describe(batch)
            with self._no_sync(last=k == self.accum - 1), isolated_rng(derive_seed(step_seed, k)):
                with self._autocast():
                    loss, logs = self.step_fn(batch, generator)
                bad = self.guard.is_bad(loss)
                if bad:
                    continue
                self.scaler.scale(loss / self.accum).backward()
            for key, v in {"loss": float(loss.detach()), **logs}.items():
                totals[key] = totals.get(key, 0.0) + float(v) / self.accum
        self.guard.record(bad, f"stage {self.stage}, epoch {epoch}, iteration {iteration}")
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            return None, videos, desc
        if self.max_grad_norm > 0:  # after DDP's average: every process clips the same global-batch gradient
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return totals, videos, desc

    def fit(self) -> LoopState:
        if self._done:
            self.log.info(f"[{self.stage}] already finished (checkpoint in {self.ckpt.dir}); nothing to do")
            return self.state
        start_epoch, start_iter = self.state.epoch, self.state.iteration
        for epoch in range(start_epoch, self.epochs):
            for m in self.modules.values():
                m.train()
            reseed(derive_seed(self.seed, self.info.rank, epoch, 0))
            first = start_iter if epoch == start_epoch else 0
            loader = self.loader_fn(epoch, first * self.accum)
            steps = len(loader) // self.accum
            if steps == 0:
                raise RuntimeError(f"stage {self.stage}: the loader has {len(loader)} batches per epoch, fewer than "
                                   f"the {self.accum} micro-batches of one optimizer step; use fewer processes "
                                   "or a smaller batch, or more data")
            it = iter(loader)
            bar = self.log.bar(steps, f"{self.stage} epoch {epoch + 1}/{self.epochs}", initial=first)
            window: Dict[str, float] = {}
            n_window, t0, videos_window = 0, time.perf_counter(), 0
            for iteration in range(first, steps):
                logs, videos, desc = self._step(it, epoch, iteration)
                self.state.global_step += 1
                videos_window += videos
                if logs is not None:
                    for k, v in logs.items():
                        window[k] = window.get(k, 0.0) + v
                    n_window += 1
                bar.update(1)
                last = iteration + 1 == steps
                if (iteration + 1) % self.log_every == 0 or last:
                    keys = sorted(window)
                    means = D.all_reduce_mean([window[k] / max(n_window, 1) for k in keys], self.info.device)
                    rate = D.all_reduce_mean([videos_window / max(time.perf_counter() - t0, 1e-9)],
                                             self.info.device)[0] * self.info.world_size
                    row = dict(zip(keys, means))
                    row.update(lr=self.optimizer.param_groups[0]["lr"], videos_per_s=rate,
                               memory_mib=memory_mib(self.info.device))
                    bar.set_postfix(loss=f"{row.get('loss', math.nan):.4f}", lr=f"{row['lr']:.2e}", fid=desc,
                                    vps=f"{rate:.2f}", mem=f"{row['memory_mib']:.0f}M")
                    self.log.write(self.stage, "step", self.state.global_step, epoch=epoch, iteration=iteration + 1,
                                   fidelity=desc, **row)
                    window, n_window, t0, videos_window = {}, 0, time.perf_counter(), 0
                if self.every_iters and (iteration + 1) % self.every_iters == 0 and not last:
                    self._save(epoch, iteration + 1)
            bar.close()
            self.scheduler.step()
            metrics = self.validate(epoch) if self.validate else {}
            is_best = False
            if self.select is not None and math.isfinite(metrics.get(self.select, math.nan)):
                value = metrics[self.select]
                is_best = self.state.best is None or (value < self.state.best if self.minimize
                                                      else value > self.state.best)
                if is_best:
                    self.state.best = value
            self.state.history.append({"epoch": epoch + 1, **metrics})
            if metrics:
                self.log.write(self.stage, "epoch", epoch + 1, **metrics)
            self.state.epoch, self.state.iteration = epoch + 1, 0
            self._save(epoch + 1, 0, done=epoch + 1 == self.epochs, best=is_best or self.select is None)
            start_iter = 0
        return self.state
