"""Video ids as file names. Ids come from annotation files and shards, so they are untrusted: ``../x``, an absolute
path or a name with a slash must never address a file outside the folder meant to hold it. Every id that becomes a
file name (WebDataset sample keys, exported ``.npy`` features, inference outputs, external feature files) goes through
:func:`video_stem`; every such path is built by :func:`video_path`, which also checks that it lies inside its folder.
"""
import re
from pathlib import Path


def video_stem(video_id: str) -> str:
    """File stem (and WebDataset key) of a video id: characters other than ``[A-Za-z0-9_-]`` become ``_``, so the stem
    holds no dot, slash or separator. ActivityNet and THUMOS ids are unchanged. An empty or non-string id is an
    error."""
    if not isinstance(video_id, str) or not video_id:
        raise ValueError(f"video id {video_id!r} cannot name a file (expected a non-empty string)")
    return re.sub(r"[^A-Za-z0-9_-]", "_", video_id)


def video_path(folder, video_id: str, suffix: str) -> Path:
    """``folder / (video_stem(video_id) + suffix)``, checked (links resolved) to lie inside ``folder``: a ValueError
    names the video otherwise (e.g. a link planted in the folder that points elsewhere)."""
    folder = Path(folder)
    path = folder / (video_stem(video_id) + suffix)
    if path.resolve().parent != folder.resolve():
        raise ValueError(f"video {video_id!r}: its file {path} resolves to {path.resolve()}, outside {folder}")
    return path
