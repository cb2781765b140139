"""The shards of one subset, the samples each holds, and their agreement with manifest.json.

A shard is a tar of samples `KEY.mp4` + `KEY.json` (webdataset's grouping: the key is the file name up to its first
dot). Indexing reads only the tar headers (and, for `foreground`, the small json members), so it is cheap; the
result is cached per (path, size, mtime) in this process.
"""
import functools
import glob
import json
import os
import re
import tarfile
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import braceexpand

_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext


@dataclass(frozen=True)
class Shard:
    """One tar: its path (or URL), its sample keys in tar order, when indexed for foreground the segments per sample,
    and for a shard on a web or object store the lofi.data.remote.RemoteShard that fetches it."""

    path: str
    keys: Tuple[str, ...]
    segments: Optional[Tuple[int, ...]] = None
    remote: Optional[Any] = None

    def units(self) -> List[Tuple[int, Optional[int]]]:
        """The (sample index, segment index or None) this shard yields, in order."""
        if self.segments is None:
            return [(i, None) for i in range(len(self.keys))]
        return [(i, s) for i, n in enumerate(self.segments) for s in range(n)]


def local_path(shard: Shard) -> str:
    """A local file holding the shard: its path, or a verified copy fetched into the node's cache."""
    return shard.path if shard.remote is None else shard.remote.local()


def resolve(shards: str, subset: str) -> Tuple[List[str], Optional[str]]:
    """Shard paths (sorted) and the manifest path (or None) for a directory, or for a brace pattern of tar paths."""
    if os.path.isdir(shards):
        paths = sorted(glob.glob(os.path.join(shards, f"{subset}-*.tar")))
        manifest = os.path.join(shards, "manifest.json")
        manifest = manifest if os.path.exists(manifest) else None
        if manifest is None and glob.glob(os.path.join(shards, "manifest-p*of*.json")):
            raise ValueError(f"{shards}: packed in parts and not merged yet (tools/make_shards.py --merge {shards})")
        if not paths and manifest is None:
            raise FileNotFoundError(f"no shards {subset}-*.tar in {shards}")
        return paths, manifest
    paths = list(braceexpand.braceexpand(shards))
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"shard pattern {shards!r}: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return paths, None


@functools.lru_cache(maxsize=4096)
def _index(path: str, size: int, mtime: float, foreground: bool) -> Shard:
    keys: List[str] = []
    segments: List[int] = []
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                match = _KEY.match(member.name)
                if not match:
                    continue
                key, ext = match.group(1), match.group(2).lower()
                if not keys or keys[-1] != key:
                    keys.append(key)
                    segments.append(0)
                if foreground and ext == "json":
                    try:
                        segments[-1] = len(json.loads(tar.extractfile(member).read()).get("annotations", []))
                    except (ValueError, AttributeError):
                        segments[-1] = 0  # reported as corrupt when the sample is read
    except (tarfile.TarError, OSError) as exc:
        raise RuntimeError(f"cannot read shard {path}: {exc}") from exc
    return Shard(path, tuple(keys), tuple(segments) if foreground else None)


def index_shard(path: str, foreground: bool = False) -> Shard:
    """The keys (and for `foreground` the annotation counts) of one tar; an unreadable tar raises naming it."""
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise RuntimeError(f"cannot read shard {path}: {exc}") from exc
    return _index(path, stat.st_size, stat.st_mtime, foreground)


def check_manifest(manifest_path: str, subset: str, shards: List[Shard]) -> None:
    """Raises, before training, when manifest.json and the tars disagree (missing shard, extra shard, wrong count)."""
    with open(manifest_path) as f:
        manifest = json.load(f)
    split = manifest.get("splits", {}).get(subset)
    if split is None:
        raise ValueError(f"{manifest_path}: no split {subset!r} (has {sorted(manifest.get('splits', {}))})")
    root = os.path.dirname(manifest_path)
    listed = {os.path.basename(name): info for name, info in split.get("shards", {}).items()}
    found = {os.path.basename(s.path): len(s.keys) for s in shards}
    problems = [f"missing shard {os.path.join(root, name)}" for name in sorted(set(listed) - set(found))]
    problems += [f"shard {os.path.join(root, name)} is not in the manifest" for name in sorted(set(found) - set(listed))]
    problems += [f"shard {os.path.join(root, name)} holds {found[name]} samples, the manifest says {info['num_samples']}"
                 for name, info in sorted(listed.items()) if name in found and found[name] != info.get("num_samples")]
    total = split.get("num_samples")
    if not problems and total is not None and total != sum(found.values()):
        problems.append(f"split {subset!r} holds {sum(found.values())} samples, the manifest says {total}")
    if problems:
        raise ValueError(f"{manifest_path} does not match the shards: " + "; ".join(problems))


def index_subset(shards: str, subset: str, foreground: bool = False) -> List[Shard]:
    """Every shard of `subset`, indexed and checked against manifest.json when there is one."""
    paths, manifest = resolve(shards, subset)
    indexed = [index_shard(p, foreground) for p in paths]
    if manifest is not None:
        check_manifest(manifest, subset, indexed)
    if not any(s.keys for s in indexed):
        raise ValueError(f"{shards}: subset {subset!r} has no samples")
    return indexed
