"""ActivityNet detection mAP and proposal AR@AN/AUC, equal to the official evaluation code, vectorized with NumPy.

Detection (eval_detection.py of the ActivityNet Evaluation repository) is reproduced to rounding on any file pair:
- classes are the labels of the chosen subset's GT, in first-seen order; classes without predictions get AP 0;
- per class, predictions are ranked by ``np.argsort(score)[::-1]`` on the class's scores in file order, so score ties
  fall exactly as in the official code (NumPy's default sort is not stable);
- each prediction visits its video's GTs of the class in descending tIoU (``np.argsort(tiou)[::-1]``, again with the
  official tie order); per threshold it stops as a false positive at the first GT below the threshold, skips GTs
  locked at that threshold and locks the first free one as a true positive;
- AP is the VOC-2011 interpolation; mAP is the mean over classes, average mAP the mean over thresholds.

tIoU is the official ``intersection / union`` with no epsilon. A pair whose union is 0 (a zero-length prediction
against a zero-length GT; the v1.3 validation GT has three zero-length segments) gives 0/0 = NaN. NaN sorts first after
the reversed argsort and ``NaN < threshold`` is False, so the official code counts such a pair as a match at every
threshold; that is the default here too. ``nan_iou_as_zero=True`` treats these pairs as tIoU 0 instead.

Proposals (eval_proposal.py of the same repository): average recall over the tIoU thresholds against the average
number of proposals per video (AN), at the 100 points ``max_avg_nr_proposals * k / 100``, and the area under that curve
normalized by its last AN (the official script prints it in percent). Times are seconds; every result is a fraction.

Speed: the (prediction, GT) pairs that can match (tIoU > 0 or NaN) are built for all classes at once (every pair of
a small (class, video) group, an interval join in larger ones), and the algorithm's only sequential part, the GT locks,
is solved for all (class, video, threshold) groups together in a few vectorized rounds (``_greedy_lock``).

Input: JSON files (optionally gzipped, e.g. ``results.json.gz``) or loaded dicts. A key given twice in one JSON object
(a video listed twice), non-finite segment times or scores, and tIoU thresholds outside (0, 1] are errors naming the
file, video or value; segments with end < start are evaluated as given, with a warning.
"""
import gzip
import json
import os
import warnings
import zlib
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

TIOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)

Source = Union[str, os.PathLike, dict]


class EvaluationWarning(UserWarning):
    """Suspicious but legal input (inverted segments, predictions for videos outside the GT subset)."""


# ----------------------------------------------------------------------------------------------------------------
# Input


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list) -> dict:
    """``json`` object hook: a dict of the pairs; a key given twice raises (``json`` would keep the last silently)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


def _load(source: Source, what: str) -> (dict, str):
    """(dict, name for messages) from a path (JSON, or gzipped JSON by its magic bytes) or an already loaded dict."""
    if isinstance(source, dict):
        return source, what
    name = os.fspath(source)
    with open(name, "rb") as f:
        raw = f.read()
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        data = json.loads(raw, object_pairs_hook=_unique_keys)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{name}: not a valid gzip file ({e})") from None
    except _DuplicateKey as e:
        raise ValueError(f"{name}: {e.args[0]!r} appears twice in one JSON object (a video or field given twice; "
                         f"only one can count)") from None
    except RecursionError:
        raise ValueError(f"{name}: JSON nested too deeply (no ActivityNet file nests like this)") from None
    except ValueError as e:  # JSONDecodeError, or bytes that are no UTF-8/16/32 text
        raise ValueError(f"{name}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{name}: expected a JSON object at the top level, got {type(data).__name__}")
    return data, name


def load_blocked(blocked: Union[None, Source, Iterable[str]]) -> frozenset:
    """Blocked video ids from None, a JSON list file, a text file (one id per line) or an iterable of ids."""
    if blocked is None:
        return frozenset()
    if isinstance(blocked, (str, os.PathLike)):
        with open(blocked) as f:
            text = f.read()
        try:
            ids = json.loads(text)
        except json.JSONDecodeError:
            ids = text.split()
        except RecursionError:
            raise ValueError(f"{os.fspath(blocked)}: JSON nested too deeply (expected a list of video ids)") from None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"{os.fspath(blocked)}: expected a JSON list of video ids or one id per line")
        return frozenset(ids)
    return frozenset(blocked)


@dataclass
class GroundTruth:
    """GT instances of one subset; ``classes`` in first-seen order, ``videos`` the subset's video ids (file order)."""
    classes: List[str]
    videos: List[str]
    video: np.ndarray  # (N,) int64 index into ``videos``
    label: np.ndarray  # (N,) int64 index into ``classes``
    segment: np.ndarray  # (N, 2) float64 seconds


def load_ground_truth(gt: Source, subset: str = "validation", blocked: Iterable[str] = ()) -> GroundTruth:
    """Reads an ActivityNet GT (``{"database": {vid: {"subset", "annotations": [{"segment", "label"}]}}}``)."""
    data, name = _load(gt, "ground truth")
    database = data.get("database")
    if not isinstance(database, dict):
        raise ValueError(f"{name}: missing or malformed field 'database' (expected an object of videos)")
    classes: Dict[str, int] = {}
    videos: List[str] = []
    video, label, segment = [], [], []
    for vid, entry in database.items():
        if not isinstance(entry, dict) or "subset" not in entry:
            raise ValueError(f"{name}: video {vid!r}: missing field 'subset'")
        if entry["subset"] != subset or vid in blocked:
            continue
        annotations = entry.get("annotations")
        if not isinstance(annotations, list):
            raise ValueError(f"{name}: video {vid!r}: missing or malformed field 'annotations' (expected a list)")
        v = len(videos)
        videos.append(vid)
        for i, ann in enumerate(annotations):
            where = f"{name}: video {vid!r}: annotations[{i}]"
            if not isinstance(ann, dict) or not isinstance(ann.get("label"), str):
                raise ValueError(f"{where}: missing or malformed field 'label' (expected a string)")
            segment.append(_segment(ann, where))
            label.append(classes.setdefault(ann["label"], len(classes)))
            video.append(v)
    if not classes:
        raise ValueError(f"{name}: subset {subset!r} has no annotated videos")
    result = GroundTruth(list(classes), videos, np.array(video, np.int64), np.array(label, np.int64),
                         np.array(segment, np.float64).reshape(-1, 2))
    _check_segments(result.segment, lambda i: videos[result.video[i]], name)
    return result


def _segment(entry: dict, where: str) -> List[float]:
    seg = entry.get("segment")
    try:
        if isinstance(seg, (str, bytes)) or len(seg) != 2:
            raise TypeError
        return [float(seg[0]), float(seg[1])]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: malformed field 'segment' (expected [start, end] seconds), got {seg!r}") from None


@dataclass
class Predictions:
    """Predictions in file order; ``video`` indexes GroundTruth.videos, -1 for videos outside the GT subset."""
    video: np.ndarray  # (P,) int64
    label: np.ndarray  # (P,) int64 index into GroundTruth.classes (all 0 for proposals)
    score: np.ndarray  # (P,) as the JSON numbers give it: int64 when all are integers, else float64
    segment: np.ndarray  # (P, 2) float64 seconds


def load_predictions(pred: Source, gt: GroundTruth, blocked: Iterable[str] = (), labels: bool = True,
                     ignore_unknown_labels: bool = False) -> Predictions:
    """Reads ``{"results": {vid: [{"label", "score", "segment"}]}}``; ``labels=False`` for proposals (no label).

    A label outside the GT classes is an error listing them, or with ``ignore_unknown_labels`` a warning and the
    predictions are dropped (they cannot change any class's AP)."""
    data, name = _load(pred, "predictions")
    results = data.get("results")
    if not isinstance(results, dict):
        raise ValueError(f"{name}: missing or malformed field 'results' (expected an object of videos)")
    vids, counts, flat = [], [], []
    try:
        for vid, dets in results.items():
            if vid in blocked:
                continue
            if not isinstance(dets, list):
                raise TypeError
            vids.append(vid)
            counts.append(len(dets))
            flat.extend(dets)
        segment = np.array(list(map(itemgetter("segment"), flat)), np.float64).reshape(-1, 2) if flat else \
            np.zeros((0, 2))
        score = np.array(list(map(itemgetter("score"), flat)), ndmin=1)
        lab = list(map(itemgetter("label"), flat)) if labels else []
        if len(segment) != len(flat) or score.shape != (len(flat),) or score.dtype.kind not in "iuf":
            raise TypeError
    except (KeyError, TypeError, ValueError, IndexError):
        _diagnose(results, name, blocked, labels)
        raise ValueError(f"{name}: field 'score' must hold numbers in the int64/float64 range") from None
    index = {v: i for i, v in enumerate(gt.videos)}
    video = np.repeat(np.array([index.get(v, -1) for v in vids], np.int64), counts)
    owner = np.repeat(np.arange(len(vids)), counts)
    _check_segments(segment, lambda i: vids[owner[i]], name)
    infinite = np.flatnonzero(~np.isfinite(score))
    if len(infinite):  # NaN would rank above every real score
        i = infinite[0]
        raise ValueError(f"{name}: video {vids[owner[i]]!r}: field 'score' {score[i]} is not finite "
                         f"({len(infinite)} such scores)")
    outside = [v for v in vids if v not in index]
    if outside:
        warnings.warn(f"{name}: {len(outside)} of {len(vids)} predicted videos are not in the GT subset (their "
                      f"predictions are false positives), e.g. {outside[:3]}", EvaluationWarning, stacklevel=3)
    label = np.zeros(len(score), np.int64)
    if labels:
        classes = {c: i for i, c in enumerate(gt.classes)}
        try:
            label = np.fromiter(map(classes.get, lab, repeat(-1)), np.int64, count=len(lab))
        except TypeError:  # an unhashable label
            _diagnose(results, name, blocked, labels)
            raise
        unknown = label < 0
        if unknown.any():
            names = sorted({lab[i] for i in np.flatnonzero(unknown)}, key=repr)
            if not all(isinstance(x, str) for x in names):
                _diagnose(results, name, blocked, labels)
            if not ignore_unknown_labels:
                raise ValueError(f"{name}: {len(names)} predicted label(s) are not classes of the GT subset: "
                                 f"{names}; pass ignore_unknown_labels (--ignore-unknown-labels) to drop them")
            warnings.warn(f"{name}: dropped {int(unknown.sum())} predictions with labels outside the GT subset: "
                          f"{names}", EvaluationWarning, stacklevel=3)
            keep = ~unknown
            video, label, score, segment = video[keep], label[keep], score[keep], segment[keep]
    return Predictions(video, label, score, segment)


def _diagnose(results: dict, name: str, blocked, labels: bool) -> None:
    """Raises a ValueError naming the first malformed video/detection/field of a ``results`` object."""
    for vid, dets in results.items():
        if vid in blocked:
            continue
        if not isinstance(dets, list):
            raise ValueError(f"{name}: results[{vid!r}]: expected a list of detections, got {type(dets).__name__}")
        for i, d in enumerate(dets):
            where = f"{name}: results[{vid!r}][{i}]"
            if not isinstance(d, dict):
                raise ValueError(f"{where}: expected an object, got {d!r}")
            if labels and not isinstance(d.get("label"), str):
                raise ValueError(f"{where}: missing or malformed field 'label' (expected a string)")
            s = d.get("score")
            if isinstance(s, bool) or not isinstance(s, (int, float)):
                raise ValueError(f"{where}: missing or malformed field 'score' (expected a number), got {s!r}")
            _segment(d, where)


def _check_segments(segment: np.ndarray, video_of, name: str) -> None:
    """Rejects non-finite times; warns with the count and examples of segments whose end < start (evaluated as given,
    like the official code). ``video_of(i)`` names row i's video."""
    finite = np.isfinite(segment).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{name}: video {video_of(i)!r}: field 'segment' {segment[i].tolist()} is not finite "
                         f"({int((~finite).sum())} such segments)")
    bad = np.flatnonzero(segment[:, 1] < segment[:, 0])
    if len(bad):
        examples = [(video_of(i), segment[i].tolist()) for i in bad[:3]]
        warnings.warn(f"{name}: {len(bad)} segments end before they start (evaluated as given), e.g. {examples}",
                      EvaluationWarning, stacklevel=4)


# ----------------------------------------------------------------------------------------------------------------
# Detection mAP


def segment_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Official tIoU, elementwise over broadcast (..., 2) segments; NaN where the union is 0."""
    inter = (np.minimum(pred[..., 1], gt[..., 1]) - np.maximum(pred[..., 0], gt[..., 0])).clip(0)
    union = (gt[..., 1] - gt[..., 0]) + (pred[..., 1] - pred[..., 0]) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / union


def check_tiou_thresholds(tiou_thresholds) -> np.ndarray:
    """(T,) float64 of a non-empty list of tIoU thresholds, each in (0, 1]; a ValueError names the offending list."""
    try:
        thr = np.atleast_1d(np.asarray(tiou_thresholds, np.float64))
    except (TypeError, ValueError):
        thr = np.zeros((0, 0))
    if thr.ndim != 1 or len(thr) == 0 or not ((thr > 0) & (thr <= 1)).all():
        shown = thr.tolist() if thr.ndim == 1 and len(thr) else tiou_thresholds
        raise ValueError(f"tIoU thresholds must be a non-empty list of numbers in (0, 1], got {shown!r}")
    return thr


def _rank_by_class(pred: Predictions, num_classes: int) -> (np.ndarray, np.ndarray):
    """(order, class_start): prediction indices class by class, each class in ``argsort(score)[::-1]`` order of its
    predictions in file order; class c occupies order[class_start[c]:class_start[c + 1]]."""
    by_class = np.argsort(pred.label, kind="stable")
    class_start = np.searchsorted(pred.label[by_class], np.arange(num_classes + 1))
    order = by_class.copy()
    for c in range(num_classes):
        idx = by_class[class_start[c]:class_start[c + 1]]
        order[class_start[c]:class_start[c + 1]] = idx[pred.score[idx].argsort()[::-1]]
    return order, class_start


_DENSE_GROUP = 16  # (class, video) groups with at most this many GTs pair each prediction with all of them


def _match(pred_video, pred_label, pred_segment, gt: GroundTruth, thr: np.ndarray, nan_iou_as_zero: bool) -> np.ndarray:
    """True positives (T, P) of predictions given in rank order (class by class, best first)."""
    num_pred, num_thr = len(pred_video), len(thr)
    # GT groups (class, video), each group's GTs in file order.
    num_videos = len(gt.videos)
    gt_key = gt.label * num_videos + gt.video
    gt_order = np.argsort(gt_key, kind="stable")
    group_keys, group_start, group_size = np.unique(gt_key[gt_order], return_index=True, return_counts=True)
    gt_segment = gt.segment[gt_order]
    pred_key = pred_label * num_videos + pred_video
    group = np.searchsorted(group_keys, pred_key).clip(max=len(group_keys) - 1)
    has_gt = (pred_video >= 0) & (group_keys[group] == pred_key)
    groups = _Groups(group, group_start, group_size, gt_segment, pred_segment)
    pred, gt_idx = groups.candidate_pairs(np.flatnonzero(has_gt))
    iou = segment_iou(pred_segment[pred], gt_segment[gt_idx])
    if nan_iou_as_zero:
        iou[np.isnan(iou)] = 0.0
    valid = ~(iou < thr.min())  # NaN is valid: the official loop only stops at tIoU < threshold
    pred, gt_idx, iou = pred[valid], gt_idx[valid], iou[valid]
    # Each prediction's valid GTs in the official visiting order: descending tIoU, NaN first.
    desc = np.where(np.isnan(iou), -np.inf, -iou)
    order = np.lexsort((desc, pred))
    pred, gt_idx, iou, desc = pred[order], gt_idx[order], iou[order], desc[order]
    groups.official_tie_order(pred, gt_idx, iou, desc, nan_iou_as_zero)
    # Per threshold the valid GTs are a prefix of that order; lock them in rank order.
    entry = np.concatenate([pred[~(iou < t)] + k * num_pred for k, t in enumerate(thr)])
    key = np.concatenate([gt_idx[~(iou < t)] + k * len(gt_segment) for k, t in enumerate(thr)])
    tp = np.zeros(num_thr * num_pred, bool)
    tp[_greedy_lock(entry, key, num_thr * len(gt_segment))] = True
    return tp.reshape(num_thr, num_pred)


def _greedy_lock(entry: np.ndarray, key: np.ndarray, num_keys: int) -> np.ndarray:
    """The entries that take a key when, in ascending entry order, each entry takes its first key not taken before.

    ``(entry, key)`` pairs are sorted by entry and list each entry's keys in its order of preference. Solved in rounds:
    pairs on taken keys are dropped (an entry left without keys takes none), and every entry whose first free key is
    held by no earlier entry takes it, since nothing before it can take that key any more. The first entry of every
    key-sharing set wins each round, so rounds are few unless long chains of shared keys exist.
    """
    won = []
    locked = np.zeros(num_keys, bool)
    holder = np.full(num_keys, np.iinfo(np.int64).max)
    while len(entry):
        free = ~locked[key]
        entry, key = entry[free], key[free]
        if not len(entry):
            break
        first = np.ones(len(entry), bool)
        np.not_equal(entry[1:], entry[:-1], out=first[1:])
        np.minimum.at(holder, key, entry)
        wins = first & (holder[key] == entry)
        holder[key] = np.iinfo(np.int64).max
        locked[key[wins]] = True
        won.append(entry[wins])
        keep = ~wins[first][np.cumsum(first) - 1]
        entry, key = entry[keep], key[keep]
    return np.concatenate(won) if won else np.zeros(0, np.int64)


def _expand(owner: np.ndarray, start: np.ndarray, count: np.ndarray) -> (np.ndarray, np.ndarray):
    """(owner repeated count times, start + 0..count-1 for each owner)."""
    count = np.maximum(count, 0)
    offset = np.repeat(start - (np.cumsum(count) - count), count)
    return np.repeat(owner, count), offset + np.arange(int(count.sum()))


@dataclass
class _Groups:
    """Predictions (rows of ``pred_segment``) against the GTs of their (class, video) group (rows of ``gt_segment``,
    group g at group_start[g]:group_start[g] + group_size[g], file order)."""
    group: np.ndarray
    group_start: np.ndarray
    group_size: np.ndarray
    gt_segment: np.ndarray
    pred_segment: np.ndarray

    def candidate_pairs(self, preds: np.ndarray) -> (np.ndarray, np.ndarray):
        """(prediction, GT) pairs that include every pair with tIoU > 0 or NaN (all that can match a threshold > 0)."""
        size = self.group_size[self.group[preds]]
        dense = preds[size <= _DENSE_GROUP]
        parts = [_expand(dense, self.group_start[self.group[dense]], self.group_size[self.group[dense]])]
        big = preds[size > _DENSE_GROUP]
        big = big[np.argsort(self.group[big], kind="stable")]
        bounds = np.flatnonzero(np.diff(self.group[big], prepend=-1, append=-1))
        parts += [self._join(big[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        return np.concatenate([p for p, _ in parts]), np.concatenate([g for _, g in parts])

    def _join(self, preds: np.ndarray) -> (np.ndarray, np.ndarray):
        """Pairs of one large group: overlapping proper segments, and the pairs whose lengths sum to 0 (0/0)."""
        g = self.group[preds[0]]
        start, size = self.group_start[g], self.group_size[g]
        gs, ge = self.gt_segment[start:start + size].T
        ps, pe = self.pred_segment[preds].T
        gt_len, pred_len = ge - gs, pe - ps
        proper = np.flatnonzero(gt_len > 0)
        by_start = proper[np.argsort(gs[proper], kind="stable")]
        reach = np.maximum.accumulate(ge[by_start])  # GTs before the first with reach > ps end by ps
        lo = np.searchsorted(reach, ps, side="right")
        hi = np.searchsorted(gs[by_start], pe, side="left")  # GTs from hi on start at or after pe
        hi[pred_len <= 0] = lo[pred_len <= 0]
        p1, j1 = _expand(preds, lo, hi - lo)
        by_len = np.argsort(gt_len, kind="stable")
        lo = np.searchsorted(gt_len[by_len], -pred_len, side="left")
        hi = np.searchsorted(gt_len[by_len], -pred_len, side="right")
        p2, j2 = _expand(preds, lo, hi - lo)
        return np.concatenate([p1, p2]), start + np.concatenate([by_start[j1], by_len[j2]])

    def official_tie_order(self, pred, gt_idx, iou, desc, nan_iou_as_zero: bool) -> None:
        """Reorders, in place, the pairs of predictions that have equal tIoUs (or two NaNs) among their valid GTs as the
        official ``argsort(tiou)[::-1]`` over all GTs of the group orders them (NumPy's sort is not stable)."""
        tie = (pred[1:] == pred[:-1]) & (desc[1:] == desc[:-1])
        for p in np.unique(pred[1:][tie]):
            lo, hi = np.searchsorted(pred, p, side="left"), np.searchsorted(pred, p, side="right")
            g = self.group[p]
            start, size = self.group_start[g], self.group_size[g]
            row = segment_iou(self.pred_segment[p], self.gt_segment[start:start + size])
            if nan_iou_as_zero:
                row[np.isnan(row)] = 0.0
            place = np.empty(size, np.int64)
            place[row.argsort()[::-1]] = np.arange(size)
            order = lo + np.argsort(place[gt_idx[lo:hi] - start])
            gt_idx[lo:hi], iou[lo:hi] = gt_idx[order], iou[order]


def _interpolated_ap(tp: np.ndarray, npos: int) -> np.ndarray:
    """VOC-2011 AP per row of a (T, N) true-positive matrix in rank order."""
    tp_cum = np.cumsum(tp, axis=1, dtype=np.float64)
    seen = np.arange(1, tp.shape[1] + 1, dtype=np.float64)
    prec = tp_cum / seen
    rec = tp_cum / float(npos)
    zero, one = np.zeros((len(tp), 1)), np.ones((len(tp), 1))
    mprec = np.maximum.accumulate(np.hstack([zero, prec, zero])[:, ::-1], axis=1)[:, ::-1]
    mrec = np.hstack([zero, rec, one])
    return np.sum((mrec[:, 1:] - mrec[:, :-1]) * mprec[:, 1:], axis=1)


def evaluate_detection(gt: Source, pred: Source, subset: str = "validation",
                       tiou_thresholds: Sequence[float] = TIOU_THRESHOLDS, blocked=None,
                       ignore_unknown_labels: bool = False, nan_iou_as_zero: bool = False) -> dict:
    """ActivityNet detection mAP.

    gt, pred: dicts or JSON paths (``.json`` or gzipped ``.json.gz``) in the ActivityNet formats (seconds);
    tiou_thresholds: each in (0, 1]; blocked: None, a file (JSON list or one id per line) or ids, dropped from GT and
    predictions; ignore_unknown_labels: drop predictions whose label is no class of the subset (else an error listing
    them); nan_iou_as_zero: tIoU 0 instead of the official NaN for zero-union pairs
    (module docstring). Predictions for videos without GT of their class are false positives. Returns fractions:
    ``{"tiou_thresholds": [T], "mAP": [T], "average_mAP": x, "per_class_AP": {label: [T]}}``, classes in the GT's
    first-seen order.
    """
    thr = check_tiou_thresholds(tiou_thresholds)
    blocked = load_blocked(blocked)
    truth = load_ground_truth(gt, subset, blocked)
    preds = load_predictions(pred, truth, blocked, ignore_unknown_labels=ignore_unknown_labels)
    num_classes = len(truth.classes)
    order, class_start = _rank_by_class(preds, num_classes)
    tp = _match(preds.video[order], preds.label[order], preds.segment[order], truth, thr, nan_iou_as_zero)
    npos = np.bincount(truth.label, minlength=num_classes)
    ap = np.zeros((len(thr), num_classes))
    for c in range(num_classes):
        if class_start[c + 1] > class_start[c]:
            ap[:, c] = _interpolated_ap(tp[:, class_start[c]:class_start[c + 1]], npos[c])
    mAP = ap.mean(axis=1)
    return {"tiou_thresholds": thr.tolist(), "mAP": mAP.tolist(), "average_mAP": float(mAP.mean()),
            "per_class_AP": {name: ap[:, c].tolist() for c, name in enumerate(truth.classes)}}


# ----------------------------------------------------------------------------------------------------------------
# Proposal AR@AN


def evaluate_proposals(gt: Source, proposals: Source, subset: str = "validation",
                       max_avg_nr_proposals: Optional[float] = 100,
                       tiou_thresholds: Sequence[float] = TIOU_THRESHOLDS, blocked=None) -> dict:
    """ActivityNet proposal metrics (eval_proposal.py); labels in ``proposals`` are ignored.

    Each annotated GT video keeps its ``int(n * ratio)`` best proposals, ratio = max_avg_nr_proposals * #videos /
    #proposals (all proposals, also those of other videos, as in the official code). Returns fractions:
    ``{"tiou_thresholds", "AR@AN": {k: average recall at the k-th of 100 points}, "average_nr_proposals": [100] (the
    AN of each point: k for the default 100 when every video has enough proposals), "recall": [T][100], "AUC": area
    under AR-vs-AN divided by the last AN}``.
    """
    thr = check_tiou_thresholds(tiou_thresholds)
    blocked = load_blocked(blocked)
    truth = load_ground_truth(gt, subset, blocked)
    props = load_predictions(proposals, truth, blocked, labels=False)
    if len(props.score) == 0:
        raise ValueError("no proposals to evaluate")
    # The official video list: annotated videos in first-seen order, which is index order (GT rows follow the file).
    videos, gt_video = np.unique(truth.video, return_inverse=True)
    num_videos, num_gt = len(videos), len(truth.video)
    if not max_avg_nr_proposals:
        max_avg_nr_proposals = float(len(props.score)) / num_videos
    ratio = max_avg_nr_proposals * float(num_videos) / len(props.score)
    # Proposals by video; each video keeps its int(n * ratio) best (argsort(score)[::-1] of its file order).
    prop_video = np.searchsorted(videos, props.video).clip(max=num_videos - 1)
    prop_video[videos[prop_video] != props.video] = num_videos  # not an annotated GT video
    by_video = np.argsort(prop_video, kind="stable")
    bounds = np.searchsorted(prop_video[by_video], np.arange(num_videos + 1))
    count = np.diff(bounds)
    kept = np.minimum((count * ratio).astype(np.int64), count)
    total = int(kept.sum())
    if total == 0:
        raise ValueError("no proposal of an annotated GT video is kept (max_avg_nr_proposals too small)")
    ranked = []
    for v in np.flatnonzero(kept):
        rows = by_video[bounds[v]:bounds[v + 1]]
        ranked.append(rows[props.score[rows].argsort()[::-1][:kept[v]]])
    ranked = np.concatenate(ranked)
    # The official code scores a video without proposals as one column of tIoU 0.
    columns = np.where(count == 0, 1, kept)
    # first[t, g]: rank of the best kept proposal with tIoU >= thr[t] for GT g; columns[video] when there is none.
    first = np.tile(columns[gt_video], (len(thr), 1))
    pairs = kept[gt_video]  # every GT against every kept proposal of its video
    pair_gt = np.repeat(np.arange(num_gt), pairs)
    pair_rank = np.arange(len(pair_gt)) - np.repeat(np.cumsum(pairs) - pairs, pairs)
    video_start = np.cumsum(kept) - kept
    iou = segment_iou(props.segment[ranked[video_start[gt_video[pair_gt]] + pair_rank]], truth.segment[pair_gt])
    for t in range(len(thr)):
        hit = np.flatnonzero(iou >= thr[t])  # pairs are grouped by GT, best rank first
        gts, at = np.unique(pair_gt[hit], return_index=True)
        first[t, gts] = pair_rank[hit[at]]
    pcn = np.arange(1, 101) / 100.0 * (max_avg_nr_proposals * float(num_videos) / total)
    cut = np.minimum((columns[:, None] * pcn[None, :]).astype(np.int64), columns[:, None])  # (V, 100)
    recall = (first[:, :, None] < cut[gt_video][None, :, :]).sum(axis=1) / float(num_gt)
    avg_recall = recall.mean(axis=0)
    per_video = pcn * (float(total) / num_videos)
    return {"tiou_thresholds": thr.tolist(), "AR@AN": {k + 1: float(r) for k, r in enumerate(avg_recall)},
            "average_nr_proposals": per_video.tolist(), "recall": recall.tolist(),
            "AUC": float(np.trapezoid(avg_recall, per_video)) / float(per_video[-1])}
