"""`build_loader`: shards → batches of uint8 frames at the fidelity the schedule names."""
import functools
import gc
import importlib.util
import warnings
from typing import Callable, Dict, Iterator, List, Optional

import torch

from ..fidelity import Fidelity
from .backend_cpu import load_snippets
from .pretext import Pretext
from .reader import FrontEnd
from .remote import index_remote, is_remote
from .shardlist import index_subset

BACKENDS = ("auto", "cpu", "dali")


def resolve_backend(backend: str) -> str:
    """"auto" → "dali-mixed" when a GPU and DALI are both present, "cpu" otherwise; "dali" → "dali-mixed" on a GPU,
    "dali-cpu" without one."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    has_dali = importlib.util.find_spec("nvidia.dali") is not None
    if backend == "auto":
        return "dali-mixed" if has_dali and torch.cuda.is_available() else "cpu"
    if backend == "dali":
        if not has_dali:
            raise ImportError("backend='dali' needs nvidia-dali (see requirements.txt); use backend='cpu'")
        return "dali-mixed" if torch.cuda.is_available() else "dali-cpu"
    return "cpu"


def _cpu_prepare(plan: dict, out: torch.Tensor) -> None:
    load_snippets(plan["mp4"], plan["frames"], plan["crop"], plan["size"], out)


def _dali_prepare(plan: dict, out: None, device: str) -> None:
    from .backend_dali import probe
    probe(plan, device)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _identity(batch: dict) -> dict:
    return batch


class CorruptLimitError(RuntimeError):
    """More samples of an epoch were corrupt than data.max_corrupt_fraction allows; the message lists them."""


_warned_unverified = False  # shards without checksums are reported once per process


def _warn_unverified(shards: List[str]) -> None:
    global _warned_unverified
    if shards and not _warned_unverified:
        _warned_unverified = True
        warnings.warn(f"shards packed without checksums are read unverified (their samples' json has no sha256), "
                      f"e.g. {shards[0]}; re-pack them with tools/make_shards.py to have every sample verified",
                      stacklevel=3)


class VideoLoader:
    """Iterable of batches {frames uint8 (B, L, T, 3, H, W), meta [B dicts], fidelity, epoch, iteration}.

    `len()` is the number of batches of this rank's epoch (the same on every rank); iteration yields those from the
    front end's `start` on. After an epoch, `corrupt` maps each skipped sample ("KEY in SHARD") to the reason, and a
    warning lists them. When more than `max_corrupt_fraction` of this rank's B·len() positions are corrupt, the
    epoch stops with CorruptLimitError.
    """

    def __init__(self, front: FrontEnd, backend: str, num_workers: int, dali_threads: int = 2,
                 max_corrupt_fraction: float = 1.0):
        if not 0.0 <= max_corrupt_fraction <= 1.0:
            raise ValueError(f"max_corrupt_fraction must lie in [0, 1], got {max_corrupt_fraction}")
        self.front, self.backend, self.num_workers, self.dali_threads = front, backend, num_workers, dali_threads
        self.max_corrupt_fraction = max_corrupt_fraction
        self.corrupt: Dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.front)

    def _batches(self) -> Iterator[dict]:
        front = self.front
        # Free unreachable PyAV objects before the workers fork: a codec context with decoding threads freed by the
        # garbage collector inside a forked child waits forever on its threads' condition variables.
        if self.num_workers:
            gc.collect()
        batches = torch.utils.data.DataLoader(
            front, batch_size=None, num_workers=self.num_workers, collate_fn=_identity,
            worker_init_fn=_worker_init if self.num_workers else None,
            prefetch_factor=2 if self.num_workers else None)
        if self.backend == "cpu":
            return iter(batches)
        from .backend_dali import DaliBatches
        device = self.backend.split("-")[1]
        device_id = torch.cuda.current_device() if device == "mixed" else None
        return iter(DaliBatches(batches, len(front), front.schedule, front.epoch, device, front.batch_size,
                                self.dali_threads, device_id, front.seed, front.start, front.train))

    def __iter__(self) -> Iterator[dict]:
        self.corrupt = {}
        positions = len(self.front) * self.front.batch_size
        for expected, batch in enumerate(self._batches(), self.front.start):
            if batch["iteration"] != expected:
                raise RuntimeError(f"batch order broken: got iteration {batch['iteration']}, expected {expected}")
            self.corrupt.update(batch.pop("corrupt"))
            _warn_unverified(batch.pop("unverified"))
            if len(self.corrupt) > self.max_corrupt_fraction * positions:
                listed = "; ".join(f"{k}: {v}" for k, v in sorted(self.corrupt.items()))
                raise CorruptLimitError(
                    f"epoch {self.front.epoch} (rank {self.front.rank}): {len(self.corrupt)} corrupt samples of "
                    f"{positions} exceed data.max_corrupt_fraction={self.max_corrupt_fraction}: {listed}")
            yield batch
        if self.corrupt:
            listed = "; ".join(f"{k}: {v}" for k, v in sorted(self.corrupt.items()))
            warnings.warn(f"epoch {self.front.epoch} (rank {self.front.rank}): skipped {len(self.corrupt)} corrupt "
                          f"samples: {listed}")


def build_loader(shards: str, subset: str, *, batch_size: int, schedule: Callable[[int, int], Fidelity],
                 train: bool, epoch: int, seed: int, backend: str = "auto", num_workers: int = 2, rank: int = 0,
                 cache_dir: Optional[str] = None, cache_max_gib: float = 50.0, fetch_retries: int = 5,
                 world_size: int = 1, foreground: bool = False, stride: Optional[int] = None,
                 shuffle_buffer: int = 16, dali_threads: int = 2, start: int = 0,
                 max_corrupt_fraction: float = 1.0, pretext: Optional[Pretext] = None) -> VideoLoader:
    """The batches of one epoch for this rank (see lofi/data/reader.py for order, splitting and padding).

    shards: a directory holding {subset}-NNNNNN.tar (+ manifest.json, checked before anything is read), a base URL
    or ``pipe:`` template of such a directory (lofi.data.remote: each shard is fetched into ``cache_dir``, at most
    ``cache_max_gib`` GiB, with ``fetch_retries`` retries), or a brace
    pattern of tar paths. batch_size: per process. schedule(epoch, iteration) -> Fidelity. foreground: one sample per
    annotated segment (ACP+). stride: frames between a snippet's frames when the Fidelity names none (default
    max(1, floor(frames / (L·T)))). backend: "auto" | "cpu" | "dali" (resolve_backend). start: the first iteration
    to yield (a run resumed mid-epoch): the batches before it are neither read nor decoded. max_corrupt_fraction:
    the share of this rank's positions that may be corrupt (skipped) before the epoch stops with CorruptLimitError.
    pretext: two views of every clip for a self-supervised pretext task (lofi.data.pretext): frames (B, 2, L, T, 3,
    H, W), labels in meta["pretext"].
    """
    resolved = resolve_backend(backend)
    if resolved == "cpu":
        prepare = _cpu_prepare
    else:
        prepare = functools.partial(_dali_prepare, device=resolved.split("-")[1])
    if is_remote(shards):
        indexed = index_remote(shards, subset, foreground, cache_dir, int(cache_max_gib * 2 ** 30), fetch_retries)
    else:
        indexed = index_subset(shards, subset, foreground)
    front = FrontEnd(indexed, batch_size=batch_size, schedule=schedule, train=train,
                     epoch=epoch, seed=seed, rank=rank, world_size=world_size, num_workers=num_workers,
                     prepare=prepare, fills_frames=resolved == "cpu", foreground=foreground, stride=stride,
                     shuffle_buffer=shuffle_buffer, start=start, pretext=pretext)
    return VideoLoader(front, resolved, num_workers, dali_threads, max_corrupt_fraction)
