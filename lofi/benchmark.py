"""Shared pieces of the benchmark scripts in tools/: timing, the machine's description, and docs/BENCHMARKS.md."""
import datetime
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, List, Sequence

import torch

from lofi.atomic import write_bytes

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"


def machine() -> str:
    """One line: CPU model and cores, GPU name when one is used, torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, cuda: bool = False) -> float:
    """Median wall time of ``fn()`` in seconds; with ``cuda`` the device is synchronized around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def markdown_table(header: Sequence[str], rows: List[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def record(title: str, body: str, command: str, path: Path = BENCHMARKS_MD) -> None:
    """Appends a dated section (title, machine, command, body) to docs/BENCHMARKS.md, atomically."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    section = f"\n## {title} ({stamp})\n\nMachine: {machine()}\n\nCommand: `{command}`\n\n{body}\n"
    old = path.read_text() if path.exists() else "# Benchmarks\n\nFigures appended by the scripts in `tools/`, newest last.\n"
    write_bytes(path, old + section)
