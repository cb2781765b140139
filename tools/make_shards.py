#!/usr/bin/env python
"""Videos + annotations → WebDataset shards (a thin CLI over ``lofi.data.packing.make_shards``).

Example: ``python tools/make_shards.py VIDEOS activity_net_v1-3_gt.json shards/anet --subsets training validation``.
Exit status 1 when ``--strict`` and a video was skipped (the shards and manifest are still written).
"""
import argparse
import json
import logging
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from lofi.data.annotations import AnnotationError, FORMATS  # noqa: E402
from lofi.data.packing import CODECS, PackingError, make_shards  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video_dir", help="directory of videos (any container/codec PyAV reads), named ID.ext or v_ID.ext")
    p.add_argument("annotations", help="annotation file (see --format)")
    p.add_argument("out_dir", help="output directory, e.g. shards/NAME")
    p.add_argument("--format", default="activitynet", choices=FORMATS,
                   help="activitynet (also HACS), thumos (THUMOS14-style JSON) or clips (Kinetics-style CSV/JSON)")
    p.add_argument("--subsets", nargs="+", default=None, help="subsets to pack (default: all in the file)")
    p.add_argument("--fps", type=float, default=15.0, help="output frame rate (default 15)")
    p.add_argument("--short-side", type=int, default=256,
                   help="output short side in px, even; 0 keeps it (default 256)")
    p.add_argument("--codec", default="h264", choices=sorted(CODECS), help="output codec (default h264)")
    p.add_argument("--gop-seconds", type=float, default=1.0, help="keyframe interval in seconds (default 1)")
    p.add_argument("--quality", type=int, default=None, help="crf (h264/vp9) or JPEG qscale (mjpeg)")
    p.add_argument("--shard-size", type=int, default=32, help="videos per shard (default 32)")
    p.add_argument("--workers", type=int, default=None, help="transcoding processes (default: all CPUs)")
    p.add_argument("--classes", default=None,
                   help="file fixing the class index: a JSON list of names or one name per line")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any video was skipped")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def read_classes(path) -> list:
    text = pathlib.Path(path).read_text()
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [line.strip() for line in text.splitlines() if line.strip()]


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        classes = read_classes(args.classes) if args.classes else None
        manifest = make_shards(args.video_dir, args.annotations, args.out_dir, fmt=args.format, subsets=args.subsets,
                               fps=args.fps, short_side=args.short_side, codec=args.codec, shard_size=args.shard_size,
                               workers=args.workers, strict=args.strict, gop_seconds=args.gop_seconds,
                               quality=args.quality, classes=classes, progress=not args.quiet)
    except PackingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (AnnotationError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for subset, split in manifest["splits"].items():
        print(f"{subset}: {split['num_samples']} videos in {len(split['shards'])} shard(s)")
    print(f"{len(manifest['classes'])} classes, {len(manifest['skipped'])} skipped, "
          f"{len(manifest['warnings'])} segment warnings -> {pathlib.Path(args.out_dir) / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
