"""Detections on a raw video file, no shards needed:
``python -m lofi.infer --checkpoint work_dirs/NAME/model.pt --video path.mp4 [--out DIR] [--window S]``.

The video is sampled as in training and evaluation (ActivityNet's convention): L snippets of T frames spread over
the whole video, resized on the short side and centre-cropped to the model's full fidelity. ``--window S`` instead
slides windows of S seconds with 50% overlap (THUMOS-style long videos): every window is sampled with L snippets,
the video-level class scores come from the mean feature of all windows, and each class's detections from all
windows are merged by soft-NMS. Writes ``DIR/ID.json`` (ActivityNet result format) and ``DIR/ID_timeline.png``, ID
the video file's stem with characters other than ``[A-Za-z0-9_-]`` replaced by ``_``. Frames are decoded strictly
(lofi.data.backend_cpu): a window whose frames do not decode cleanly is skipped and named; a video with no clean
window exits with status 1 and the decoder's error.
"""
from __future__ import annotations

import argparse
import io
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import av
import numpy as np
import torch

from lofi.config import from_dict
from lofi.data.backend_cpu import load_snippets, stream_index
from lofi.data.reader import CorruptSample
from lofi.data.sampling import snippet_frame_indices, snippet_times
from lofi.data.spatial import crop_params
from lofi.engine.checkpoint import UnsafeFileError
from lofi.engine.plots import plot_timelines
from lofi.models import encoder_from_config
from lofi.models.tal import load_head
from lofi.atomic import write_json
from lofi.filenames import video_path
from lofi.ops import soft_nms
from lofi.postprocess import detect, result_json


def probe(encoded: bytes, path: str) -> Tuple[int, float, Tuple[int, int]]:
    """(number of frames, frames per second, (height, width)) of an encoded video."""
    try:
        with av.open(io.BytesIO(encoded)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            size = (stream.codec_context.height, stream.codec_context.width)
            num_frames = len(stream_index(container)[0])
    except (av.FFmpegError, IndexError) as e:
        raise ValueError(f"--video {path}: not a readable video ({e})") from None
    if num_frames < 1 or fps <= 0:
        raise ValueError(f"--video {path}: no decodable frames (frames {num_frames}, fps {fps})")
    return num_frames, fps, size


def windows(num_frames: int, fps: float, window_s: Optional[float]) -> List[Tuple[int, int]]:
    """Frame ranges [start, end): the whole video, or windows of ``window_s`` seconds with 50% overlap."""
    if not window_s:
        return [(0, num_frames)]
    size = max(1, int(round(window_s * fps)))
    if size >= num_frames:
        return [(0, num_frames)]
    starts = list(range(0, num_frames - size + 1, max(1, size // 2)))
    if starts[-1] + size < num_frames:
        starts.append(num_frames - size)
    return [(s, s + size) for s in starts]


class Detector:
    """A head-stage ``model.pt`` (encoder + localization head + video classifier) ready for raw videos."""

    def __init__(self, checkpoint: str, device: str = "cpu"):
        self.device = torch.device(device)
        self.head, bundle = load_head(Path(checkpoint), self.device)
        self.cfg = from_dict(bundle["config"])
        self.classes = bundle["classes"]
        self.encoder = encoder_from_config(self.cfg.model, name=bundle["encoder_name"])
        self.encoder.load_state_dict(bundle["encoder"])
        self.encoder.to(self.device).eval()

    @torch.no_grad()
    def features(self, encoded: bytes, num_frames: int, fps: float, size: Tuple[int, int], start: int, end: int):
        """(features (1, C, L), snippet times (L,) s) of frames [start, end)."""
        f = self.cfg.fidelity
        frames = snippet_frame_indices(num_frames, f.L, f.T, f.stride, start=start, end=end)
        crop = crop_params(size[0], size[1], f.size, f.size, train=False, rng=np.random.default_rng(0))
        clip = load_snippets(encoded, frames, crop, size)  # uint8 (L, T, 3, H, W)
        return self.encoder(clip[None].to(self.device)).float(), snippet_times(frames, fps)

    @torch.no_grad()
    def __call__(self, path: str, window_s: Optional[float] = None) -> Dict[str, object]:
        """{"id", "duration" s, "detections": [{label, score, segment [s, e] s}], "classifier"} for one video."""
        encoded = Path(path).read_bytes()
        num_frames, fps, size = probe(encoded, path)
        duration = num_frames / fps
        parts, damaged = [], {}
        for s, e in windows(num_frames, fps, window_s):
            try:
                parts.append((s, e, *self.features(encoded, num_frames, fps, size, s, e)))
            except CorruptSample as exc:  # a damaged window is skipped and named; the others still count
                damaged[f"{s / fps:.2f}-{e / fps:.2f} s"] = str(exc)
                warnings.warn(f"--video {path}: skipping the damaged window {s / fps:.2f}-{e / fps:.2f} s: {exc}")
        if not parts:
            raise ValueError(f"--video {path}: damaged, no window decodes cleanly: {damaged}")
        probs = self.head.classifier(torch.cat([p[2] for p in parts], -1)).softmax(1)
        pp = self.cfg.postprocess
        merged: Dict[str, List[Tuple[float, float, float]]] = {}
        for start, end, feats, _ in parts:
            pred = self.head.localizer(feats)
            meta = [{"id": "window", "duration": (end - start) / fps}]
            res = detect(self.head.localizer, pred, meta, pp, class_scores=probs, classes=self.classes)
            for d in res["detections"]["window"]:
                s, e = d["segment"]
                merged.setdefault(d["label"], []).append((s + start / fps, e + start / fps, d["score"]))
        detections = []
        for label, rows in merged.items():
            segs = torch.tensor([[r[0], r[1]] for r in rows], dtype=torch.float64)
            scores = torch.tensor([r[2] for r in rows], dtype=torch.float64)
            if len(parts) > 1:
                # the head's soft-NMS rule, on normalized time (BMN's threshold reads the pick's width in it)
                keep, scores = soft_nms(segs / duration, scores, sigma=pp.sigma, top_k=pp.top_k, method=pp.nms,
                                        iou_threshold=pp.nms_low, high_threshold=pp.nms_high)
                segs = segs[keep]
            detections += [{"label": label, "score": float(sc), "segment": [float(a), float(b)]}
                           for (a, b), sc in zip(segs.tolist(), scores.tolist())]
        detections.sort(key=lambda d: -d["score"])
        return {"id": Path(path).stem, "duration": duration, "detections": detections,
                "classifier": "VideoClassifier (project's linear video head)", "damaged_windows": damaged}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lofi.infer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a head-stage model.pt (work_dirs/NAME/model.pt)")
    p.add_argument("--video", required=True, help="any video file PyAV reads")
    p.add_argument("--out", default="work_dirs/infer", help="output directory (default: work_dirs/infer)")
    p.add_argument("--window", type=float, default=None, help="slide windows of this many seconds (50%% overlap)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--top", type=int, default=5, help="detections drawn in the timeline")
    args = p.parse_args(argv)
    for flag, path in (("--checkpoint", args.checkpoint), ("--video", args.video)):
        if not Path(path).is_file():
            print(f"lofi.infer: {flag}: no such file {path}", file=sys.stderr)
            return 2
    if args.window is not None and args.window <= 0:
        print(f"lofi.infer: --window must be > 0 seconds, got {args.window}", file=sys.stderr)
        return 2
    try:
        detector = Detector(args.checkpoint, args.device)
    except UnsafeFileError as e:
        print(f"lofi.infer: --checkpoint: {e}", file=sys.stderr)
        return 2
    try:
        result = detector(args.video, args.window)
    except ValueError as e:  # an unreadable or damaged video
        print(f"lofi.infer: {e}", file=sys.stderr)
        return 1
    out = Path(args.out)
    vid = result["id"]
    json_path, png_path = video_path(out, vid, ".json"), video_path(out, vid, "_timeline.png")
    write_json(result_json({vid: result["detections"]}, result["classifier"], version="LoFi inference"), json_path)
    plot_timelines([{"id": vid, "duration": result["duration"], "annotations": []}],
                   {vid: result["detections"]}, png_path, top=args.top)
    if result["damaged_windows"]:
        print(f"{vid}: skipped {len(result['damaged_windows'])} damaged window(s): {result['damaged_windows']}")
    best = result["detections"][:3]
    print(f"{vid}: {result['duration']:.1f} s, {len(result['detections'])} detections; top: "
          + "; ".join(f"{d['label']} {d['segment'][0]:.1f}-{d['segment'][1]:.1f} s ({d['score']:.3f})" for d in best))
    print(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
