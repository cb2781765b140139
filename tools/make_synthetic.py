#!/usr/bin/env python
"""Generate the synthetic motion TAL benchmark (a thin CLI over ``lofi.data.synthetic``), optionally packing it.

Example (the demo's data): ``python tools/make_synthetic.py --preset demo --out work_dirs/synthetic-demo
--shards shards/synthetic-demo`` writes the videos + annotations.json + clips/ + clips.csv under --out and, with
--shards, the TAL shards in ``shards/synthetic-demo`` and the classification clip shards in
``shards/synthetic-demo-clips``. Presets: demo (small, CPU minutes) and bench (the reproduction study).
"""
import argparse
import dataclasses
import logging
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from lofi.data.packing import make_shards  # noqa: E402
from lofi.data.synthetic import SYNTHETIC_PRESETS, make_synthetic  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="demo", choices=sorted(SYNTHETIC_PRESETS))
    p.add_argument("--out", required=True, help="output folder for the videos, annotations and clips")
    p.add_argument("--shards", default=None, help="also pack: TAL shards here, clip shards in SHARDS-clips")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num-videos", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--num-clips", type=int, default=None)
    p.add_argument("--size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), default=None)
    p.add_argument("--length", type=float, nargs=2, metavar=("MIN_S", "MAX_S"), default=None)
    p.add_argument("--fps", type=float, default=None)
    p.add_argument("--codec", default="h264", help="codec of the packed shards (default h264)")
    p.add_argument("--shard-size", type=int, default=8, help="videos per TAL shard (clip shards: 8x)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    overrides = {k: v for k, v in {"seed": args.seed, "num_videos": args.num_videos, "num_classes": args.num_classes,
                                   "num_clips": args.num_clips, "fps": args.fps,
                                   "size": tuple(args.size) if args.size else None,
                                   "length": tuple(args.length) if args.length else None}.items() if v is not None}
    cfg = dataclasses.replace(SYNTHETIC_PRESETS[args.preset], **overrides)
    start = time.perf_counter()
    paths = make_synthetic(args.out, cfg, workers=args.workers, progress=not args.quiet)
    print(f"generated {cfg.num_videos} videos + {cfg.num_clips} clips in {time.perf_counter() - start:.1f} s: "
          + ", ".join(f"{k}={v}" for k, v in paths.items()))
    if args.shards:
        common = dict(fps=cfg.fps, short_side=min(cfg.size), codec=args.codec, workers=args.workers,
                      progress=not args.quiet, strict=True, classes=cfg.classes)
        make_shards(paths["videos"], paths["annotations"], args.shards, shard_size=args.shard_size, **common)
        make_shards(paths["clips"], paths["clip_list"], args.shards.rstrip("/") + "-clips", fmt="clips",
                    shard_size=8 * args.shard_size, **common)
        print(f"packed in {time.perf_counter() - start:.1f} s total: {args.shards}, {args.shards.rstrip('/')}-clips")
    return 0


if __name__ == "__main__":
    sys.exit(main())
