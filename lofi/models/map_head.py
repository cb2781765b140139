"""``ProposalMapHead``: the TALHead methods shared by the heads that predict start/end probabilities and a
(duration, start) proposal map (G-TAD, BMN), whose targets, loss and post-processing are the same.

Outputs: {"start": (B, L), "end": (B, L), "maps": (B, 2, L, L)} probabilities, maps indexed [d, s]
(lofi.models.proposal_map), channel 0 IoU regression, channel 1 classification. Targets: lofi.models.targets. Loss:
G-TAD's (taken from BMN), ``L_tem + 10·L_reg + L_cls`` with its statistics over the global batch
(lofi.models.losses). Proposals: lofi.models.proposal_map.map_proposals.
"""
from typing import Any, Optional, Sequence, Tuple

import torch

from .losses import batch_statistics, gtad_loss
from .proposal_map import map_proposals
from .tal_head import Counts, Outputs, Reduce, TALHead, Targets, no_reduce
from .targets import build_targets


class ProposalMapHead(TALHead):
    """``boundary_scores``: a proposal's score also multiplies the start and end probabilities of its boundary
    snippets (BMN) instead of cls × reg alone (G-TAD)."""

    loss_terms = ("tem", "reg", "cls")
    boundary_scores = False

    def targets(self, meta: Sequence[dict], L: int) -> Targets:
        return build_targets(list(meta), L)

    def draws(self, B: int, L: int, generator: torch.Generator) -> torch.Tensor:
        """(B, L, L): one number per map cell for the regression loss's sampling of mid and low IoU cells."""
        return torch.rand((B, L, L), generator=generator, device=generator.device)

    def statistics(self, targets: Sequence[Targets], draws: Sequence[Optional[torch.Tensor]],
                   reduce: Reduce = no_reduce) -> Counts:
        return batch_statistics(targets, draws, reduce)

    def loss(self, outputs: Outputs, targets: Targets, draws: Optional[torch.Tensor], counts: Counts) -> Outputs:
        return gtad_loss(outputs, targets, draws=draws, counts=counts)

    def proposals(self, outputs: Outputs, pp: Any) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return map_proposals(outputs["start"], outputs["end"], outputs["maps"], pp, self.boundary_scores)

    def random_outputs(self, B: int, L: int, generator: torch.Generator) -> Outputs:
        return {"start": torch.rand(B, L, generator=generator), "end": torch.rand(B, L, generator=generator),
                "maps": torch.rand(B, 2, L, L, generator=generator)}
