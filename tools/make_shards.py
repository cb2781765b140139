#!/usr/bin/env python
"""Videos + annotations → WebDataset shards (a thin CLI over ``lofi.data.packing.make_shards``).

Example: ``python tools/make_shards.py VIDEOS activity_net_v1-3_gt.json shards/anet --subsets training validation``.
On N machines (e.g. a SLURM array ``--array=1-N``): ``... shards/anet --part $SLURM_ARRAY_TASK_ID --num-parts N`` on
each (into one shared directory), then ``python tools/make_shards.py --merge shards/anet`` once all have finished.
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
from lofi.data.parts import merge_parts, part_manifest_name  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video_dir", nargs="?",
                   help="directory of videos (any container/codec PyAV reads), named ID.ext or v_ID.ext")
    p.add_argument("annotations", nargs="?", help="annotation file (see --format)")
    p.add_argument("out_dir", nargs="?", help="output directory, e.g. shards/NAME")
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
    p.add_argument("--part", type=int, default=None,
                   help="pack only part I (1..N) of the videos, balanced by duration (needs --num-parts)")
    p.add_argument("--num-parts", type=int, default=None, help="N, the number of parts (machines)")
    p.add_argument("--merge", metavar="OUT_DIR", default=None,
                   help="check that all parts in OUT_DIR are complete and write its manifest.json (no packing)")
    args = p.parse_args(argv)
    if args.merge is None and None in (args.video_dir, args.annotations, args.out_dir):
        p.error("video_dir, annotations and out_dir are required (unless --merge OUT_DIR)")
    if args.merge is not None and args.video_dir is not None:
        p.error("--merge OUT_DIR takes no other arguments")
    if (args.part is None) != (args.num_parts is None):
        p.error("--part and --num-parts go together")
    return args


def read_classes(path) -> list:
    text = pathlib.Path(path).read_text()
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [line.strip() for line in text.splitlines() if line.strip()]


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.merge is not None:
        try:
            manifest = merge_parts(args.merge)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"merged {manifest['num_parts']} part(s) -> {pathlib.Path(args.merge) / 'manifest.json'}")
        print_summary(manifest)
        return 0
    try:
        classes = read_classes(args.classes) if args.classes else None
        manifest = make_shards(args.video_dir, args.annotations, args.out_dir, fmt=args.format, subsets=args.subsets,
                               fps=args.fps, short_side=args.short_side, codec=args.codec, shard_size=args.shard_size,
                               workers=args.workers, strict=args.strict, gop_seconds=args.gop_seconds,
                               quality=args.quality, classes=classes, progress=not args.quiet,
                               part=None if args.part is None else (args.part, args.num_parts))
    except PackingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (AnnotationError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_summary(manifest)
    print(f"-> {pathlib.Path(args.out_dir) / part_manifest_name(manifest['settings'].get('part'))}")
    return 0


def print_summary(manifest: dict) -> None:
    for subset, split in manifest["splits"].items():
        print(f"{subset}: {split['num_samples']} videos in {len(split['shards'])} shard(s)")
    print(f"{len(manifest['classes'])} classes, {len(manifest['skipped'])} skipped, "
          f"{len(manifest['warnings'])} segment warnings")


if __name__ == "__main__":
    sys.exit(main())
