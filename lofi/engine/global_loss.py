"""A localization head's loss with its statistics over the global batch of an optimizer step, at any world size and
accumulation.

G-TAD computes the balanced-BCE counts and the regression sampling ratios over its whole batch (16 videos), as every
head's statistics (lofi.models.tal_head) cover its batch. Here a step's global batch is spread over ``world_size``
processes × ``accum`` micro-batches: before the step's first forward, the Trainer hands ``prepare`` this process's
micro-batches; it builds their targets (they depend only on the batch meta), draws the head's uniform numbers (G-TAD:
the regression sampling's) for the whole global batch from the step's generator (the same on every process) and gives
each video the rows of its position, then has the head sum its statistics over the micro-batches and, with
all-reduces, over the processes. ``__call__`` returns a micro-batch's share of the global-batch loss (its sums over
the global counts) times ``accum · world_size``: the
Trainer divides each micro-batch's loss by ``accum`` and DDP averages the gradients over processes, so the gradient
is that of the global-batch loss, and the logged means are its value.

Position in the global batch: micro-batch k of rank r holds positions ``(k·world_size + r)·B .. + B − 1``, the order
in which a 1-process run with the global batch sees the same videos when the loader gives rank r's k-th
micro-batch of step i the block ``(i·accum + k)·world_size + r`` of ``B`` videos of its order (as FeatureLoader
does). With one process and no accumulation this is the head's loss on the batch (``TALHead.batch_loss``).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List

import torch

from lofi.models.tal_head import TALHead

from . import distributed as D


class GlobalBatchLoss:
    """``prepare`` (the Trainer's hook) and the loss of one micro-batch by ``head``; ``length(batch)`` gives its L
    (snippets)."""

    def __init__(self, info: D.DistInfo, accum: int, length: Callable[[Dict[str, Any]], int], head: TALHead):
        self.info, self.accum, self.length, self.head = info, accum, length, head

    def prepare(self, batches: List[Dict[str, Any]], generator: torch.Generator) -> None:
        """Adds ``batch["tal_loss"]`` = {targets, draws (B, ...) or None, counts (global), share} to each micro-batch
        of this process's part of the step (a collective call: every process calls it once per step)."""
        world, rank = self.info.world_size, self.info.rank
        L, B = self.length(batches[0]), len(batches[0]["meta"])
        draws = self.head.draws(len(batches) * world * B, L, generator)
        targets = [self.head.targets(batch["meta"], self.length(batch)) for batch in batches]
        rows = [None if draws is None else draws[(k * world + rank) * B:(k * world + rank + 1) * B]
                for k in range(len(batches))]
        counts = self.head.statistics(targets, rows, lambda t: D.all_reduce_sum(t, self.info.device))
        for batch, t, u in zip(batches, targets, rows):
            batch["tal_loss"] = {"targets": t, "draws": u, "counts": counts, "share": self.accum * world}

    def __call__(self, pred: Dict[str, torch.Tensor], batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """The head's outputs of a prepared micro-batch → {"loss", *head.loss_terms}, scaled as the module says."""
        s = batch["tal_loss"]
        losses = self.head.loss(pred, s["targets"], s["draws"], s["counts"])
        return {k: v * s["share"] for k, v in losses.items()}
