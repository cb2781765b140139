"""The views of a clip for the self-supervised pretext tasks: frame indices chosen in the front end's plan
(lofi.data.reader), so both backends decode exactly these frames.

Every clip yields two views, decoded with one crop, into frames (2, L, T, 3, H, W); view v has pretext label v.
Both views of a clip are in the same batch (SpeedNet's "same-batch training"), so every batch's labels are exactly
balanced and the two classes differ only in time, never in content.

* ``arrow`` (Arrow of Time; Wei et al., CVPR 2018): view 0 holds the frames the stage samples from the clip
  (lofi.data.sampling, as ACP does); view 1 the same frames in reverse order, snippets and the frames inside each
  snippet: the clip played backwards.
* ``speed`` (SpeedNet; Benaim et al., CVPR 2020): both views play one sampling pattern P (L, T): the stage's snippet
  sampling over a window of m frames, shifted to start at 0. The view at rate r holds frames ``a + round(r · P)``:
  every gap between its sampled frames is r times P's, so r = 2 is the clip played twice as fast (every other
  frame). View 0 (normal speed) draws r from ``normal``, view 1 (sped up) from ``fast``, uniformly per clip;
  m = floor((n − 1) / r_max) + 1 is the longest window whose faster view still fits the clip's n frames, and each
  view's first frame ``a`` is drawn uniformly where the view fits (centred in evaluation). Training clips are also
  zoomed by a factor drawn uniformly from ``zoom`` before the crop (lofi.data.spatial), so that the size of the
  motion in pixels does not tell the speed; SpeedNet randomises the rate and the spatial scale so that neither
  frame-rate nor compression artefacts solve the task.

Rounding: ``round(x)`` is ``floor(x + 0.5)``, as in the sampler. The draws come from the plan's generator, seeded by
(seed, epoch, position): the zoom, then the crop, then the rates and the view positions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np

from .sampling import snippet_frame_indices

TASKS = ("arrow", "speed")
VIEWS = 2  # view v has pretext label v: 0 forward / normal speed, 1 reversed / sped up


@dataclass(frozen=True)
class Pretext:
    """A pretext task and, for ``speed``, its ranges (low, high): the playback rates of the normal and the sped-up
    view and the training zoom."""
    task: str
    normal: Tuple[float, float] = (1.0, 1.0)
    fast: Tuple[float, float] = (2.0, 2.0)
    zoom: Tuple[float, float] = (1.0, 1.0)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"pretext task must be one of {TASKS}, got {self.task!r}")
        for name in ("normal", "fast", "zoom"):
            low, high = getattr(self, name)
            if not (math.isfinite(low) and math.isfinite(high) and 1 <= low <= high):
                raise ValueError(f"pretext {name} must be a range 1 <= low <= high, got {getattr(self, name)}")
        if self.fast[0] <= self.normal[1]:
            raise ValueError(f"pretext fast {self.fast} must lie above normal {self.normal}")

    def zoom_factor(self, train: bool, rng: np.random.Generator) -> float:
        """The spatial zoom of a clip: drawn from ``zoom`` for a training ``speed`` clip, else 1."""
        return float(rng.uniform(*self.zoom)) if train and self.task == "speed" else 1.0

    def views(self, num_frames: int, L: int, T: int, stride, start: int, end: int, train: bool,
              rng: np.random.Generator) -> Tuple[np.ndarray, Dict[str, list]]:
        """Frame indices (2, L, T) int64 of the two views of frames [start, end), inside that range, and their meta:
        ``pretext`` (the labels [0, 1]) and ``pretext_rates`` (each view's playback rate; −1: reversed)."""
        if self.task == "arrow":
            forward = snippet_frame_indices(num_frames, L, T, stride, start, end)
            return np.stack([forward, forward[::-1, ::-1]]), {"pretext": list(range(VIEWS)), "pretext_rates": [1, -1]}
        rates = [float(rng.uniform(*self.normal)), float(rng.uniform(*self.fast))]
        window = int((end - start - 1) // max(rates)) + 1
        pattern = snippet_frame_indices(window, L, T, stride)
        pattern -= pattern.min()
        views = []
        for rate in rates:
            offsets = np.floor(rate * pattern + 0.5).astype(np.int64)
            slack = end - 1 - start - int(offsets.max())
            views.append(start + (int(rng.integers(0, slack + 1)) if train else slack // 2) + offsets)
        return np.stack(views), {"pretext": list(range(VIEWS)), "pretext_rates": rates}
