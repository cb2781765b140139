"""Snippet features as one .npy file per video, (L, C) float32: the layout G-TAD and OpenTAD read."""
from pathlib import Path

import numpy as np

from lofi.atomic import write_with
from lofi.filenames import video_path


def export_npy(folder, entries) -> None:
    """Writes each video's features (C, L) as ``folder/STEM.npy``, (L, C) float32, STEM = lofi.filenames.video_stem of
    its id, so an id such as ``../x`` or ``/abs/x`` from a shard stays inside ``folder``. Two ids with one stem are an
    error naming both; each file is written atomically."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    owner = {}
    for vid in entries:
        path = video_path(out, vid, ".npy")
        if owner.setdefault(path, vid) != vid:
            raise ValueError(f"videos {owner[path]!r} and {vid!r} would both be written to {path}")
    for path, vid in owner.items():
        array = entries[vid][0].t().contiguous().numpy()
        write_with(path, lambda f: np.save(f, array))
