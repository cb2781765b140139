"""The front end shared by both backends: which samples form which batch, at which fidelity, with which frames.

Everything here is a function of (seed, epoch, rank, world_size, num_workers, batch_size) and the shards:

* Order. An epoch is a sequence of units (a video; in `foreground` mode one annotated segment of a video) in shard
  order. Training permutes the shards per epoch (the same permutation on every rank); evaluation keeps the sorted
  order.
* Split by rank, then by worker. Every rank gets `ceil(units / (world_size · batch_size))` batches: rank r reads the
  contiguous positions [r·n·B, (r+1)·n·B) of the sequence, and each DataLoader worker a contiguous block of those, so
  a worker reads whole runs of its shards with webdataset. Positions past the end wrap to the start of the sequence:
  in training these are resampled videos (a few videos appear twice in an epoch); in evaluation they are padding
  duplicates marked meta["pad"] = True, so every video appears exactly once unpadded, in a fixed order.
* Shuffling (training). A webdataset shuffle buffer, seeded by (seed, epoch, rank, worker), inside each worker's
  block; the crop and flip of each sample are drawn from (seed, epoch, position). The result is reproducible for
  fixed (seed, world_size, num_workers, batch_size); changing the worker count changes the buffer's order.
* Batching. A worker produces the batches with global iterations k ≡ worker (mod num_workers), the order in which
  torch's DataLoader returns them, and takes each batch's Fidelity from schedule(epoch, k).
* Pretext views. With a `pretext` task (lofi.data.pretext) each sample holds two views of its clip, frame indices
  (2, L, T) chosen here, so frames are (B, 2, L, T, 3, H, W) and meta["pretext"] holds the views' labels.
* Starting mid-epoch (a resumed run). With `start` = s, the epoch yields iterations s, s+1, ... with the same
  contents as the full epoch's: DataLoader worker w plays the part of worker (w + s) mod num_workers, the shuffle
  buffer's order is computed on positions alone, and only the samples of iterations ≥ s are read and decoded.
* Corrupt samples. A sample whose mp4/json is missing, malformed or undecodable, or whose mp4 does not match the
  sha256 its json records (verified before the sample is planned), is skipped with a warning naming its key and
  shard, counted in the batch's "corrupt" field, and replaced by a duplicate of a good sample of the same batch
  (marked pad in evaluation), so batch shapes stay fixed. Shards packed without checksums are read unverified and
  listed in the batch's "unverified" field.
"""
import json
import math
import tarfile
import warnings
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import webdataset as wds

from ..fidelity import Fidelity
from ..seeding import numpy_seed
from .packing import member_checksums
from .pretext import VIEWS, Pretext
from .sampling import segment_frame_range, snippet_frame_indices, snippet_times
from .shardlist import Shard, local_path
from .spatial import crop_params

class CorruptSample(Exception):
    """A sample that cannot be read or decoded; the front end skips, counts and reports it."""


REQUIRED = ("id", "duration", "fps", "num_frames", "width", "height")

# prepare(plan, out): fills out uint8 (L·T, 3, H, W) with the plan's frames, or only checks the plan when out is None
# (DALI decodes later); raises CorruptSample
Prepare = Callable[[dict, Optional[torch.Tensor]], None]


def verify_checksums(sample: dict, info: dict) -> bool:
    """Checks the sample's members against the sha256 its json records: True when verified, False when the json
    records none (shards packed before checksums); raises CorruptSample on a mismatch."""
    recorded = info.get("sha256")
    if recorded is None:
        return False
    if not isinstance(recorded, dict) or "mp4" not in recorded:
        raise CorruptSample(f"json field sha256 is not {{member: hex digest}} with mp4: {recorded!r}")
    for name, digest in recorded.items():
        if name not in sample:
            raise CorruptSample(f"json records the sha256 of member {name!r}, which the sample lacks")
        if member_checksums({name: sample[name]})[name] != digest:
            raise CorruptSample(f"{name} does not match its sha256 (damaged after packing)")
    return True


def sample_where(sample: dict) -> str:
    """"KEY in SHARD": how warnings and the corrupt report name a sample."""
    return f"{sample.get('__key__')} in {sample.get('__url__')}"


def skip_corrupt(corrupt: Dict[str, str], where: str, exc: Exception) -> None:
    """Records a skipped sample in a batch's `corrupt` map and warns once, naming it."""
    warnings.warn(f"skipping corrupt sample {where}: {exc}", stacklevel=3)
    corrupt[where] = str(exc)


def fill_batch(plans: List[dict], size: int, train: bool, out: Optional[torch.Tensor] = None) -> None:
    """Pads `plans` in place to `size` with duplicates of plans[0] (marked pad in evaluation); copies row 0 of
    `out` (B, L·T, 3, H, W) into the added rows when given."""
    while len(plans) < size:
        if out is not None:
            out[len(plans)] = out[0]
        plans.append(dict(plans[0], meta=dict(plans[0]["meta"], pad=plans[0]["meta"]["pad"] or not train)))


class FrontEnd(torch.utils.data.IterableDataset):
    """Yields this worker's batches: {frames | plans, meta, fidelity, epoch, iteration, corrupt}."""

    def __init__(self, shards: List[Shard], *, batch_size: int, schedule: Callable[[int, int], Fidelity],
                 train: bool, epoch: int, seed: int, rank: int, world_size: int, num_workers: int,
                 prepare: Prepare, fills_frames: bool, foreground: bool = False, stride: Optional[int] = None,
                 shuffle_buffer: int = 16, start: int = 0, pretext: Optional[Pretext] = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.shards, self.batch_size, self.schedule, self.train = shards, batch_size, schedule, train
        self.epoch, self.seed, self.rank, self.world_size = epoch, seed, rank, world_size
        self.num_workers, self.prepare, self.foreground, self.stride = max(1, num_workers), prepare, foreground, stride
        self.shuffle_buffer, self.fills_frames, self.pretext = shuffle_buffer, fills_frames, pretext
        order = (np.random.default_rng(numpy_seed(seed, epoch)).permutation(len(shards)) if train
                 else np.arange(len(shards)))
        self.units: List[Tuple[int, int, Optional[int]]] = [
            (int(s), k, seg) for s in order for k, seg in shards[s].units()]
        if not self.units:
            raise ValueError("the shards hold no " + ("annotated segments" if foreground else "samples"))
        self.num_batches = math.ceil(len(self.units) / (world_size * batch_size))
        if not 0 <= start <= self.num_batches:
            raise ValueError(f"start iteration {start} is not in [0, {self.num_batches}]")
        self.start = start

    def __len__(self) -> int:
        return self.num_batches

    def sample_shape(self, fid: Fidelity) -> Tuple[int, ...]:
        """The frame indices of one sample: (L, T), or (views, L, T) with a pretext task."""
        return (fid.L, fid.T) if self.pretext is None else (VIEWS, fid.L, fid.T)

    def worker_batches(self, worker: int) -> List[int]:
        """The global iterations this worker produces, in order."""
        return list(range(worker, self.num_batches, self.num_workers))

    def worker_positions(self, worker: int) -> range:
        """The contiguous block of epoch positions (before wrapping) this worker reads."""
        start = self.rank * self.num_batches * self.batch_size
        start += self.batch_size * sum(len(self.worker_batches(w)) for w in range(worker))
        return range(start, start + self.batch_size * len(self.worker_batches(worker)))

    def read(self, positions: range) -> Iterator[Tuple[int, dict, Optional[int]]]:
        """(position, webdataset sample, segment index) for each position, reading each shard run sequentially."""
        runs: List[Tuple[int, List[Tuple[int, int, Optional[int]]]]] = []
        for p in positions:
            shard, k, seg = self.units[p % len(self.units)]
            if runs and runs[-1][0] == shard and runs[-1][1][-1][1] <= k:
                runs[-1][1].append((p, k, seg))
            else:
                runs.append((shard, [(p, k, seg)]))
        for shard_index, items in runs:
            shard = self.shards[shard_index]
            wanted: Dict[int, List[Tuple[int, Optional[int]]]] = {}
            for p, k, seg in items:
                wanted.setdefault(k, []).append((p, seg))
            last = items[-1][1]
            samples = wds.tarfile_to_samples()(iter([{"url": local_path(shard)}]))
            try:
                for k, sample in enumerate(samples):
                    if sample.get("__key__") != shard.keys[k]:
                        raise RuntimeError(f"shard {shard.path} changed since it was indexed (sample {k})")
                    for p, seg in wanted.get(k, ()):
                        yield p, sample, seg
                    if k >= last:
                        break
            except (OSError, ValueError, IndexError, tarfile.TarError) as exc:
                raise RuntimeError(f"cannot read shard {shard.path}: {exc}") from exc
            finally:
                samples.close()

    def read_in_order(self, order: List[int]) -> Iterator[Tuple[int, dict, Optional[int]]]:
        """``read`` of the positions in ``order``, yielded in that order; shards are still read sequentially
        (ascending positions), and a sample read before its turn waits in memory (a shuffle buffer's worth)."""
        items = self.read(sorted(order))
        ahead: Dict[int, Tuple[int, dict, Optional[int]]] = {}
        for p in order:
            while p not in ahead:
                item = next(items, None)
                if item is None:
                    raise RuntimeError(f"epoch {self.epoch}: position {p} was not read (a shard holds fewer samples "
                                       "than when it was indexed)")
                ahead[item[0]] = item
            yield ahead.pop(p)

    def plan(self, position: int, sample: dict, segment: Optional[int], fid: Fidelity) -> dict:
        """What to decode for one sample: encoded bytes, frame indices (L, T), the Crop, and its meta."""
        if "mp4" not in sample or "json" not in sample:
            raise CorruptSample(f"has no {'mp4' if 'mp4' not in sample else 'json'} member")
        try:
            info = json.loads(sample["json"])
        except ValueError as exc:
            raise CorruptSample(f"malformed json: {exc}") from exc
        missing = [f for f in REQUIRED if f not in info]
        if missing:
            raise CorruptSample(f"json lacks {missing}")
        verified = verify_checksums(sample, info)
        num_frames, fps = int(info["num_frames"]), float(info["fps"])
        annotations = info.get("annotations", [])
        start, end = 0, num_frames
        if segment is not None:
            if segment >= len(annotations) or "segment" not in annotations[segment]:
                raise CorruptSample(f"json has no annotations[{segment}].segment")
            start, end = segment_frame_range(annotations[segment]["segment"], fps, num_frames)
        stride = fid.stride if fid.stride is not None else self.stride
        rng = np.random.default_rng(numpy_seed(self.seed, self.epoch, position))
        zoom = 1.0 if self.pretext is None else self.pretext.zoom_factor(self.train, rng)
        crop = crop_params(int(info["height"]), int(info["width"]), fid.H, fid.W, self.train, rng, zoom)
        view_meta: Dict[str, list] = {}
        try:
            if self.pretext is None:
                frames = snippet_frame_indices(num_frames, fid.L, fid.T, stride, start, end)
            else:
                frames, view_meta = self.pretext.views(num_frames, fid.L, fid.T, stride, start, end, self.train, rng)
        except ValueError as exc:
            raise CorruptSample(str(exc)) from exc
        meta = {"id": str(info["id"]), "duration": float(info["duration"]), "fps": fps, "annotations": annotations,
                "snippet_times": snippet_times(frames.reshape(-1, fid.T), fps).reshape(frames.shape[:-1]),
                "key": sample["__key__"], "pad": (not self.train) and position >= len(self.units), **view_meta}
        label = annotations[segment] if segment is not None else info
        if "label_id" in label:
            meta["label_id"] = int(label["label_id"])
        return {"key": sample["__key__"], "mp4": sample["mp4"], "frames": frames, "crop": crop,
                "size": (int(info["height"]), int(info["width"])), "meta": meta, "where": sample_where(sample),
                "shard": sample.get("__url__"), "verified": verified}

    def make_batch(self, iteration: int, items: List[Tuple[int, dict, Optional[int]]]) -> dict:
        """Plans and prepares one batch; corrupt samples are replaced by duplicates of a good one (see module doc)."""
        fid = self.schedule(self.epoch, iteration)
        shape = self.sample_shape(fid)
        out = (torch.empty((len(items), math.prod(shape), 3, fid.H, fid.W), dtype=torch.uint8) if self.fills_frames
               else None)
        plans, corrupt = [], {}
        for position, sample, segment in items:
            try:
                plan = self.plan(position, sample, segment, fid)
                self.prepare(plan, None if out is None else out[len(plans)])
                plans.append(plan)
            except CorruptSample as exc:
                skip_corrupt(corrupt, sample_where(sample), exc)
        if not plans:
            raise RuntimeError(f"epoch {self.epoch} batch {iteration}: every sample is corrupt: {sorted(corrupt)}")
        fill_batch(plans, len(items), self.train, out)
        batch = {"meta": [p["meta"] for p in plans], "fidelity": fid, "epoch": self.epoch, "iteration": iteration,
                 "corrupt": corrupt, "unverified": sorted({p["shard"] for p in plans if not p["verified"]})}
        if out is None:
            batch["plans"] = plans
        else:
            batch["frames"] = out.view(len(plans), *shape, 3, fid.H, fid.W)
        return batch

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        if info is not None and info.num_workers != self.num_workers:
            raise RuntimeError(f"FrontEnd built for {self.num_workers} workers runs in {info.num_workers}")
        role = (worker + self.start) % self.num_workers  # the worker whose batches this one yields (module doc)
        order = list(self.worker_positions(role))
        if self.train and self.shuffle_buffer > 1:
            seed = numpy_seed(self.seed, self.epoch, self.rank, role, 1)
            order = list(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, seed=seed)(iter(order)))
        mine = self.worker_batches(role)
        skip = sum(k < self.start for k in mine)
        stream = self.read_in_order(order[skip * self.batch_size:])
        batches = iter(mine[skip:])
        items: List[Tuple[int, dict, Optional[int]]] = []
        for item in stream:
            items.append(item)
            if len(items) == self.batch_size:
                yield self.make_batch(next(batches), items)
                items = []
