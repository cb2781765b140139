"""Atomic file writes: a temporary file in the target's folder, flushed and fsynced, then renamed over the target, so
a reader never sees a half-written file."""
import json
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Union


def write_with(path, write: Callable[[BinaryIO], None]) -> Path:
    """Calls ``write(f)`` on a temporary binary file beside ``path``, fsyncs it, renames it over ``path`` and fsyncs the
    folder (so the rename survives a crash); creates the parent folder. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def write_bytes(path, data: Union[bytes, str]) -> Path:
    """Writes ``data`` (bytes, or str as UTF-8) to ``path`` atomically. Returns the path."""
    return write_with(path, lambda f: f.write(data.encode() if isinstance(data, str) else data))


def write_json(obj, path, indent: Optional[int] = None) -> Path:
    """Writes ``obj`` as JSON to ``path`` atomically."""
    return write_bytes(path, json.dumps(obj, indent=indent))
