"""G-TAD's loss with its statistics over the global batch of an optimizer step, at any world size and accumulation.

G-TAD computes the balanced-BCE counts and the regression sampling ratios over its whole batch (16 videos). Here a
step's global batch is spread over ``world_size`` processes × ``accum`` micro-batches: before the step's first
forward, the Trainer hands ``prepare`` this process's micro-batches; it builds their targets (they depend only on the
batch meta), draws the regression sampling's uniform numbers for the whole global batch from the step's generator
(the same on every process) and gives each video the rows of its position, then sums the counts over the
micro-batches and, with two all-reduces of a few int64 scalars, over the processes. ``__call__`` returns a
micro-batch's share of the global-batch loss (its sums over the global counts) times ``accum · world_size``: the
Trainer divides each micro-batch's loss by ``accum`` and DDP averages the gradients over processes, so the gradient
is that of the global-batch loss, and the logged means are its value.

Position in the global batch: micro-batch k of rank r holds positions ``(k·world_size + r)·B .. + B − 1``, the order
in which a 1-process run with the global batch sees the same videos when the loader gives rank r's k-th
micro-batch of step i the block ``(i·accum + k)·world_size + r`` of ``B`` videos of its order (as FeatureLoader
does). With one process and no accumulation this is G-TAD's loss on the batch, drawn as the plain ``gtad_loss``
draws it.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List

import torch

from lofi.models import build_targets, gtad_loss
from lofi.models.losses import batch_statistics

from . import distributed as D


class GlobalBatchLoss:
    """``prepare`` (the Trainer's hook) and the loss of one micro-batch; ``length(batch)`` gives its L (snippets)."""

    def __init__(self, info: D.DistInfo, accum: int, length: Callable[[Dict[str, Any]], int]):
        self.info, self.accum, self.length = info, accum, length

    def prepare(self, batches: List[Dict[str, Any]], generator: torch.Generator) -> None:
        """Adds ``batch["gtad_loss"]`` = {targets, draws (B, L, L), counts (global), share} to each micro-batch of this
        process's part of the step (a collective call: every process calls it once per step)."""
        world, rank = self.info.world_size, self.info.rank
        L, B = self.length(batches[0]), len(batches[0]["meta"])
        draws = torch.rand((len(batches) * world * B, L, L), generator=generator, device=generator.device)
        targets = [build_targets(batch["meta"], self.length(batch)) for batch in batches]
        rows = [draws[(k * world + rank) * B:(k * world + rank + 1) * B] for k in range(len(batches))]
        counts = batch_statistics(targets, rows, lambda t: D.all_reduce_sum(t, self.info.device))
        for batch, t, u in zip(batches, targets, rows):
            batch["gtad_loss"] = {"targets": t, "draws": u, "counts": counts, "share": self.accum * world}

    def __call__(self, pred: Dict[str, torch.Tensor], batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """G-TAD outputs of a prepared micro-batch → {"loss", "tem", "reg", "cls"}, scaled as the module says."""
        s = batch["gtad_loss"]
        losses = gtad_loss(pred, s["targets"], draws=s["draws"], counts=s["counts"])
        return {k: v * s["share"] for k, v in losses.items()}
