"""Annotation files → one common record list.

Three input formats are read:

* ``"activitynet"``: ActivityNet v1.3 / HACS JSON,
  ``{"database": {video_id: {"subset", "duration", "annotations": [{"segment": [s, e], "label"}]}}}``, optionally with
  a top-level ``"classes"`` list that fixes the class index (the synthetic benchmark writes one).
  Ids are kept verbatim (the files use YouTube ids without a ``v_`` prefix; a few real ids begin with ``v_``).
* ``"thumos"``: THUMOS14-style JSON (the layout ActionFormer/OpenTAD ship): the same ``database`` layout, where the
  subset is ``"Validation"``/``"Test"`` (lower-cased here), annotations may carry ``label_id`` (then it defines the
  class index), a segment may be given only in frames as ``"segment(frames)"`` (converted with the video's ``"fps"``),
  and ``"Ambiguous"`` segments are dropped (THUMOS evaluation ignores them).
* ``"clips"``: a Kinetics-style clip list, CSV with a header or JSON (a list of objects, or ``{"clips": [...]}``), with
  the fields ``video, start, end, label, split`` (Kinetics' own names ``youtube_id, time_start, time_end`` are
  accepted). ``start``/``end`` (seconds) may be empty: the clip is then the whole file. Splits
  ``train``/``val``/``test`` become ``training``/``validation``/``testing``. A clip's id is ``VIDEO_SSSSSS_EEEEEE``
  (Kinetics' file naming; an existing file of that name is used whole), or ``VIDEO`` for a whole file.

Every format becomes a list of :class:`VideoRecord`; times are seconds. Malformed input raises
:class:`AnnotationError` naming the file, the video id and the field.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import pathlib
import warnings

FORMATS = ("activitynet", "thumos", "clips")
_SPLITS = {"train": "training", "training": "training", "val": "validation", "valid": "validation",
           "validation": "validation", "test": "testing", "testing": "testing"}


class AnnotationError(ValueError):
    """Malformed annotation input; the message names the file, the video id and the field."""


class SegmentWarning(UserWarning):
    """A segment was clipped to [0, duration] or dropped (end <= start)."""


@dataclasses.dataclass(frozen=True)
class Segment:
    """One action instance: ``start``/``end`` in seconds, class name ``label``."""
    start: float
    end: float
    label: str


@dataclasses.dataclass(frozen=True)
class VideoRecord:
    """One sample to pack.

    ``id``: sample id; ``video``: the source file's stem (the id, or the clip list's ``video``);
    ``subset``: split name; ``annotations``: segments in seconds relative to the sample's start; ``duration``: the
    annotated duration in seconds (``None`` if the file gives none); ``clip``: ``(start, end)`` seconds to cut from the
    source (``None``: the whole file); ``label``: the clip's class (clip lists only).
    """
    id: str
    video: str
    subset: str
    annotations: tuple[Segment, ...] = ()
    duration: float | None = None
    clip: tuple[float, float] | None = None
    label: str | None = None


@dataclasses.dataclass
class Annotations:
    """A parsed annotation file: ``records``, ``classes`` (names in label_id order), ``label_ids`` (name → id)."""
    records: list[VideoRecord]
    classes: list[str]
    label_ids: dict[str, int] = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        self.label_ids = {name: i for i, name in enumerate(self.classes)}


def load_annotations(path, fmt: str = "activitynet", classes=None) -> Annotations:
    """Parse ``path`` in format ``fmt`` (one of :data:`FORMATS`).

    The class index is, in order of precedence: ``classes`` (a list of names), the file's top-level ``"classes"``
    list (JSON formats), the file's ``label_id`` values (THUMOS), the sorted label names. A fixed list must hold every
    label the file uses; it keeps two datasets (e.g. a clip set and a TAL set) on one index.
    """
    path = pathlib.Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown annotation format {fmt!r}; expected one of {FORMATS}")
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    ann = _load_clips(path) if fmt == "clips" else _load_database(path, thumos=fmt == "thumos")
    return ann if classes is None else _fixed_classes(ann.records, classes, "the given class list", path)


def _fixed_classes(records, classes, source: str, path) -> Annotations:
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) and c for c in classes):
        raise AnnotationError(f"{path}: {source} must be a list of class names, got {classes!r}")
    if len(set(classes)) != len(classes):
        raise AnnotationError(f"{path}: {source} repeats a class name")
    known = set(classes)
    for r in records:
        for label in [s.label for s in r.annotations] + ([r.label] if r.label is not None else []):
            if label not in known:
                raise AnnotationError(f"{path}: video {r.id!r}: label {label!r} is not in {source}")
    return Annotations(records, list(classes))


def _read_json(path: pathlib.Path):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not valid JSON ({e})") from None


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AnnotationError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def _load_database(path: pathlib.Path, thumos: bool) -> Annotations:
    data = _read_json(path)
    database = data.get("database") if isinstance(data, dict) else None
    if not isinstance(database, dict):
        raise AnnotationError(f"{path}: missing the 'database' object (video id -> entry)")
    records, given_ids = [], {}
    for vid, entry in database.items():
        where = f"{path}: video {vid!r}"
        if not isinstance(entry, dict):
            raise AnnotationError(f"{where}: entry must be an object, got {type(entry).__name__}")
        subset = entry.get("subset")
        if not isinstance(subset, str) or not subset:
            raise AnnotationError(f"{where}: field 'subset' must be a non-empty string, got {subset!r}")
        duration = entry.get("duration")
        duration = None if duration is None else _number(duration, f"{where}: field 'duration'")
        fps = entry.get("fps")
        anns = entry.get("annotations", [])
        if not isinstance(anns, list):
            raise AnnotationError(f"{where}: field 'annotations' must be a list, got {type(anns).__name__}")
        segments = []
        for i, ann in enumerate(anns):
            field = f"{where}: field 'annotations[{i}]"
            if not isinstance(ann, dict):
                raise AnnotationError(f"{field}' must be an object, got {ann!r}")
            label = ann.get("label")
            if not isinstance(label, str) or not label:
                raise AnnotationError(f"{field}.label' must be a non-empty string, got {label!r}")
            if thumos and label == "Ambiguous":
                continue
            seg = ann.get("segment")
            scale = 1.0
            if seg is None and thumos and "segment(frames)" in ann:
                seg, scale = ann["segment(frames)"], 1.0 / _number(fps, f"{where}: field 'fps'")
            if not isinstance(seg, (list, tuple)) or len(seg) != 2:
                raise AnnotationError(f"{field}.segment' must be [start, end] in seconds, got {seg!r}")
            start = _number(seg[0], f"{field}.segment[0]'") * scale
            end = _number(seg[1], f"{field}.segment[1]'") * scale
            if "label_id" in ann:
                lid = ann["label_id"]
                if isinstance(lid, bool) or not isinstance(lid, int) or lid < 0:
                    raise AnnotationError(f"{field}.label_id' must be a non-negative integer, got {lid!r}")
                if given_ids.setdefault(label, lid) != lid:
                    raise AnnotationError(f"{field}.label_id' is {lid} but {label!r} had {given_ids[label]} before")
            segments.append(Segment(start, end, label))
        records.append(VideoRecord(id=vid, video=vid, subset=subset.lower() if thumos else subset,
                                   annotations=tuple(segments), duration=duration))
    if "classes" in data:
        return _fixed_classes(records, data["classes"], "its 'classes' list", path)
    labels = {s.label for r in records for s in r.annotations}
    return Annotations(records, _classes(labels, given_ids, path))


def _classes(labels: set[str], given_ids: dict[str, int], path) -> list[str]:
    """Classes in label_id order: the file's own label_ids when every label has one, else sorted names."""
    if given_ids and set(given_ids) == labels:
        by_id = sorted(given_ids.items(), key=lambda kv: kv[1])
        if [i for _, i in by_id] != list(range(len(by_id))):
            raise AnnotationError(f"{path}: label_id values {sorted(given_ids.values())} are not 0..{len(by_id) - 1}")
        return [name for name, _ in by_id]
    return sorted(labels)


_CLIP_FIELDS = {"video": ("video", "youtube_id"), "start": ("start", "time_start"), "end": ("end", "time_end"),
                "label": ("label",), "split": ("split", "subset")}


def _load_clips(path: pathlib.Path) -> Annotations:
    if path.suffix.lower() == ".json":
        data = _read_json(path)
        rows = data.get("clips") if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise AnnotationError(f"{path}: expected a list of clips or {{'clips': [...]}}")
    else:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    records, seen = [], set()
    for n, row in enumerate(rows):
        where = f"{path}: clip {n}"
        if not isinstance(row, dict):
            raise AnnotationError(f"{where} must be an object, got {row!r}")
        get = {}
        for field, names in _CLIP_FIELDS.items():
            get[field] = next((row[k] for k in names if k in row and row[k] not in (None, "")), None)
        video = get["video"]
        if not isinstance(video, str) or not video:
            raise AnnotationError(f"{where}: field 'video' must be a non-empty string, got {video!r}")
        where = f"{path}: video {video!r} (clip {n})"
        label = get["label"]
        if not isinstance(label, str) or not label:
            raise AnnotationError(f"{where}: field 'label' must be a non-empty string, got {label!r}")
        split = get["split"]
        if not isinstance(split, str) or split.lower() not in _SPLITS:
            raise AnnotationError(f"{where}: field 'split' must be one of {sorted(_SPLITS)}, got {split!r}")
        if (get["start"] is None) != (get["end"] is None):
            raise AnnotationError(f"{where}: fields 'start' and 'end' must both be given or both be empty")
        clip = None
        if get["start"] is not None:
            start, end = (_clip_time(get[k], f"{where}: field '{k}'") for k in ("start", "end"))
            if start < 0 or end <= start:
                raise AnnotationError(f"{where}: fields 'start'/'end' must satisfy 0 <= start < end, "
                                      f"got {start}, {end}")
            clip = (start, end)
        cid = video if clip is None else f"{video}_{int(clip[0]):06d}_{int(clip[1]):06d}"
        if cid in seen:
            raise AnnotationError(f"{where}: duplicate clip id {cid!r}")
        seen.add(cid)
        records.append(VideoRecord(id=cid, video=video, subset=_SPLITS[split.lower()], clip=clip, label=label))
    return Annotations(records, sorted({r.label for r in records}))


def _clip_time(value, where: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise AnnotationError(f"{where} must be a number of seconds, got {value!r}") from None
    return _number(value, where)


def clip_segments(segments, duration: float, video_id: str) -> tuple[list[Segment], list[str]]:
    """Fit ``segments`` (seconds) to ``[0, duration]``.

    A segment reaching outside is clipped, one with end <= start (after clipping) is dropped; each change emits a
    :class:`SegmentWarning` naming the video and is also returned as a message. Returns ``(kept, messages)``.
    """
    kept, messages = [], []
    for i, seg in enumerate(segments):
        start, end = min(max(seg.start, 0.0), duration), min(max(seg.end, 0.0), duration)
        if end <= start:
            messages.append(f"video {video_id!r}: annotations[{i}] {seg.label!r} [{seg.start:g}, {seg.end:g}] s "
                            f"dropped (end <= start within [0, {duration:g}] s)")
        elif (start, end) != (seg.start, seg.end):
            messages.append(f"video {video_id!r}: annotations[{i}] {seg.label!r} [{seg.start:g}, {seg.end:g}] s "
                            f"clipped to [{start:g}, {end:g}] (duration {duration:g} s)")
            kept.append(Segment(start, end, seg.label))
        else:
            kept.append(seg)
    for message in messages:
        warnings.warn(message, SegmentWarning, stacklevel=2)
    return kept, messages
