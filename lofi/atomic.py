"""Atomic file writes: a temporary file in the target's folder, flushed and fsynced, then renamed over the target, so
a reader never sees a half-written file. A write killed mid-way leaves its temporary ``.NAME.XXXXXXXX.tmp`` behind;
:func:`remove_stale_temps` removes those."""
import json
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, List, Optional, Union

# The temporary name of a write to NAME: "." + NAME + "." + tempfile's 8 random characters + ".tmp".
TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


def write_with(path, write: Callable[[BinaryIO], None]) -> Path:
    """Calls ``write(f)`` on a temporary binary file beside ``path``, fsyncs it, renames it over ``path`` and fsyncs the
    folder (so the rename survives a crash); creates the parent folder. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # named as TEMP_RE
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


def remove_stale_temps(folder) -> List[Path]:
    """Removes the temporary files that writes into ``folder`` killed mid-way left (names matching ``TEMP_RE``; no
    other file, no subfolder); returns them. Call it only while nothing writes into ``folder``."""
    folder = Path(folder)
    stale = sorted(p for p in folder.iterdir() if TEMP_RE.match(p.name) and p.is_file()) if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
