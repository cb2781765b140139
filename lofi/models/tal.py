"""The temporal-action-localization models the stages train: an encoder with a localization head trained end to
end on frames, and a localization head with a video classifier on snippet features (the head stage's model.pt)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from lofi.config import from_dict
from lofi.engine.checkpoint import load

from .classifiers import VideoClassifier
from .registry import head_from_config
from .tal_head import TALHead


class EndToEnd(torch.nn.Module):
    """Encoder + localization head: uint8 frames (B, L, T, 3, H, W) → the head's outputs at this batch's L."""

    def __init__(self, encoder: torch.nn.Module, head: torch.nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, frames: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.head(self.encoder(frames))


class HeadModel(torch.nn.Module):
    """Localization head + VideoClassifier on snippet features (B, C, L) → (head outputs, class logits (B, K)).
    The head is the attribute ``localizer``, the prefix of its keys in model.pt files (``gtad`` in files written
    before heads were a choice: such keys load too)."""

    def __init__(self, head: TALHead, in_dim: int, num_classes: int):
        super().__init__()
        self.localizer = head
        self.classifier = VideoClassifier(in_dim, num_classes)
        self._register_load_state_dict_pre_hook(self._legacy_prefix)

    @staticmethod
    def _legacy_prefix(state_dict, prefix, *_):
        for key in [k for k in state_dict if k.startswith(prefix + "gtad.")]:
            state_dict[prefix + "localizer." + key[len(prefix) + 5:]] = state_dict.pop(key)

    def forward(self, features: torch.Tensor):
        return self.localizer(features), self.classifier(features)


def build_head_model(cfg, in_dim: int, num_classes: int, name=None) -> HeadModel:
    """A fresh HeadModel: the registered head of ``cfg.model.head`` (or ``name``) from its config section of the
    Config ``cfg``, then the classifier (in that order, so a seeded initialization draws the same numbers)."""
    return HeadModel(head_from_config(cfg, in_dim, name), in_dim, num_classes)


def load_head(path: Path, device: torch.device) -> Tuple[HeadModel, Dict[str, Any]]:
    """The head stage's ``model.pt`` → (HeadModel in eval mode, the bundle). A bundle without ``head_name`` holds a
    G-TAD head."""
    bundle = load(path)
    model = build_head_model(from_dict(bundle["config"]), bundle["in_dim"], len(bundle["classes"]),
                             bundle.get("head_name", "gtad"))
    model.load_state_dict(bundle["head"])
    return model.to(device).eval(), bundle
