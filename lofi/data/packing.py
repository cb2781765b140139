"""Videos + annotations → WebDataset shards.

Layout: ``OUT/{subset}-{NNNNNN}.tar``, one sample per video: ``KEY.mp4`` (the transcoded stream, no audio) and
``KEY.json`` ``{id, subset, duration, fps, num_frames, width, height, orig_fps, orig_duration, annotations: [{segment,
label, label_id}], source, sha256: {mp4}}``; clip-list samples also carry ``label``, ``label_id`` and ``clip``
(source times). ``sha256.mp4`` is the hex SHA-256 of the mp4 member; the reader verifies it before decoding.
``duration`` = ``num_frames / fps`` of the transcoded stream (seconds); annotation times stay in seconds.
``OUT/manifest.json`` lists the classes, per-split and per-shard sample counts, sha256 checksums and keys, the
encoding settings and every skipped video with its reason (see :func:`make_shards`).

Transcoding (PyAV): constant ``fps`` (output frame ``k`` shows the latest source frame at or before ``(k + 0.5) / fps``
seconds after the first frame; ``num_frames = round(orig_duration * fps)``), short side ``short_side`` with the aspect
ratio kept and both sides even (area interpolation), codec ``h264`` (libx264, no B-frames), ``vp9`` (libvpx-vp9) or
``mjpeg``, and a keyframe every ``gop_seconds`` for fast seeking. Source pixels are assumed square; rotation metadata
is ignored. A source that already has exactly this format (e.g. the synthetic benchmark's videos) is verified by
decoding it and stored unchanged (``copy=True``).

Shards are assigned deterministically: records of a subset sorted by id, ``shard_size`` per shard. Writes go to a
temporary name and are renamed; the manifest is rewritten after every shard, so a killed run resumes: shards whose
keys and sha256 match the manifest (written with the same settings) are kept, temporary leftovers are deleted and
everything else is rebuilt. One run at a time per output directory, or per part when it is packed in parts on
several machines (:mod:`lofi.data.parts`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import multiprocessing
import os
import pathlib
import re
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction

from ..atomic import TEMP_RE, write_json
from ..filenames import video_stem as sample_key
from ..hashing import sha256_file  # WebDataset keys hold no dots: a video's file stem
from .annotations import Annotations, VideoRecord, clip_segments, load_annotations

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
VERSION = 2  # 2: each sample's json holds the sha256 of its mp4
# name: (PyAV encoder, pixel format, encoder options)
CODECS = {
    "h264": ("libx264", "yuv420p", {"preset": "veryfast", "crf": "{crf}", "bf": "0"}),
    "vp9": ("libvpx-vp9", "yuv420p",
            {"deadline": "realtime", "cpu-used": "8", "crf": "{crf}", "b": "0", "row-mt": "1"}),
    "mjpeg": ("mjpeg", "yuvj420p", {"qmin": "{crf}", "qmax": "{crf}"}),
}
DECODERS = {"h264": "h264", "vp9": "vp9", "mjpeg": "mjpeg"}  # decoder that reads each codec's stream
DEFAULT_QUALITY = {"h264": 23, "vp9": 32, "mjpeg": 3}  # crf for h264/vp9, JPEG qscale for mjpeg
VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts"}
_TMP = ".tmp-"
_SUBSET_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_SHARD_RE = re.compile(r"^(?P<subset>[A-Za-z0-9_.-]+?)(?P<part>-p\d+of\d+)?-(?P<index>\d{6})\.tar$")


class VideoError(RuntimeError):
    """A source video that cannot be decoded (corrupt, truncated, no video stream)."""


class PackingError(RuntimeError):
    """Raised at the end of a ``strict`` run that skipped videos (the shards and manifest are written)."""


@dataclasses.dataclass(frozen=True)
class Encoding:
    """Output stream settings: ``fps``, ``short_side`` (px, even; 0 keeps the size), ``codec``, keyframe interval
    ``gop_seconds``, ``quality`` (crf, or JPEG qscale for mjpeg) and encoder ``threads`` (0: automatic). With
    ``copy``, a source that already conforms (see :func:`transcode`) is stored unchanged instead of re-encoded."""
    fps: float = 15.0
    short_side: int = 256
    codec: str = "h264"
    gop_seconds: float = 1.0
    quality: int | None = None
    threads: int = 0
    copy: bool = True

    def __post_init__(self):
        if self.codec not in CODECS:
            raise ValueError(f"codec={self.codec!r}: expected one of {sorted(CODECS)}")
        if not self.fps > 0:
            raise ValueError(f"fps={self.fps!r} must be positive")
        if self.short_side < 0 or self.short_side % 2:
            raise ValueError(f"short_side={self.short_side!r} must be a non-negative even number of pixels")
        if not self.gop_seconds > 0:
            raise ValueError(f"gop_seconds={self.gop_seconds!r} must be positive")
        if self.quality is None:
            object.__setattr__(self, "quality", DEFAULT_QUALITY[self.codec])

    def size(self, width: int, height: int) -> tuple[int, int]:
        """Output ``(width, height)``: short side ``short_side`` (or the source's), aspect kept, both even."""
        if self.short_side:
            scale = self.short_side / min(width, height)
            width, height = width * scale, height * scale
        return max(2, 2 * round(width / 2)), max(2, 2 * round(height / 2))


def transcode(src, enc: Encoding, clip: tuple[float, float] | None = None) -> tuple[bytes, dict]:
    """Transcode ``src`` (or its ``clip`` = (start, end) seconds) to an mp4 with ``enc``'s settings.

    Returns ``(mp4 bytes, meta)`` with meta ``{fps, num_frames, duration, width, height, orig_fps, orig_duration}``
    (seconds). Raises :class:`VideoError` when the video cannot be decoded. With ``enc.copy``, a whole-file source that
    already conforms (an mp4 with only a video stream of ``enc.codec`` at ``fps`` and the output size, no B-frames,
    every frame at ``k / fps``, keyframes at least every ``gop_seconds``) is decoded once to verify it and returned
    unchanged.
    """
    if enc.copy and clip is None:
        with _open(src, enc) as inp:
            copied = _copy_conforming(src, inp, inp.streams.video[0], enc)
        if copied is not None:
            return copied
    with _open(src, enc) as inp:
        return _transcode_stream(inp, inp.streams.video[0], enc, clip)


def _open(src, enc: Encoding):
    import av

    try:
        inp = av.open(str(src))
    except (av.FFmpegError, OSError) as e:
        raise VideoError(f"unreadable: {type(e).__name__}: {e}") from None
    if not inp.streams.video:
        inp.close()
        raise VideoError("no video stream")
    ist = inp.streams.video[0]
    ist.thread_type = "AUTO"
    ist.codec_context.thread_count = enc.threads
    return inp


def _copy_conforming(src, inp, ist, enc: Encoding) -> tuple[bytes, dict] | None:
    """``(file bytes, meta)`` if ``src`` already has ``enc``'s format (see :func:`transcode`), else ``None``."""
    ctx, rate = ist.codec_context, Fraction(enc.fps).limit_denominator(1001)
    if not ("mp4" in inp.format.name and len(inp.streams) == 1 and ctx.name == DECODERS[enc.codec]
            and ist.average_rate == rate and (ctx.width, ctx.height) == enc.size(ctx.width, ctx.height)
            and not ctx.has_b_frames):
        return None
    gop, since_key, num_frames = max(1, round(enc.gop_seconds * enc.fps)), 0, 0
    for frame in _decoded(inp, ist):
        since_key = 0 if frame.key_frame else since_key + 1
        if since_key >= gop or frame.time is None or abs(frame.time - num_frames / enc.fps) > 0.25 / enc.fps:
            return None
        num_frames += 1
    if not num_frames:
        raise VideoError("no decodable frames")
    _check_length(inp, ist, num_frames / enc.fps, None)
    meta = {"fps": float(enc.fps), "num_frames": num_frames, "duration": num_frames / enc.fps, "width": ctx.width,
            "height": ctx.height, "orig_fps": float(rate), "orig_duration": num_frames / enc.fps}
    return pathlib.Path(src).read_bytes(), meta


def _decoded(inp, ist):
    """``inp.decode(ist)`` with demuxing/decoding errors raised as :class:`VideoError` (encoder errors are bugs)."""
    import av

    frames = inp.decode(ist)
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except (av.FFmpegError, EOFError, OSError) as e:
            raise VideoError(f"corrupt: {type(e).__name__}: {e}") from None
        yield frame


class VideoWriter:
    """An mp4 stream in memory with :class:`Encoding`'s settings; frame ``k`` written is shown at ``k / fps`` s.

    ``write(frame)`` takes an ``av.VideoFrame`` (rescaled to ``size``) or an RGB uint8 array (H, W, 3) of that size;
    ``close()`` flushes and returns the mp4 bytes.
    """

    def __init__(self, enc: Encoding, size: tuple[int, int]):
        import av

        encoder, self.pix_fmt, options = CODECS[enc.codec]
        rate = Fraction(enc.fps).limit_denominator(1001)
        self.size, self.count, self._buf = size, 0, io.BytesIO()
        self._out = av.open(self._buf, "w", format="mp4")
        self._stream = self._out.add_stream(encoder, rate=rate)
        self._stream.time_base = self._time_base = 1 / rate
        self._stream.width, self._stream.height = size
        self._stream.pix_fmt = self.pix_fmt
        self._stream.options = {k: v.format(crf=enc.quality) for k, v in options.items()}
        self._stream.codec_context.gop_size = max(1, round(enc.gop_seconds * enc.fps))
        self._stream.codec_context.thread_count = enc.threads

    def write(self, frame) -> None:
        import av

        if not isinstance(frame, av.VideoFrame):
            frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
        frame = frame.reformat(width=self.size[0], height=self.size[1], format=self.pix_fmt, interpolation="AREA")
        frame.pts, frame.time_base = self.count, self._time_base
        self._out.mux(self._stream.encode(frame))
        self.count += 1

    def close(self) -> bytes:
        self._out.mux(self._stream.encode())
        self._out.close()
        return self._buf.getvalue()

    def abort(self) -> None:
        try:
            self._out.close()
        except Exception:  # an unopened encoder/muxer; the caller reports the original error
            pass


def _transcode_stream(inp, ist, enc: Encoding, clip) -> tuple[bytes, dict]:
    rate = ist.average_rate or ist.guessed_rate or ist.base_rate
    orig_fps = float(rate) if rate else None
    start_time = float(ist.start_time * ist.time_base) if ist.start_time is not None else 0.0
    t_begin = start_time + (clip[0] if clip else 0.0)
    t_end = start_time + clip[1] if clip else float("inf")
    if clip and clip[0] > 0:
        inp.seek(int(t_begin / ist.time_base), stream=ist, backward=True, any_frame=False)
    writer, n_in, prev, t_first, last_time, step = None, 0, None, None, None, None

    def emit(frame, n_upto):
        while writer.count < n_upto:
            writer.write(frame)

    try:
        for frame in _decoded(inp, ist):
            t = frame.time if frame.time is not None else (n_in / orig_fps if orig_fps else None)
            n_in += 1
            if t is None:
                raise VideoError("frames carry no timestamps and the stream has no frame rate")
            if t >= t_end:
                break
            if last_time is not None and t > last_time:
                step = t - last_time if step is None else min(step, t - last_time)
            last_time = t
            if t < t_begin:  # before the clip: remember it, it is on screen at the clip's start
                prev = frame
                continue
            if writer is None:
                writer = VideoWriter(enc, enc.size(frame.width, frame.height))
                t_first = t_begin if clip else t
                prev = frame if prev is None else prev
            # output frame j shows the latest source frame at or before (j + 0.5) / fps after t_first
            emit(prev, int((t - t_first) * enc.fps + 0.5 - 1e-9))
            prev = frame
        if writer is None:
            raise VideoError("no decodable frames" + (f" in clip [{clip[0]:g}, {clip[1]:g}] s" if clip else ""))
        frame_dur = 1.0 / orig_fps if orig_fps else (step or 1.0 / enc.fps)
        orig_duration = min(last_time + frame_dur, t_end) - t_first
        num_frames = max(1, round(orig_duration * enc.fps))
        emit(prev, num_frames)
        data = writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    _check_length(inp, ist, orig_duration, clip)
    meta = {"fps": float(enc.fps), "num_frames": num_frames, "duration": num_frames / enc.fps,
            "width": writer.size[0], "height": writer.size[1], "orig_fps": orig_fps, "orig_duration": orig_duration}
    return data, meta


def _check_length(inp, ist, decoded: float, clip) -> None:
    """Raise :class:`VideoError` if less than 90% (minus 0.5 s) of the declared duration or clip was decodable."""
    if clip:
        if decoded < 0.9 * (clip[1] - clip[0]) - 0.5:
            raise VideoError(f"clip [{clip[0]:g}, {clip[1]:g}] s: only {decoded:.2f} s decodable")
        return
    declared = float(ist.duration * ist.time_base) if ist.duration else (inp.duration / 1e6 if inp.duration else None)
    if declared and decoded < 0.9 * declared - 0.5:
        raise VideoError(f"truncated: decoded {decoded:.2f} s of the declared {declared:.2f} s")


@contextlib.contextmanager
def ordered_map(fn, tasks: list, workers: int, chunksize: int = 1):
    """``map(fn, tasks)`` in ``min(workers, len(tasks))`` spawned processes (in this one if 1), results in task
    order. A worker that dies (e.g. a decoder crash) raises ``BrokenProcessPool`` instead of hanging the run."""
    workers = min(workers, len(tasks))
    if workers <= 1:
        yield map(fn, tasks)
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool.map(fn, tasks, chunksize=chunksize)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _transcode_task(task):
    """Pool worker: ``(position, path, clip, encoding) -> (position, mp4 bytes | None, meta | error message)``."""
    position, path, clip, enc = task
    try:
        data, meta = transcode(path, enc, clip)
        return position, data, meta
    except VideoError as e:
        return position, None, str(e)


def _index_videos(video_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    """Stem → path for the video files in ``video_dir`` (a ``v_`` prefix is also indexed without it)."""
    if not video_dir.is_dir():
        raise FileNotFoundError(f"video directory {video_dir} does not exist")
    exact = {}
    for path in sorted(video_dir.iterdir()):
        if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file():
            if path.stem in exact:
                log.warning("%s: both %s and %s; using the first", video_dir, exact[path.stem].name, path.name)
            exact.setdefault(path.stem, path)
    stripped = {stem[2:]: path for stem, path in exact.items() if stem.startswith("v_")}
    return {**stripped, **exact}  # an exact name wins over a v_-stripped one


def _source(record: VideoRecord, index: dict) -> tuple[pathlib.Path | None, tuple | None]:
    """The file to read for ``record`` and the clip to cut from it; an already trimmed Kinetics-style file
    ``VIDEO_SSSSSS_EEEEEE`` is used whole."""
    if record.clip is not None and record.id in index:
        return index[record.id], None
    return index.get(record.video), record.clip


def member_checksums(members: dict) -> dict:
    """{member name: hex SHA-256 of its bytes}: what a sample's json records and the reader verifies."""
    return {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}


def sample_json(record: VideoRecord, meta: dict, ann: Annotations, source: str) -> tuple[dict, list[str]]:
    """The sample's json (see the module docstring) and the segment clipping/dropping messages."""
    info = {"id": record.id, "subset": record.subset, **{k: meta[k] for k in (
        "duration", "fps", "num_frames", "width", "height", "orig_fps", "orig_duration")}, "source": source}
    if record.label is not None:
        lid = ann.label_ids[record.label]
        info.update(label=record.label, label_id=lid, clip=list(record.clip) if record.clip else None)
        info["annotations"] = [{"segment": [0.0, meta["duration"]], "label": record.label, "label_id": lid}]
        return info, []
    kept, messages = clip_segments(record.annotations, meta["duration"], record.id)
    info["annotations"] = [{"segment": [s.start, s.end], "label": s.label, "label_id": ann.label_ids[s.label]}
                           for s in kept]
    return info, messages


def make_shards(video_dir, annotation_file, out_dir, *, fmt: str = "activitynet", subsets=None, fps: float = 15,
                short_side: int = 256, codec: str = "h264", shard_size: int = 32, workers: int | None = None,
                strict: bool = False, gop_seconds: float = 1.0, quality: int | None = None, copy: bool = True,
                classes=None, progress: bool = True, part: tuple[int, int] | None = None) -> dict:
    """Transcode the annotated videos of ``video_dir`` and pack them into WebDataset shards in ``out_dir``.

    ``fmt``: annotation format (``lofi.data.annotations.FORMATS``); ``subsets``: the subsets to pack (default all);
    ``fps``, ``short_side`` (px), ``codec``, ``gop_seconds``, ``quality``, ``copy``: see :class:`Encoding`;
    ``shard_size``: samples per shard; ``workers``: transcoding processes (default: all CPUs); ``classes``: a fixed
    class list (label_id order, see :func:`lofi.data.annotations.load_annotations`). Corrupt videos and videos
    missing from ``video_dir`` are skipped and listed in the manifest; with ``strict`` a :class:`PackingError` is
    raised at the end if any were. ``part=(I, N)``: pack only part I of N (see :mod:`lofi.data.parts`; the manifest
    is then ``manifest-pIIofNN.json`` until :func:`lofi.data.parts.merge_parts`). Returns the manifest: ``{classes, splits: {subset: {num_samples, shards: {file:
    {num_samples, sha256, keys, planned, skipped, warnings}}}}, codec, fps, short_side, gop_seconds, quality, skipped:
    [{video, subset, reason}], warnings: [{video, message}], empty_shards (shards whose every video was skipped: no
    file), settings, complete}``.
    """
    video_dir, out_dir = pathlib.Path(video_dir), pathlib.Path(out_dir)
    if shard_size < 1:
        raise ValueError(f"shard_size={shard_size!r} must be at least 1")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers={workers!r} must be at least 1")
    enc = Encoding(fps=float(fps), short_side=int(short_side), codec=codec, gop_seconds=float(gop_seconds),
                   quality=quality, threads=1 if workers > 1 else 0, copy=copy)
    ann = load_annotations(annotation_file, fmt, classes)
    records = ann.records
    if subsets is not None:
        subsets = [subsets] if isinstance(subsets, str) else list(subsets)
        absent = sorted(set(subsets) - {r.subset for r in records})
        if absent:
            raise ValueError(f"subsets {absent} do not occur in {annotation_file} "
                             f"(it has {sorted({r.subset for r in records})})")
        records = [r for r in records if r.subset in subsets]
    if not records:
        raise ValueError(f"{annotation_file} holds no videos to pack")
    bad = sorted({r.subset for r in records if not _SUBSET_RE.match(r.subset)})
    if bad:
        raise ValueError(f"{annotation_file}: subset names {bad} cannot name shard files (use [A-Za-z0-9_.-])")
    _check_keys(records)
    from .parts import owned_by, part_manifest_name, part_tag, select_part
    if part is not None:
        records = select_part(records, part)

    index = _index_videos(video_dir)
    missing, plan = [], {}
    for record in sorted(records, key=lambda r: (r.subset, r.id)):
        path, clip = _source(record, index)
        if path is None:
            missing.append({"video": record.id, "subset": record.subset,
                            "reason": f"missing video file: no {record.video}.* in {video_dir}"})
        else:
            plan.setdefault(record.subset, []).append((record, path, clip))
    shards = {}  # file -> list of (record, path, clip)
    for subset, items in plan.items():
        for i in range(0, len(items), shard_size):
            shards[f"{subset}{part_tag(part)}-{i // shard_size:06d}.tar"] = items[i:i + shard_size]

    settings = {"version": VERSION, "format": fmt, "codec": enc.codec, "fps": enc.fps, "short_side": enc.short_side,
                "gop_seconds": enc.gop_seconds, "quality": enc.quality, "copy": enc.copy, "shard_size": shard_size,
                "annotation_sha256": sha256_file(annotation_file), "classes": ann.classes}
    if part is not None:
        settings["part"] = list(part)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = _reusable_shards(out_dir, settings, shards, part_manifest_name(part))
    _remove_leftovers(out_dir, shards, lambda name: owned_by(name, part))

    manifest = {"classes": ann.classes, "splits": {}, "codec": enc.codec, "fps": enc.fps,
                "short_side": enc.short_side, "gop_seconds": enc.gop_seconds, "quality": enc.quality,
                "skipped": [], "warnings": [], "settings": settings, "complete": False,
                "annotations": str(annotation_file), "video_dir": str(video_dir)}
    entries = dict(done)

    def refresh():
        manifest["splits"], manifest["empty_shards"] = {}, {}
        for name in shards:
            if name in entries and not entries[name]["num_samples"]:  # every video skipped: no file
                manifest["empty_shards"][name] = entries[name]
            elif name in entries:
                split = manifest["splits"].setdefault(_SHARD_RE.match(name)["subset"], {"num_samples": 0, "shards": {}})
                split["shards"][name] = entries[name]
                split["num_samples"] += entries[name]["num_samples"]
        manifest["skipped"] = missing + [s for e in entries.values() for s in e["skipped"]]
        manifest["warnings"] = [w for e in entries.values() for w in e["warnings"]]
        write_json(manifest, out_dir / part_manifest_name(part), indent=1)

    if done:
        log.info("%s: keeping %d verified shard(s) from an earlier run", out_dir, len(done))
    refresh()
    pending = [name for name in shards if name not in done]
    _pack(out_dir, pending, shards, enc, ann, workers, progress, entries, refresh)
    manifest["complete"] = True
    refresh()
    skipped = manifest["skipped"]
    if skipped:
        log.warning("%s: skipped %d video(s): %s", out_dir, len(skipped),
                    "; ".join(f"{s['video']}: {s['reason']}" for s in skipped[:5]))
    if strict and skipped:
        raise PackingError(f"{len(skipped)} video(s) skipped (strict): "
                           + "; ".join(f"{s['video']}: {s['reason']}" for s in skipped))
    return manifest


def _check_keys(records) -> None:
    seen = {}
    for record in records:
        key = sample_key(record.id)
        if key in seen:
            raise ValueError(f"videos {seen[key]!r} and {record.id!r} map to the same sample key {key!r}")
        seen[key] = record.id


def _reusable_shards(out_dir: pathlib.Path, settings: dict, shards: dict, manifest_name: str = MANIFEST) -> dict:
    """Manifest entries of shards from an earlier run with the same settings whose keys and sha256 still match."""
    path = out_dir / manifest_name
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError) as e:
        log.warning("%s is unreadable (%s); rebuilding every shard", path, e)
        return {}
    if old.get("settings") != settings:
        log.info("%s: settings or annotations changed; rebuilding every shard", out_dir)
        return {}
    done = {}
    listed = [(n, e) for split in old.get("splits", {}).values() for n, e in split.get("shards", {}).items()]
    for name, entry in listed + list(old.get("empty_shards", {}).items()):
        planned = shards.get(name)
        if planned is None or entry.get("planned") != [r.id for r, _, _ in planned]:
            continue
        if not entry.get("num_samples") and not entry.get("keys"):
            done[name] = entry
        elif (out_dir / name).is_file() and sha256_file(out_dir / name) == entry.get("sha256"):
            done[name] = entry
        else:
            log.warning("%s: %s does not match its checksum; rebuilding it", out_dir, name)
    return done


def _remove_leftovers(out_dir: pathlib.Path, shards: dict, owned=lambda name: True) -> None:
    """Delete temporary files of killed runs and shards outside the current plan (of the files ``owned`` accepts)."""
    for path in out_dir.iterdir():
        if not owned(path.name):
            continue
        stale_shard = _SHARD_RE.match(path.name) and path.name not in shards
        if path.is_file() and (_TMP in path.name or TEMP_RE.match(path.name) or stale_shard):
            log.info("%s: removing %s", out_dir, "leftover " + path.name if not stale_shard else "stale " + path.name)
            path.unlink()


def _write_shard(tmp: pathlib.Path, items, results, ann: Annotations, bar) -> dict:
    """Write the samples of ``items`` [(record, path, clip)] to the tar ``tmp``, taking transcoded videos from
    ``results`` in order; returns the shard's manifest entry (without its sha256)."""
    import webdataset as wds

    entry = {"num_samples": 0, "sha256": None, "keys": [], "planned": [r.id for r, _, _ in items], "skipped": [],
             "warnings": []}
    with open(tmp, "wb") as f, wds.TarWriter(f, mtime=0) as sink:
        for record, path, _ in items:
            _, data, meta = next(results)
            bar.update()
            if data is None:
                log.warning("skipping %s (%s): %s", record.id, path, meta)
                entry["skipped"].append({"video": record.id, "subset": record.subset, "reason": meta})
                continue
            info, messages = sample_json(record, meta, ann, path.name)
            info["sha256"] = member_checksums({"mp4": data})
            entry["warnings"] += [{"video": record.id, "message": m} for m in messages]
            key = sample_key(record.id)
            sink.write({"__key__": key, "mp4": data, "json": info})
            entry["keys"].append(key)
    entry["num_samples"] = len(entry["keys"])
    return entry


def _pack(out_dir, pending, shards, enc, ann, workers, progress, entries, refresh) -> None:
    """Transcode the videos of the ``pending`` shards (in a pool of ``workers``) and write the shards in order."""
    import tqdm

    tasks = [(i, path, clip, enc) for i, (_, path, clip) in enumerate(
        item for name in pending for item in shards[name])]
    if not tasks:
        return
    bar = tqdm.tqdm(total=len(tasks), desc=f"packing {out_dir.name}", unit="video", disable=not progress)
    with ordered_map(_transcode_task, tasks, workers) as results, bar:
        for name in pending:
            tmp = out_dir / (name + _TMP + str(os.getpid()))
            try:
                entry = _write_shard(tmp, shards[name], results, ann, bar)
                if entry["num_samples"]:
                    entry["sha256"] = sha256_file(tmp)
                    os.replace(tmp, out_dir / name)
                else:  # an empty tar would trip webdataset's empty-shard check; the manifest lists it as empty
                    tmp.unlink()
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            entries[name] = entry
            refresh()
