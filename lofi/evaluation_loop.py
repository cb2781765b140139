"""The ActivityNet detection algorithm one prediction at a time: the plain baseline that lofi.evaluation's vectorized
matching is timed (tools/bench_evaluation.py) and tested against."""
import numpy as np

from lofi.evaluation import TIOU_THRESHOLDS


def loop_detection(gt: dict, pred: dict, subset: str = "validation", tiou_thresholds=TIOU_THRESHOLDS,
                   nan_iou_as_zero: bool = False) -> (np.ndarray, list):
    """(AP (T, C), class names in GT first-seen order): the ActivityNet detection algorithm one prediction at a time.

    Per class, predictions in file order are ranked by ``np.argsort(score)[::-1]``; each one visits the GTs of its
    (class, video) in ``np.argsort(tiou)[::-1]`` order and, per threshold, is a false positive at the first GT whose
    tIoU is below the threshold, else takes the first GT not yet taken at that threshold. tIoU = intersection / union,
    NaN for 0/0 (counted as a match unless ``nan_iou_as_zero``). AP is the VOC-2011 interpolated AP."""
    classes, truth = [], {}
    for vid, entry in gt["database"].items():
        if entry["subset"] != subset:
            continue
        for ann in entry["annotations"]:
            if ann["label"] not in classes:
                classes.append(ann["label"])
            truth.setdefault((ann["label"], vid), []).append(ann["segment"])
    ap = np.zeros((len(tiou_thresholds), len(classes)))
    for c, label in enumerate(classes):
        npos = sum(len(segs) for (lab, _), segs in truth.items() if lab == label)
        mine = [(vid, d["score"], d["segment"]) for vid, dets in pred["results"].items() for d in dets
                if d["label"] == label]
        if not mine:
            continue
        taken = set()  # (video, threshold index, GT index)
        tp = np.zeros((len(tiou_thresholds), len(mine)))
        for rank, i in enumerate(np.argsort(np.array([score for _, score, _ in mine]))[::-1]):
            vid, _, (start, end) = mine[i]
            segs = np.array(truth.get((label, vid), []), np.float64).reshape(-1, 2)
            inter = np.clip(np.minimum(end, segs[:, 1]) - np.maximum(start, segs[:, 0]), 0, None)
            with np.errstate(invalid="ignore", divide="ignore"):
                iou = inter / ((segs[:, 1] - segs[:, 0]) + (end - start) - inter)
            if nan_iou_as_zero:
                iou[np.isnan(iou)] = 0.0
            visit = np.argsort(iou)[::-1]
            for t, threshold in enumerate(tiou_thresholds):
                for j in visit:
                    if iou[j] < threshold:
                        break
                    if (vid, t, j) not in taken:
                        taken.add((vid, t, j))
                        tp[t, rank] = 1
                        break
        for t in range(len(tiou_thresholds)):
            ap[t, c] = voc_ap(tp[t], npos)
    return ap, classes


def voc_ap(tp: np.ndarray, npos: int) -> float:
    """VOC-2011 AP of a ranked true-positive vector: the area under precision made non-increasing from the right."""
    hits = np.cumsum(tp)
    precision = hits / np.arange(1, len(tp) + 1)
    area, best = 0.0, 0.0
    for k in range(len(tp) - 1, -1, -1):  # from the last rank: recall steps by 1/npos at every hit
        best = max(best, precision[k])
        if tp[k]:
            area += best / npos
    return area
