"""Shards on a web or object store: a base URL (``http://``, ``https://``) or a ``pipe:COMMAND`` template.

A source names the files of a shard directory: ``BASE/NAME`` for a URL, or the command with ``{name}`` replaced by the
file name for ``pipe:`` (WebDataset's convention, e.g. ``pipe:aws s3 cp s3://bucket/anet/{name} -``); webdataset's
``gopen`` opens both (curl for URLs, a shell for pipes). ``manifest.json`` is fetched once per process and checked
(complete; every shard's keys, sample count and sha256 listed; split totals) before anything is read.

A shard is fetched whole into a node-local cache directory (``data.cache_dir``, by default one under the system's
temporary directory), its sha256 checked against the manifest, and then read like a local shard; so a dropped
connection costs a retry of the whole shard (exponential backoff), never a partial or repeated sample. The file
appears under its final name only once verified (temporary file + rename), a per-shard lock lets every process of a
node (ranks, DataLoader workers) share one download, a reused file is checked against its sha256 again, and the
least recently used shards are evicted to keep the directory under ``max_bytes``.
"""
import fcntl
import functools
import hashlib
import io
import json
import logging
import os
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from webdataset.gopen import gopen

from ..atomic import write_with
from ..hashing import sha256_file
from .shardlist import Shard, index_shard

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_SCHEMES = ("http://", "https://", "pipe:")
_BLOCK = 1 << 20


def is_remote(source: Optional[str]) -> bool:
    """True for a base URL or a ``pipe:`` template, False for a local path."""
    return isinstance(source, str) and source.startswith(_SCHEMES)


def member_url(source: str, name: str) -> str:
    """The URL (or ``pipe:`` command) that reads file ``name`` of the shard directory ``source``."""
    if source.startswith("pipe:"):
        if "{name}" not in source:
            raise ValueError(f"{source!r}: a pipe: source must contain {{name}} where the file name goes")
        return source.replace("{name}", name)
    return source.rstrip("/") + "/" + urllib.parse.quote(name)


def _download(url: str, sink) -> str:
    """Copies ``url`` into the binary file ``sink``; returns the sha256 of what was read. A transfer that ends early
    raises (curl/the pipe command exits non-zero; gopen's Pipe raises on close)."""
    digest = hashlib.sha256()
    stream = gopen(url, "rb")
    try:
        for block in iter(lambda: stream.read(_BLOCK), b""):
            digest.update(block)
            sink.write(block)
    finally:
        stream.close()
    return digest.hexdigest()


def _retrying(url: str, action, retries: int, backoff: float):
    """``action()``, run again after ``backoff · 2^attempt`` s when it fails (OSError, ValueError: a dropped
    connection, an exit status, a wrong checksum); after ``retries`` retries the error names ``url``."""
    for attempt in range(retries + 1):
        try:
            return action()
        except (OSError, ValueError) as exc:
            if attempt == retries:
                raise RuntimeError(f"cannot fetch {url} after {retries + 1} attempts: {exc}") from exc
            log.warning("fetching %s failed (%s); retry %d/%d", url, exc, attempt + 1, retries)
            time.sleep(backoff * 2 ** attempt)


def fetch(url: str, dest: Path, sha256: Optional[str] = None, retries: int = 5, backoff: float = 0.5) -> None:
    """Downloads ``url`` to ``dest`` (atomically: a temporary file renamed once complete), checking ``sha256`` when
    given; a failed attempt restarts the whole file (see :func:`_retrying`)."""

    def download(f) -> None:
        got = _download(url, f)
        if sha256 is not None and got != sha256:
            raise IOError(f"sha256 {got} != {sha256} from the manifest (incomplete or changed)")

    _retrying(url, lambda: write_with(dest, download), retries, backoff)


def fetch_bytes(url: str, retries: int = 5, backoff: float = 0.5) -> bytes:
    """The content of ``url`` (a small file such as a manifest), with :func:`fetch`'s retries."""

    def read() -> bytes:
        buffer = io.BytesIO()
        _download(url, buffer)
        return buffer.getvalue()

    return _retrying(url, read, retries, backoff)


def default_cache_dir() -> str:
    """The node-local cache when ``data.cache_dir`` is unset: one per user under the system's temporary directory."""
    return os.path.join(tempfile.gettempdir(), f"lofi-shards-{os.getuid()}")


@functools.lru_cache(maxsize=8)
def fetch_file(url: str, cache_dir: Optional[str] = None, retries: int = 5) -> str:
    """One file at ``url`` (e.g. an HDF5 file of external features; a ``pipe:`` command that writes it), fetched once
    per process into the cache directory; returns its local path. No manifest gives its checksum, so it is fetched
    again by every new process."""
    dest = Path(cache_dir or default_cache_dir()) / f"file-{hashlib.sha256(url.encode()).hexdigest()[:16]}"
    fetch(url, dest, None, retries)
    return str(dest)


@dataclass(frozen=True)
class RemoteShard:
    """Where one shard lives (``url``), its sha256, and the cache that holds its local copy (``cache_dir``, at most
    ``max_bytes`` bytes of shards)."""

    url: str
    name: str
    sha256: str
    cache_dir: str
    max_bytes: int
    retries: int = 5

    def local(self) -> str:
        """The path of a verified local copy, fetched unless the cache holds one."""
        cache = Path(self.cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        path = cache / self.name
        with open(cache / f".{self.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one download per node; the others wait for it
            if path.is_file() and sha256_file(path) == self.sha256:
                os.utime(path)  # most recently used
                return str(path)
            if path.is_file():
                log.warning("cached %s does not match its sha256; fetching it again", path)
            fetch(self.url, path, self.sha256, self.retries)
        evict(cache, self.max_bytes, keep=path)
        return str(path)


def evict(cache: Path, max_bytes: int, keep: Path) -> None:
    """Deletes the least recently used shards of ``cache`` (never ``keep``) until they total at most ``max_bytes``."""
    files = []
    for p in cache.glob("*.tar"):
        try:
            files.append((p.stat().st_mtime, p.stat().st_size, p))
        except FileNotFoundError:  # evicted by another process meanwhile
            continue
    total = sum(size for _, size, _ in files)
    for _, size, p in sorted(files):
        if total <= max_bytes:
            break
        if p != keep:
            p.unlink(missing_ok=True)
            total -= size


@functools.lru_cache(maxsize=16)
def _manifest_bytes(source: str, retries: int) -> bytes:
    return fetch_bytes(member_url(source, MANIFEST), retries)


def read_manifest(source: str, retries: int = 5) -> Dict[str, Any]:
    """The manifest of a remote shard directory, fetched once per process."""
    url = member_url(source, MANIFEST)
    try:
        return json.loads(_manifest_bytes(source, retries))
    except ValueError as exc:
        raise ValueError(f"{url}: not a JSON manifest: {exc}") from exc


def manifest_sha256(source: str, retries: int = 5) -> str:
    """The sha256 of the remote manifest (what identifies the shards, e.g. for the feature cache)."""
    return hashlib.sha256(_manifest_bytes(source, retries)).hexdigest()


def remote_shards(source: str, subset: str, manifest: Dict[str, Any]) -> List[Dict[str, Any]]:
    """``[{name, keys, sha256}]`` of ``subset`` in shard-name order; raises naming the manifest's URL when it is
    incomplete or inconsistent (a shard without keys or checksum, counts that do not add up)."""
    url = member_url(source, MANIFEST)
    if not manifest.get("complete"):
        raise ValueError(f"{url}: the manifest is not complete (packing unfinished, or parts not merged)")
    split = manifest.get("splits", {}).get(subset)
    if split is None:
        raise ValueError(f"{url}: no split {subset!r} (has {sorted(manifest.get('splits', {}))})")
    problems, out = [], []
    for name, entry in sorted(split.get("shards", {}).items()):
        keys, sha = entry.get("keys"), entry.get("sha256")
        if not isinstance(keys, list) or len(keys) != entry.get("num_samples"):
            problems.append(f"shard {name} lists {len(keys or [])} keys for {entry.get('num_samples')} samples")
        if not isinstance(sha, str) or len(sha) != 64:
            problems.append(f"shard {name} has no sha256")
        out.append({"name": name, "keys": tuple(keys or ()), "sha256": sha})
    total = sum(len(s["keys"]) for s in out)
    if split.get("num_samples") != total:
        problems.append(f"split {subset!r} holds {total} samples, the manifest says {split.get('num_samples')}")
    if problems:
        raise ValueError(f"{url} is inconsistent: " + "; ".join(problems))
    return out


def index_remote(source: str, subset: str, foreground: bool = False, cache_dir: Optional[str] = None,
                 max_bytes: int = 50 << 30, retries: int = 5) -> List[Shard]:
    """Every shard of ``subset`` under ``source``, from the manifest alone (nothing else is fetched), each with the
    :class:`RemoteShard` the reader fetches it through. ``foreground`` needs the annotation count of every sample,
    which only the shards hold: then every shard is fetched (into the cache) and indexed."""
    manifest = read_manifest(source, retries)
    cache = os.path.join(cache_dir or default_cache_dir(), hashlib.sha256(source.encode()).hexdigest()[:16])
    shards = []
    for s in remote_shards(source, subset, manifest):
        remote = RemoteShard(member_url(source, s["name"]), s["name"], s["sha256"], cache, max_bytes, retries)
        segments = None
        if foreground:
            local = index_shard(remote.local(), foreground=True)
            if local.keys != s["keys"]:
                raise ValueError(f"{remote.url}: its keys differ from the manifest's")
            segments = local.segments
        shards.append(Shard(remote.url, s["keys"], segments, remote))
    if not any(s.keys for s in shards):
        raise ValueError(f"{source}: subset {subset!r} has no samples")
    return shards
