"""``PretextClassifier``: the encoder with a linear pretext head (and ACP's class head when the pretext loss is added
to ACP's), for the self-supervised pretext stages (lofi.stages.pretext)."""
from typing import Optional, Tuple

import torch
from torch import nn

from .classifiers import VideoClassifier


class PretextClassifier(nn.Module):
    """uint8 views (B, V, L, T, 3, H, W) → (pretext logits (B·V, V), clip by clip in view order (view v's label is
    v), and class logits (B, K) of view 0, the clip as sampled; None without classes). Each head is a
    ``VideoClassifier``: a linear layer on the encoder's snippet features mean-pooled over L."""

    def __init__(self, encoder: nn.Module, num_classes: int = 0, views: int = 2):
        super().__init__()
        self.encoder = encoder
        self.pretext = VideoClassifier(encoder.out_dim, views)
        self.classes = VideoClassifier(encoder.out_dim, num_classes) if num_classes else None

    def forward(self, views: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        b, v = views.shape[:2]
        feats = self.encoder(views.flatten(0, 1))  # (B·V, C, L)
        classes = None if self.classes is None else self.classes(feats.view(b, v, *feats.shape[1:])[:, 0])
        return self.pretext(feats), classes
