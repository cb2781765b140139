"""The `cpu` backend: PyAV decodes only the GOPs the sampled frames need, torch resizes and crops (antialias).

It runs inside the DataLoader workers, one decoding thread per worker. For each needed group of pictures it seeks to
the keyframe and decodes up to the last needed frame of that group; frames between groups are never decoded.
"""
import bisect
import contextlib
import io
from typing import Dict, Iterator, List, Optional, Tuple

import av
import av.logging
import numpy as np
import torch

from .reader import CorruptSample
from .spatial import Crop, apply_crop


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


@contextlib.contextmanager
def decoder_errors(threads: int = 1) -> Iterator[List[str]]:
    """The libav messages of level ERROR or worse logged inside the block ("codec: message"), filled on exit.

    A damaged bitstream often decodes "successfully": the decoder conceals the damage and only logs it (h264's
    "error while decoding MB", vp9's "Failed to read frame header"); these messages are how PyAV exposes that. PyAV's
    log callback (level ERROR) is installed for the block only and the previous level restored after it: left
    installed, a codec's own threads (a threaded encoder, say) block in the callback waiting for the GIL while the
    thread that holds it waits for them, and the process hangs. Only the calling thread's messages are taken unless
    `threads` > 1 (frame threads).
    """
    previous = av.logging.get_level()
    if previous is None or previous < av.logging.ERROR:
        av.logging.set_level(av.logging.ERROR)
    errors: List[str] = []
    try:
        with av.logging.Capture(local=threads <= 1) as logs:
            yield errors
        errors += [f"{name}: {message.strip()}" for level, name, message in logs if level <= av.logging.ERROR]
    finally:
        av.logging.set_level(previous)


def decode_frames(encoded: bytes, indices: np.ndarray, threads: int = 1) -> List[np.ndarray]:
    """uint8 (h, w, 3) RGB frames for sorted unique frame `indices` of an encoded video; CorruptSample otherwise.

    A list, not one stacked array: a stack of hundreds of frames is a large fresh allocation per video whose page
    faults cost about as much as the decoding.
    """
    try:
        with decoder_errors(threads) as errors, av.open(io.BytesIO(encoded)) as container:
            stream = container.streams.video[0]
            stream.thread_count = threads
            stream.codec_context.options = {"err_detect": "explode"}
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
        if errors:
            raise CorruptSample(f"the decoder reported {len(errors)} error(s), e.g. {errors[0]}")
        return [out[i] for i in indices.tolist()]
    except CorruptSample:
        raise
    except (av.FFmpegError, IndexError, ValueError, OSError) as exc:
        raise CorruptSample(f"{type(exc).__name__}: {exc}") from exc


def crop_into(decoded: List[np.ndarray], positions: np.ndarray, crop: Crop, out: torch.Tensor) -> None:
    """Resizes and crops each decoded (h, w, 3) frame once, into every row of `out` (N, 3, H, W) that samples it.

    positions: (N,) index into `decoded` of each output row.
    """
    order = np.argsort(positions, kind="stable")
    bounds = np.searchsorted(positions[order], np.arange(len(decoded) + 1))
    for j, frame in enumerate(decoded):
        rows = order[bounds[j]:bounds[j + 1]]
        if len(rows):
            out[rows[0]] = apply_crop(torch.from_numpy(frame).permute(2, 0, 1)[None], crop)[0]
            for row in rows[1:]:
                out[row] = out[rows[0]]


def load_snippets(encoded: bytes, frames: np.ndarray, crop: Crop, size: Tuple[int, int],
                  out: Optional[torch.Tensor] = None, threads: int = 1) -> torch.Tensor:
    """uint8 (L, T, 3, H, W): the snippet frames `frames` (L, T), each distinct frame decoded, resized and cropped once.

    Written into `out` (L·T, 3, H, W) when given (the front end passes its batch row), else into a new tensor.
    `size` is the (height, width) the json states; a stream of another size is corrupt (the crop assumed it).
    """
    unique, positions = np.unique(frames, return_inverse=True)
    decoded = decode_frames(encoded, unique, threads)
    if decoded[0].shape[:2] != tuple(size):
        raise CorruptSample(f"frames are {decoded[0].shape[1]}x{decoded[0].shape[0]}, the json says {size[1]}x{size[0]}")
    if out is None:
        out = torch.empty((frames.size, 3, crop.H, crop.W), dtype=torch.uint8)
    crop_into(decoded, positions.reshape(-1), crop, out)
    return out.view(*frames.shape, 3, crop.H, crop.W)
