#!/usr/bin/env python
"""Packing throughput of ``lofi.data.packing.make_shards``: seconds of video per CPU-second, per codec, and what it
means for a dataset of --hours hours (ActivityNet: about 650) on one --cores-core machine and on N such machines.

Every video of --videos is packed (transcoded, never copied) into a temporary directory with one worker process,
the encoder free to use its threads; CPU time is that of this process and its children (user + system), so the
figure is per core and holds on a shared machine. Parts (``--part I --num-parts N``) are independent processes, so
N machines take 1/N of one machine's time (plus the merge, which only hashes the shards).

    PYTHONPATH=. python tools/bench_packing.py --videos DIR [--codecs h264,vp9,mjpeg] [--short-side 256]
        [--hours 650] [--cores 16] [--no-record]
"""
import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lofi import benchmark  # noqa: E402
from lofi.atomic import write_json  # noqa: E402
from lofi.data.packing import CODECS, VIDEO_SUFFIXES, make_shards  # noqa: E402


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its waited-for children so far."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def annotations_for(videos: Path, out: Path) -> float:
    """An ActivityNet-format file listing every video of ``videos`` (no segments); returns their total seconds."""
    database = {}
    for path in sorted(p for p in videos.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES):
        with av.open(str(path)) as c:
            database[path.stem] = {"subset": "training", "duration": c.duration / 1e6, "annotations": []}
    if not database:
        raise SystemExit(f"no videos in {videos}")
    write_json({"database": database}, out)
    return sum(v["duration"] for v in database.values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", required=True, help="a directory of videos to pack (all of them)")
    p.add_argument("--codecs", default="h264,vp9,mjpeg")
    p.add_argument("--short-side", type=int, default=256)
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--hours", type=float, default=650.0, help="dataset size to extrapolate to (ActivityNet: ~650)")
    p.add_argument("--cores", type=int, default=16, help="cores per packing machine for the extrapolation")
    p.add_argument("--no-record", action="store_true", help="do not append to docs/BENCHMARKS.md")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="lofi-bench-packing-") as tmp:
        seconds = annotations_for(Path(args.videos), Path(tmp) / "ann.json")
        for codec in args.codecs.split(","):
            if codec not in CODECS:
                raise SystemExit(f"--codecs: {codec!r} is not one of {sorted(CODECS)}")
            cpu, wall = cpu_seconds(), time.perf_counter()
            manifest = make_shards(args.videos, Path(tmp) / "ann.json", Path(tmp) / codec, codec=codec, fps=args.fps,
                                   short_side=args.short_side, workers=1, copy=False, progress=False)
            cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
            if manifest["skipped"]:
                raise SystemExit(f"skipped videos: {json.dumps(manifest['skipped'])}")
            rate = seconds / cpu
            core_hours = args.hours * 3600 / rate / 3600
            rows.append([codec, f"{seconds:.1f}", f"{cpu:.2f}", f"{wall:.2f}", f"{rate:.1f}", f"{core_hours:,.0f}",
                         f"{core_hours / args.cores:,.1f}", f"{core_hours / args.cores / 8:,.1f}"])
    table = benchmark.markdown_table(
        ["codec", "video (s)", "CPU (s)", "wall (s)", "video s per CPU-s", f"{args.hours:g} h: core-hours",
         f"1 × {args.cores} cores (h)", f"8 × {args.cores} cores (h)"], rows)
    notes = (f"Videos: {args.videos} (transcoded to {args.fps:g} fps, short side {args.short_side}, keyframe every "
             "1 s; one worker, the encoder's own threads counted in CPU time). The extrapolation assumes a dataset "
             f"of {args.hours:g} h with the same mix of source resolutions, and that throughput scales with cores "
             f"(one worker per core) and machines (--part I --num-parts N): N machines take 1/N of the '1 × "
             f"{args.cores} cores' time.")
    print(table + "\n\n" + notes)
    if not args.no_record:
        benchmark.record("Packing throughput: seconds of video per CPU-second (tools/bench_packing.py)",
                         table + "\n\n" + notes, "python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
