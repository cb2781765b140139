"""Which frames a snippet holds (as OpenTAD's LoadSnippetFrames samples them).

L snippet centres spread uniformly over a frame range [start, end): centre_l = start + (l + 0.5)·n/L − 0.5 (frame
units, n = end − start). Each snippet is T frames at offsets (k − T/2)·stride, k = 0..T−1, rounded to the nearest
frame and clipped to the range. The default stride tiles the range without gaps where it can:
max(1, floor(n / (L·T))).

Times: frame i covers [i/fps, (i+1)/fps) seconds, so its centre is (i + 0.5)/fps. A snippet's time is the mean
centre time of the T frames actually sampled (clipping moves the first and last snippets inward).
"""
from typing import Optional, Tuple

import numpy as np


def default_stride(num_frames: int, L: int, T: int) -> int:
    """max(1, floor(num_frames / (L·T))): frames between consecutive frames of a snippet."""
    return max(1, num_frames // (L * T))


def snippet_frame_indices(num_frames: int, L: int, T: int, stride: Optional[int] = None, start: int = 0,
                          end: Optional[int] = None) -> np.ndarray:
    """Frame indices (L, T) int64 of L snippets over frames [start, end) (default the whole video)."""
    end = num_frames if end is None else end
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not 0 <= start < end <= num_frames:
        raise ValueError(f"frame range [{start}, {end}) is not inside [0, {num_frames})")
    n = end - start
    stride = default_stride(n, L, T) if stride is None else stride
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    centres = start + (np.arange(L) + 0.5) * (n / L) - 0.5
    offsets = (np.arange(T) - T // 2) * stride
    # floor(x + 0.5): round half up, so that the result does not depend on numpy's banker's rounding
    frames = np.floor(centres[:, None] + offsets[None, :] + 0.5).astype(np.int64)
    return np.clip(frames, start, end - 1)


def snippet_times(frames: np.ndarray, fps: float) -> np.ndarray:
    """Seconds (L,) float64: the mean centre time of each snippet's sampled frames (L, T)."""
    return (frames.mean(axis=1) + 0.5) / fps


def segment_frame_range(segment: Tuple[float, float], fps: float, num_frames: int) -> Tuple[int, int]:
    """Frames [start, end) whose centres lie inside segment [s, e] seconds; at least one frame, inside the video."""
    s, e = segment
    start = min(max(int(np.ceil(s * fps - 0.5)), 0), num_frames - 1)
    end = min(max(int(np.floor(e * fps - 0.5)) + 1, start + 1), num_frames)
    return start, end
