"""Snippet features for the head stage: a sharded on-disk cache, external features, and a loader over them.

Cache layout (one directory per subset): ``index.json`` = {key: {encoder, fidelity, source, ...}, complete, videos:
{id: shard file}} and ``features-R-NNNNNN.h5`` shards (R = the writing rank). Each shard holds one HDF5 group per
video with dataset ``features`` (C, L) float32 and attribute ``meta`` (the reader's meta as JSON: id, duration in
seconds, annotations, snippet_times in seconds). The cache is reused only when the stored key equals the wanted key
(encoder weights hash + fidelity + source data); otherwise it is deleted and rebuilt. Shards and the index are
written to temporary names and renamed, and the index (written last, by rank 0) marks the cache complete.

External features (``head.features``), as G-TAD and OpenTAD users have them: a directory with one ``.npy`` per video
(``ID.npy`` or ``v_ID.npy``, ID the id's lofi.filenames.video_stem) or one HDF5 file with a dataset per video, each
(T, C) time-major (or (C, T) with ``layout="CT"``); T is resampled to L by linear interpolation, as G-TAD's features
were rescaled to 100. With a ``video_info`` CSV in G-TAD's format (columns video, numFrame, seconds, featureFrame,
...), the features of a video cover only its first ``featureFrame`` of ``numFrame`` frames, i.e.
``seconds · featureFrame / numFrame`` seconds (G-TAD's ``corrected_second``): that time base goes into the meta as
``feature_duration``, which the targets and snippet times use; the annotated ``duration`` stays the video's
(evaluation and detections in seconds use it, as G-TAD's inference).
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import h5py
import numpy as np
import torch

from lofi.atomic import write_json
from lofi.filenames import video_path

from . import distributed as D

Entry = Tuple[torch.Tensor, Dict[str, Any]]  # features (C, L) float32, meta


def _meta_json(meta: Dict[str, Any]) -> str:
    clean = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in meta.items() if k != "pad"}
    return json.dumps(clean)


class FeatureCache:
    """The cache directory of one subset; ``key`` identifies what the features were computed from."""

    def __init__(self, directory: os.PathLike, key: Dict[str, Any]):
        self.dir = Path(directory)
        self.key = json.loads(json.dumps(key, sort_keys=True))

    @property
    def index_path(self) -> Path:
        return self.dir / "index.json"

    def index(self) -> Optional[Dict[str, Any]]:
        try:
            return json.loads(self.index_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def valid(self) -> bool:
        """True when a complete cache with exactly this key is on disk."""
        idx = self.index()
        return bool(idx and idx.get("complete") and idx.get("key") == self.key)

    def build(self, batches: Iterable[Tuple[torch.Tensor, List[Dict[str, Any]]]], info: D.DistInfo,
              shard_size: int = 64) -> None:
        """Writes every rank's ``(features (B, C, L), metas)`` batches (padding entries skipped) and, on rank 0,
        the index. Collective under DDP: every rank must call it."""
        if info.is_main:
            if self.dir.exists():
                shutil.rmtree(self.dir)
            self.dir.mkdir(parents=True)
        D.barrier()
        written: Dict[str, str] = {}
        pending: List[Entry] = []

        def flush():
            if not pending:
                return
            name = f"features-{info.rank}-{len(set(written.values())):06d}.h5"
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{name}.", suffix=".tmp")
            os.close(fd)
            with h5py.File(tmp, "w") as f:
                for feats, meta in pending:
                    g = f.create_group(meta["id"])
                    g.create_dataset("features", data=feats.numpy())
                    g.attrs["meta"] = _meta_json(meta)
            os.replace(tmp, self.dir / name)
            written.update({meta["id"]: name for _, meta in pending})
            pending.clear()

        for feats, metas in batches:
            for f, m in zip(feats.detach().float().cpu(), metas):
                if not m.get("pad") and m["id"] not in written:
                    pending.append((f.contiguous(), m))
            if len(pending) >= shard_size:
                flush()
        flush()
        parts = D.gather_to_main(written)
        if info.is_main:
            videos: Dict[str, str] = {}
            for part in parts:
                for vid, name in part.items():
                    videos.setdefault(vid, name)
            write_json({"key": self.key, "complete": True, "videos": videos}, self.index_path)
        D.barrier()

    def load(self) -> Dict[str, Entry]:
        """{id: (features (C, L), meta)} for every cached video."""
        idx = self.index()
        if not (idx and idx.get("complete")):
            raise FileNotFoundError(f"{self.dir}: no complete feature cache")
        out: Dict[str, Entry] = {}
        by_file: Dict[str, List[str]] = {}
        for vid, name in idx["videos"].items():
            by_file.setdefault(name, []).append(vid)
        for name, vids in sorted(by_file.items()):
            with h5py.File(self.dir / name, "r") as f:
                for vid in vids:
                    out[vid] = (torch.from_numpy(f[vid]["features"][()]), json.loads(f[vid].attrs["meta"]))
        return out


def resample(x: torch.Tensor, L: int) -> torch.Tensor:
    """(C, T) → (C, L) by linear interpolation over time (identity when T = L)."""
    if x.shape[-1] == L:
        return x
    return torch.nn.functional.interpolate(x[None], size=L, mode="linear", align_corners=False)[0]


def uniform_snippet_times(duration: float, L: int) -> List[float]:
    """Centres (seconds) of L equal snippets spanning [0, duration]."""
    return [(k + 0.5) * duration / L for k in range(L)]


def read_video_info(path: os.PathLike) -> Dict[str, float]:
    """G-TAD's ``video_info`` CSV (header with at least video, numFrame, seconds, featureFrame) → {video: seconds the
    features cover = seconds · featureFrame / numFrame}. Ids as in the file (G-TAD's carry a ``v_`` prefix)."""
    path = Path(path)
    out: Dict[str, float] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"video", "numFrame", "seconds", "featureFrame"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"head.video_info: {path} has no column(s) {sorted(missing)} (G-TAD's video_info "
                             "format: video,numFrame,seconds,fps,rfps,featureFrame)")
        for line, row in enumerate(reader, start=2):
            values = {}
            for field in ("numFrame", "seconds", "featureFrame"):
                try:
                    values[field] = float(row[field])
                except (TypeError, ValueError):
                    values[field] = math.nan
                if not values[field] > 0:
                    raise ValueError(f"head.video_info: {path} line {line}, video {row['video']!r}: {field} must be "
                                     f"a positive number, got {row[field]!r}")
            out[row["video"]] = values["seconds"] * values["featureFrame"] / values["numFrame"]
    return out


def load_external(path: os.PathLike, metas: Dict[str, Dict[str, Any]], L: int, layout: str = "TC",
                  video_info: Optional[os.PathLike] = None) -> Dict[str, Entry]:
    """External features for the videos of ``metas`` ({id: meta with duration (s) and annotations}) →
    {id: (features (C, L), meta with snippet_times)}; with ``video_info`` (``read_video_info``) the meta also gets
    ``feature_duration`` (s), the time base of the features. Videos with no feature file (or no video_info row)
    raise, naming them."""
    path = Path(path)
    covered = read_video_info(video_info) if video_info is not None else None
    if layout not in ("TC", "CT"):
        raise ValueError(f"head.feature_layout: expected 'TC' or 'CT', got {layout!r}")
    arrays: Dict[str, np.ndarray] = {}
    missing = []
    if path.is_dir():
        for vid in metas:
            for file in (video_path(path, vid, ".npy"), video_path(path, "v_" + vid, ".npy")):
                if file.is_file():
                    arrays[vid] = np.load(file)
                    break
            else:
                missing.append(vid)
    elif h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            for vid in metas:
                key = vid if vid in f else f"v_{vid}" if f"v_{vid}" in f else None
                if key is None:
                    missing.append(vid)
                else:
                    arrays[vid] = f[key][()]
    else:
        raise ValueError(f"head.features: {path} is neither a directory of .npy files nor an HDF5 file")
    if missing:
        raise KeyError(f"head.features: {path} has no features for {len(missing)} video(s): {missing[:10]}")
    if covered is not None:
        no_row = [vid for vid in metas if vid not in covered and f"v_{vid}" not in covered]
        if no_row:
            raise KeyError(f"head.video_info: {video_info} has no row for {len(no_row)} video(s): {no_row[:10]}")
    out: Dict[str, Entry] = {}
    for vid, arr in arrays.items():
        if arr.ndim != 2:
            raise ValueError(f"head.features: {vid} has shape {arr.shape}; expected 2-D ({layout})")
        x = torch.as_tensor(np.ascontiguousarray(arr), dtype=torch.float32)
        x = x.t() if layout == "TC" else x
        meta = dict(metas[vid])
        if covered is not None:
            meta["feature_duration"] = covered[vid] if vid in covered else covered[f"v_{vid}"]
        meta["snippet_times"] = uniform_snippet_times(float(meta.get("feature_duration", meta["duration"])), L)
        out[vid] = (resample(x, L).contiguous(), meta)
    return out


class FeatureLoader:
    """Batches of ``{"features": (B, C, L), "meta": [...]}`` over cached entries, split across ranks.

    Training: a permutation per epoch drawn from (seed, epoch), the same on every rank, padded by wrapping so every
    rank gets ``len(self)`` full batches; batch i of rank r is the permutation's block i·world_size + r of
    batch_size videos, so the ranks' batches (and accumulated batches) concatenate, in (batch, rank) order, to the
    batches of one process with the global batch size. Evaluation: every video once in sorted-id order;
    the last rank's shortfall is filled with duplicates marked ``meta["pad"] = True``. ``len()`` counts the whole
    epoch; iteration yields its batches from ``start`` on (a run resumed mid-epoch)."""

    def __init__(self, entries: Dict[str, Entry], batch_size: int, train: bool, rank: int = 0, world_size: int = 1,
                 seed: int = 0, epoch: int = 0, start: int = 0):
        if not entries:
            raise ValueError("FeatureLoader: no videos")
        self.ids = sorted(entries)
        self.entries, self.batch, self.train, self.rank, self.world = entries, batch_size, train, rank, world_size
        self.seed, self.epoch, self.start = seed, epoch, start

    def __len__(self) -> int:
        per_rank = -(-len(self.ids) // self.world)
        return max(1, len(self.ids) // (self.batch * self.world)) if self.train else -(-per_rank // self.batch)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        n = len(self) * self.batch * self.world
        if self.train:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(len(self.ids), generator=g).tolist()
            order = (order * (n // len(order) + 1))[:n]
            mine = [v for i in range(len(self)) for v in order[(i * self.world + self.rank) * self.batch:
                                                                (i * self.world + self.rank + 1) * self.batch]]
            pad = [False] * len(mine)
        else:
            order = list(range(len(self.ids)))
            per_rank = -(-len(order) // self.world)
            mine = order[self.rank * per_rank:(self.rank + 1) * per_rank]
            pad = [False] * len(mine)
            short = len(self) * self.batch - len(mine)
            mine, pad = mine + [order[0]] * short, pad + [True] * short
        for i in range(self.start, len(self)):
            idx, flags = mine[i * self.batch:(i + 1) * self.batch], pad[i * self.batch:(i + 1) * self.batch]
            feats = torch.stack([self.entries[self.ids[j]][0] for j in idx])
            metas = [dict(self.entries[self.ids[j]][1], pad=p) for j, p in zip(idx, flags)]
            yield {"features": feats, "meta": metas}
