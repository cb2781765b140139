"""Run outputs under ``work_dirs/NAME/``: rank-0 tqdm bars, TensorBoard scalars, ``log.jsonl`` and ``metrics.json``.

Only rank 0 writes; the other ranks get a logger whose methods do nothing, so callers never branch on the rank.
Each ``log.jsonl`` line is one JSON object with ``time`` (Unix seconds), ``stage`` and ``kind`` (``step``, ``epoch``,
``eval``, ``event``) plus its fields; ``metrics.json`` maps a stage name to its latest summary.
"""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import torch

from lofi.atomic import write_json


def memory_mib(device: torch.device) -> float:
    """Peak CUDA memory allocated on ``device`` (MiB), or this process's peak resident memory on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class _NullBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, *a, **k) -> None: ...
    def close(self) -> None: ...


class RunLogger:
    """Rank-0 sink for scalars and summaries of one run directory (``enabled=False`` on the other ranks)."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True, progress: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.progress_enabled = progress and enabled
        self._tb = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self.run_dir / "log.jsonl", "a", buffering=1)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def bar(self, total: int, desc: str, initial: int = 0):
        """A tqdm bar on rank 0 (stderr), a no-op elsewhere."""
        if not self.progress_enabled:
            return _NullBar()
        from tqdm import tqdm
        return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False, file=sys.stderr)

    def write(self, stage: str, kind: str, step: Optional[int] = None, **fields: Any) -> None:
        """One log.jsonl line; numeric fields also go to TensorBoard as ``stage/kind/name`` at ``step``."""
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), "stage": stage, "kind": kind, **({"step": step} if step is not None else {}),
                  **fields}
        self._jsonl.write(json.dumps(record, default=str) + "\n")
        if self._tb is not None and step is not None:
            for key, value in fields.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{stage}/{kind}/{key}", value, step)

    def info(self, message: str) -> None:
        """A line for the user on rank 0 (stdout), also kept in log.jsonl."""
        if not self.enabled:
            return
        print(message, flush=True)
        self.write("-", "event", message=message)

    def metrics(self, key: str, value: Dict[str, Any]) -> None:
        """Sets ``metrics.json[key] = value`` (atomic rewrite)."""
        if not self.enabled:
            return
        path = self.run_dir / "metrics.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data[key] = value
        write_json(data, path)

    def close(self) -> None:
        if self.enabled:
            if self._tb is not None:
                self._tb.close()
            self._jsonl.close()
            self.enabled = False


def read_log(path: Path) -> Iterable[Dict[str, Any]]:
    """The records of a log.jsonl file, skipping a torn last line."""
    with open(path) as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
