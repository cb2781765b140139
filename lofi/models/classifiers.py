"""Classifiers on snippet features: ``ClipClassifier`` (encoder pre-training, ACP/ACP+) and ``VideoClassifier``
(video-level class scores for detection fusion when no external classifier file is given)."""
import torch
from torch import nn


class VideoClassifier(nn.Module):
    """Linear layer on mean-pooled snippet features: (B, C, L) → logits (B, K)."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features.mean(-1))


class ClipClassifier(nn.Module):
    """Encoder + ``VideoClassifier``: uint8 frames (B, L, T, 3, H, W) → logits (B, K)."""

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = VideoClassifier(encoder.out_dim, num_classes)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(frames))
