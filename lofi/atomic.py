"""Atomic file writes: a temporary file in the target's folder, flushed and fsynced, then renamed over the target, so
a reader never sees a half-written file."""
import json
import os
import tempfile
from pathlib import Path
from typing import Optional, Union


def write_bytes(path, data: Union[bytes, str]) -> Path:
    """Writes ``data`` (bytes, or str as UTF-8) to ``path`` atomically; creates the parent folder. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(obj, path, indent: Optional[int] = None) -> Path:
    """Writes ``obj`` as JSON to ``path`` atomically."""
    return write_bytes(path, json.dumps(obj, indent=indent))
