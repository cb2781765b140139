"""The spatial policy: resize so the frame covers H×W without squashing, then crop (and flip when training).

Training: the short side becomes H (for H = W), a random H×W crop, a horizontal flip with probability 1/2.
Evaluation and feature extraction: the same resize, then the centre crop. Both backends apply the same `Crop`.
A `zoom` > 1 (the SpeedNet views' spatial augmentation, lofi.data.pretext) resizes zoom times larger before the crop.
"""
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF


@dataclass(frozen=True)
class Crop:
    """Resize the whole frame to (resize_h, resize_w), take rows [top, top+H) and columns [left, left+W), flip."""

    resize_h: int
    resize_w: int
    top: int
    left: int
    H: int
    W: int
    flip: bool


def crop_params(height: int, width: int, H: int, W: int, train: bool, rng: np.random.Generator,
                zoom: float = 1.0) -> Crop:
    """The Crop of a height×width video for an H×W output, resized `zoom` times larger than the smallest size that
    covers H×W; `rng` draws the training crop and flip."""
    scale = max(H / height, W / width) * zoom
    resize_h, resize_w = max(H, round(height * scale)), max(W, round(width * scale))
    if train:
        top, left = int(rng.integers(0, resize_h - H + 1)), int(rng.integers(0, resize_w - W + 1))
        flip = bool(rng.random() < 0.5)
    else:
        top, left, flip = (resize_h - H) // 2, (resize_w - W) // 2, False
    return Crop(resize_h, resize_w, top, left, H, W, flip)


def apply_crop(frames: torch.Tensor, crop: Crop) -> torch.Tensor:
    """uint8 (N, 3, h, w) → uint8 (N, 3, H, W): antialiased bilinear resize, crop, optional flip."""
    out = TF.resize(frames, [crop.resize_h, crop.resize_w], antialias=True)
    out = out[:, :, crop.top:crop.top + crop.H, crop.left:crop.left + crop.W]
    return out.flip(-1) if crop.flip else out
