"""The interface of a temporal-action-localization head: the only thing the stages, the global-batch loss, the
post-processing, lofi.infer and the eval's baseline know about a head. A new head subclasses ``TALHead``, implements
its six methods and is registered in lofi.models.registry.HEADS.

Time units: a head sees L snippets of features that cover the whole video; snippet j spans [j/L, (j+1)/L] in
normalized time. Annotations arrive in seconds (the reader's meta: ``duration`` s, ``annotations`` [{segment [s, e]
seconds, label_id}], optionally ``feature_duration`` s, the span the features cover); proposals leave in normalized
time, and lofi.postprocess turns them into seconds and labelled detections.

A loss is computed in two steps so that its statistics (positive counts, sampling ratios, normalizers) can cover a
whole global batch, spread over processes and accumulated micro-batches: ``statistics`` sums counts over the
micro-batches and (through ``reduce``) the processes, and ``loss`` returns one micro-batch's share of the
global-batch loss. ``batch_loss`` does both on a single batch.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

Outputs = Dict[str, torch.Tensor]
Targets = Dict[str, torch.Tensor]
Counts = Dict[str, torch.Tensor]
Reduce = Callable[[torch.Tensor], torch.Tensor]


def no_reduce(t: torch.Tensor) -> torch.Tensor:
    """The ``reduce`` of a single process: the identity."""
    return t


class TALHead(nn.Module):
    """features (B, C, L) → outputs (a dict of batch-first tensors); targets, loss, proposals and random outputs
    for any L (a head pads and masks an L its strides or anchors do not divide; it never crops).

    ``loss_terms``: the names of the loss components ``loss`` returns beside ``"loss"`` (logged per step).
    """

    loss_terms: Tuple[str, ...] = ()

    def forward(self, features: torch.Tensor) -> Outputs:
        raise NotImplementedError

    def targets(self, meta: Sequence[dict], L: int) -> Targets:
        """The training targets of a batch (B videos' meta) at L snippets, on the CPU."""
        raise NotImplementedError

    def draws(self, B: int, L: int, generator: torch.Generator) -> Optional[torch.Tensor]:
        """Uniform [0, 1) numbers (B, ...) that the loss samples with, drawn from ``generator`` for B videos (the
        caller draws them for a whole global batch and hands each micro-batch its rows); None when the loss samples
        nothing."""
        return None

    def statistics(self, targets: Sequence[Targets], draws: Sequence[Optional[torch.Tensor]],
                   reduce: Reduce = no_reduce) -> Counts:
        """The loss statistics of several micro-batches' targets (with their draws), summed over processes by
        ``reduce`` (an element-wise all-reduce sum; every process calls it the same number of times). Called once
        per optimizer step in training (a head may update running state here when ``self.training``)."""
        raise NotImplementedError

    def loss(self, outputs: Outputs, targets: Targets, draws: Optional[torch.Tensor], counts: Counts) -> Outputs:
        """One micro-batch's share of the loss of the global batch whose ``statistics`` are ``counts`` →
        {"loss", *loss_terms} scalars."""
        raise NotImplementedError

    def proposals(self, outputs: Outputs, pp: Any) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Class-agnostic proposals after non-maximum suppression, by the ``postprocess`` config section ``pp`` →
        (segments (B, K, 2) float64 in normalized time, scores (B, K), counts (B,)); rows beyond ``counts[b]`` are
        padding, the others in descending score order."""
        raise NotImplementedError

    def random_outputs(self, B: int, L: int, generator: torch.Generator) -> Outputs:
        """Outputs of the shapes ``forward`` gives for B videos of L snippets, uniform random: the eval's
        random-proposal baseline, post-processed exactly as the head's real outputs."""
        raise NotImplementedError

    def batch_loss(self, outputs: Outputs, meta: List[dict], L: int,
                   generator: Optional[torch.Generator] = None) -> Outputs:
        """The loss of one batch of L snippets on its own statistics (e.g. a validation loss); the draws come from
        ``generator`` (default: a fresh unseeded one)."""
        targets = self.targets(meta, L)
        draws = self.draws(len(meta), L, generator if generator is not None else torch.Generator())
        return self.loss(outputs, targets, draws, self.statistics([targets], [draws]))
