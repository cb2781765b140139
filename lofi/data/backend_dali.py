"""The `dali` backend: the front end's plans feed one DALI graph (decode the listed frames, resize, crop, flip).

A plan's frame indices may have any shape ((L, T), or (views, L, T) for a pretext task, lofi.data.pretext): the graph
decodes their L·T (or views·L·T) frames in the plan's order and the batch takes the plan's shape.

`video_graph(source, device)` is the one graph: device "cpu" (libavcodec; VP8, VP9 and MJPEG only) or "mixed"
(NVDEC; also H.264, HEVC, AV1). Only the decoder's device argument differs between the two. Every per-iteration
value comes from `batch_info.iteration`: DALI calls the source `prefetch_queue_depth` batches ahead, so the callback
checks that the plan it hands over is the one for that iteration and keys the batch's meta by it.

Recovery: damage that passes the front end's checks (a source broken before packing, in a codec without checksums)
can make DALI's decoder raise. The batch it raised on is then decoded by the `cpu` backend (PyAV, strict), which
skips, counts and names the broken sample like the front end; a new pipeline continues at the next iteration with
the batches already planned, so the order and the fidelity schedule are those of an undisturbed run.
"""
import io
import warnings
from typing import Callable, Dict, Iterable, Iterator, Optional

import av
import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.pipeline import Pipeline
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from .backend_cpu import load_snippets
from .reader import CorruptSample, fill_batch, skip_corrupt

CPU_CODECS = ("vp8", "vp9", "mjpeg")
DEVICES = ("cpu", "mixed")


def probe(plan: dict, device: str) -> None:
    """Checks a plan's mp4 before DALI sees it: a readable video stream, in a codec the device decodes, long enough.

    Returns None (DALI decodes later); raises CorruptSample for a broken file, ValueError for an unsupported codec.
    """
    try:
        with av.open(io.BytesIO(plan["mp4"])) as container:
            stream = container.streams.video[0]
            codec, frames = stream.codec_context.name, stream.frames
    except (av.FFmpegError, IndexError, ValueError, OSError) as exc:
        raise CorruptSample(f"{type(exc).__name__}: {exc}") from exc
    if device == "cpu" and codec not in CPU_CODECS:
        raise ValueError(f"sample {plan['key']}: DALI's CPU decoder handles {CPU_CODECS}, not {codec}; "
                         "use backend='cpu' or shards made with codec vp9/mjpeg")
    if frames and int(plan["frames"].max()) >= frames:
        raise CorruptSample(f"needs frame {int(plan['frames'].max())} but the stream has {frames} frames")


def video_graph(source: Callable, device: str):
    """The DALI graph of both devices: frames (B, L·T, 3, H, W) uint8 on the decoder's device.

    Each distinct frame is decoded, resized and cropped once; `sequence_rearrange` then lays out the L·T snippet
    frames (a frame list with repeats makes DALI's decoder seek once per entry).
    """
    if device not in DEVICES:
        raise ValueError(f"DALI device must be one of {DEVICES}, got {device!r}")
    encoded, frames, positions, size, anchor, shape, flip = fn.external_source(
        source=source, num_outputs=7, batch=True, batch_info=True,
        dtype=[types.UINT8, types.INT32, types.INT32, types.FLOAT, types.INT32, types.INT32, types.INT32])
    video = fn.decoders.video(encoded, device=device, frames=frames)
    video = fn.resize(video, size=size, antialias=True, interp_type=types.INTERP_LINEAR)
    video = fn.slice(video, anchor, shape, axis_names="HW")
    video = fn.flip(video, horizontal=flip)
    video = fn.sequence_rearrange(video, new_order=positions)
    return fn.transpose(video, perm=[0, 3, 1, 2])


@pipeline_def
def _pipeline(source: Callable, device: str):
    return video_graph(source, device)


def build_pipeline(source: Callable, device: str, batch_size: int, num_threads: int = 2,
                   device_id: Optional[int] = None, seed: int = 0) -> Pipeline:
    """An unbuilt DALI pipeline around `video_graph` (device_id None for "cpu")."""
    return _pipeline(source=source, device=device, batch_size=batch_size, num_threads=num_threads,
                     device_id=device_id, seed=seed, prefetch_queue_depth=2)


def plan_arrays(plans: list):
    """The seven external-source inputs of a batch of plans (distinct frames, and positions into them)."""
    crops = [p["crop"] for p in plans]
    distinct = [np.unique(p["frames"], return_inverse=True) for p in plans]
    return ([np.frombuffer(p["mp4"], np.uint8) for p in plans],
            [unique.astype(np.int32) for unique, _ in distinct],
            [inverse.reshape(-1).astype(np.int32) for _, inverse in distinct],
            [np.array([c.resize_h, c.resize_w], np.float32) for c in crops],
            [np.array([c.top, c.left], np.int32) for c in crops],
            [np.array([c.H, c.W], np.int32) for c in crops],
            [np.array(int(c.flip), np.int32) for c in crops])


def cpu_fallback(batch: dict, train: bool, error: BaseException) -> dict:
    """Decodes a planned batch that DALI failed on with the `cpu` backend: frames (B, L, T, 3, H, W) (B, 2, L, T, 3,
    H, W with a pretext task) on the CPU.

    A sample PyAV cannot decode cleanly is skipped, counted in batch["corrupt"] and replaced as in the front end.
    """
    fid, plans = batch["fidelity"], batch.pop("plans")
    shape = plans[0]["frames"].shape  # (L, T), or (views, L, T) with a pretext task
    out = torch.empty((len(plans), plans[0]["frames"].size, 3, fid.H, fid.W), dtype=torch.uint8)
    good, failed = [], set()
    for plan in plans:
        if plan["where"] in failed:
            continue
        try:
            load_snippets(plan["mp4"], plan["frames"], plan["crop"], plan["size"], out[len(good)])
            good.append(plan)
        except CorruptSample as exc:
            failed.add(plan["where"])
            skip_corrupt(batch["corrupt"], plan["where"], exc)
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    reason = next((line for line in lines if "failed" in line.lower()), lines[0])  # DALI's message is a traceback
    warnings.warn(f"epoch {batch['epoch']} batch {batch['iteration']}: DALI failed ({reason}); decoded the batch "
                  f"with PyAV: {len(failed)} corrupt sample(s) {sorted(failed)}", stacklevel=2)
    if not good:
        raise RuntimeError(f"epoch {batch['epoch']} batch {batch['iteration']}: every sample is corrupt: "
                           f"{sorted(batch['corrupt'])}")
    fill_batch(good, len(plans), train, out)
    batch["meta"] = [p["meta"] for p in good]
    batch["frames"] = out.view(len(good), *shape, 3, fid.H, fid.W)
    return batch


class DaliBatches:
    """Batches {frames (B, L, T, 3, H, W), meta, fidelity, epoch, iteration, corrupt, unverified} decoded by DALI;
    a batch DALI raises on is decoded by `cpu_fallback` and the pipeline rebuilt."""

    def __init__(self, plan_batches: Iterable[dict], num_batches: int, schedule: Callable, epoch: int, device: str,
                 batch_size: int, num_threads: int = 2, device_id: Optional[int] = None, seed: int = 0,
                 start: int = 0, train: bool = True):
        self.plan_batches, self.num_batches, self.schedule, self.epoch = plan_batches, num_batches, schedule, epoch
        self.device, self.batch_size, self.num_threads, self.device_id = device, batch_size, num_threads, device_id
        self.seed, self.start, self.train = seed, start, train  # start: the first iteration (a resumed epoch)

    def __iter__(self) -> Iterator[dict]:
        plans = iter(self.plan_batches)
        planned: Dict[int, dict] = {}  # batches handed to a pipeline and not yet delivered, by iteration
        state = {"start": self.start, "error": None}  # the running pipeline's first iteration; a front-end error

        def source(info):
            k = state["start"] + info.iteration
            if k >= self.num_batches:
                raise StopIteration
            if k not in planned:
                try:
                    batch = next(plans)
                except BaseException as exc:  # the front end's own errors end the epoch, never a fallback
                    state["error"] = exc
                    raise
                if batch["iteration"] != k or batch["fidelity"] != self.schedule(self.epoch, k):
                    state["error"] = RuntimeError(f"DALI asked for iteration {k}, the front end gave "
                                                  f"{batch['iteration']}")
                    raise state["error"]
                planned[k] = batch
            return plan_arrays(planned[k]["plans"])

        iteration = self.start
        while iteration < self.num_batches:
            state["start"] = iteration
            pipe, outputs = build_pipeline(source, self.device, self.batch_size, self.num_threads, self.device_id,
                                           self.seed), None
            try:
                pipe.build()
                outputs = DALIGenericIterator(pipe, ["frames"], auto_reset=False)
                for out in outputs:
                    batch, fid = planned.pop(iteration), self.schedule(self.epoch, iteration)
                    shape = batch.pop("plans")[0]["frames"].shape  # (L, T), or (views, L, T) with a pretext task
                    batch["frames"] = out[0]["frames"].view(self.batch_size, *shape, 3, fid.H, fid.W)
                    iteration += 1
                    yield batch
                return
            except RuntimeError as exc:
                if state["error"] is not None or iteration not in planned:
                    raise state["error"] or exc
                batch = cpu_fallback(planned.pop(iteration), self.train, exc)
            finally:
                del pipe, outputs  # a pipeline that raised is not used again
            if self.device == "mixed":
                batch["frames"] = batch["frames"].to(torch.device("cuda", self.device_id))
            iteration += 1
            yield batch
