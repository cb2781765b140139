"""The `cpu` backend: PyAV decodes only the GOPs the sampled frames need, torch resizes and crops (antialias).

It runs inside the DataLoader workers, one decoding thread per worker. For each needed group of pictures it seeks to
the keyframe and decodes up to the last needed frame of that group; frames between groups are never decoded.
"""
import bisect
import io
from typing import Dict, List, Tuple

import av
import numpy as np
import torch

from .spatial import Crop, apply_crop


class CorruptSample(Exception):
    """A sample that cannot be decoded; the front end skips, counts and reports it."""


def stream_index(container: "av.container.InputContainer") -> Tuple[List[int], List[int]]:
    """Presentation timestamps of every frame in display order, and the display indices of the keyframes."""
    stream = container.streams.video[0]
    packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.pts is not None and p.size]
    order = sorted(range(len(packets)), key=lambda i: packets[i][0])
    pts = [packets[i][0] for i in order]
    keyframes = [rank for rank, i in enumerate(order) if packets[i][1]]
    if not keyframes or keyframes[0] != 0:
        keyframes.insert(0, 0)
    return pts, keyframes


def gop_runs(indices: np.ndarray, keyframes: List[int]) -> List[Tuple[int, List[int]]]:
    """Sorted unique frame indices grouped by the keyframe they decode from: [(keyframe index, [indices])]."""
    runs: List[Tuple[int, List[int]]] = []
    for i in indices.tolist():
        key = keyframes[bisect.bisect_right(keyframes, i) - 1]
        if runs and runs[-1][0] == key:
            runs[-1][1].append(i)
        else:
            runs.append((key, [i]))
    return runs


def decode_frames(encoded: bytes, indices: np.ndarray, threads: int = 1) -> np.ndarray:
    """uint8 (N, h, w, 3) RGB frames for sorted unique frame `indices` of an encoded video; CorruptSample otherwise."""
    try:
        with av.open(io.BytesIO(encoded)) as container:
            stream = container.streams.video[0]
            stream.thread_count = threads
            pts, keyframes = stream_index(container)
            if len(indices) and indices[-1] >= len(pts):
                raise CorruptSample(f"needs frame {indices[-1]} but the stream has {len(pts)} frames")
            index_of: Dict[int, int] = {p: i for i, p in enumerate(pts)}
            out: Dict[int, np.ndarray] = {}
            position, frames = None, None  # the next display index the open decode iterator returns
            for key, wanted in gop_runs(indices, keyframes):
                if position is None or not key <= position <= wanted[0]:
                    container.seek(pts[key], stream=stream, backward=True, any_frame=False)
                    frames = container.decode(stream)
                for frame in frames:
                    i = index_of.get(frame.pts)
                    if i is None:
                        continue
                    if i in wanted:
                        out[i] = frame.to_ndarray(format="rgb24")
                    if i >= wanted[-1]:
                        position = i + 1
                        break
                else:
                    position = None
            missing = [i for i in indices.tolist() if i not in out]
            if missing:
                raise CorruptSample(f"frames {missing[:5]} could not be decoded")
            return np.stack([out[i] for i in indices.tolist()])
    except CorruptSample:
        raise
    except (av.FFmpegError, IndexError, ValueError, OSError) as exc:
        raise CorruptSample(f"{type(exc).__name__}: {exc}") from exc


def load_snippets(encoded: bytes, frames: np.ndarray, crop: Crop, size: Tuple[int, int],
                  threads: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    """Decodes, resizes and crops each distinct frame of `frames` (L, T) once.

    Returns uint8 (U, 3, H, W) for the U sorted distinct frames, and int64 (L·T,) positions into them (the snippets'
    frames in order). `size` is the (height, width) the json states; another stream size is corrupt.
    """
    unique, inverse = np.unique(frames, return_inverse=True)
    decoded = torch.from_numpy(decode_frames(encoded, unique, threads)).permute(0, 3, 1, 2)
    if tuple(decoded.shape[-2:]) != tuple(size):
        raise CorruptSample(f"frames are {decoded.shape[-1]}x{decoded.shape[-2]}, the json says {size[1]}x{size[0]}")
    return apply_crop(decoded, crop), torch.from_numpy(inverse.reshape(-1))
