"""Loop-based transcription of the official ActivityNet evaluation (AN:Evaluation/eval_detection.py,
eval_proposal.py, utils.py; REFERENCE.md §5), the oracle that tests/test_evaluation.py and tools/bench_evaluation.py
compare lofi.evaluation against.

It follows the official control flow statement by statement, one prediction at a time, with plain lists and dicts in
place of pandas (whose ``groupby`` keeps file order inside a group, as the lists here do): the Python-3 port's file
order for the ``database``/``results`` dicts, ``np.argsort(...)[::-1]`` for the score and tIoU orders, the per-threshold
GT locks, VOC-2011 interpolation, AP 0 for classes without predictions (the 2018 fix). It is slow on purpose; it is not
used by the package. ``nan_iou_as_zero`` mirrors lofi.evaluation's flag (the official code has none).
"""
import numpy as np

TIOU = np.linspace(0.5, 0.95, 10)


def segment_iou(target_segment, candidate_segments):
    """tIoU of one [start, end] against N x [start, end] (utils.py), NaN for a zero union."""
    tt1 = np.maximum(target_segment[0], candidate_segments[:, 0])
    tt2 = np.minimum(target_segment[1], candidate_segments[:, 1])
    segments_intersection = (tt2 - tt1).clip(0)
    segments_union = (candidate_segments[:, 1] - candidate_segments[:, 0]) \
        + (target_segment[1] - target_segment[0]) - segments_intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return segments_intersection.astype(float) / segments_union


def interpolated_prec_rec(prec, rec):
    """VOC-2011 interpolated AP (utils.py)."""
    mprec = np.hstack([[0], prec, [0]])
    mrec = np.hstack([[0], rec, [1]])
    for i in range(len(mprec) - 1)[::-1]:
        mprec[i] = max(mprec[i], mprec[i + 1])
    idx = np.where(mrec[1::] != mrec[0:-1])[0] + 1
    return np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx])


def import_ground_truth(data, subset, blocked=()):
    """Rows (video, start, end, label index) of the subset and the label index in first-seen order."""
    activity_index, rows = {}, []
    for videoid, v in data["database"].items():
        if subset != v["subset"] or videoid in blocked:
            continue
        for ann in v["annotations"]:
            if ann["label"] not in activity_index:
                activity_index[ann["label"]] = len(activity_index)
            rows.append((videoid, float(ann["segment"][0]), float(ann["segment"][1]), activity_index[ann["label"]]))
    return rows, activity_index


def import_prediction(data, activity_index, blocked=(), with_label=True):
    """Rows (video, start, end, label index or None) and the score column (an array, dtype as pandas infers it)."""
    rows, scores = [], []
    for videoid, v in data["results"].items():
        if videoid in blocked:
            continue
        for result in v:
            label = activity_index[result["label"]] if with_label else None  # KeyError for an unknown label
            rows.append((videoid, float(result["segment"][0]), float(result["segment"][1]), label))
            scores.append(result["score"])
    return rows, np.array(scores)


def compute_average_precision_detection(gt_rows, pred_rows, pred_scores, tiou_thresholds=TIOU, nan_iou_as_zero=False):
    """AP per threshold of one class: gt_rows/pred_rows are (video, start, end) in file order."""
    ap = np.zeros(len(tiou_thresholds))
    if len(pred_rows) == 0:
        return ap
    npos = float(len(gt_rows))
    lock_gt = np.ones((len(tiou_thresholds), len(gt_rows))) * -1
    sort_idx = pred_scores.argsort()[::-1]
    prediction = [pred_rows[i] for i in sort_idx]
    tp = np.zeros((len(tiou_thresholds), len(prediction)))
    fp = np.zeros((len(tiou_thresholds), len(prediction)))
    ground_truth_gbvn = {}
    for index, (video, start, end) in enumerate(gt_rows):
        ground_truth_gbvn.setdefault(video, []).append((index, start, end))
    for idx, (video, start, end) in enumerate(prediction):
        if video not in ground_truth_gbvn:
            fp[:, idx] = 1
            continue
        this_gt = ground_truth_gbvn[video]
        tiou_arr = segment_iou(np.array([start, end]), np.array([[s, e] for _, s, e in this_gt]))
        if nan_iou_as_zero:
            tiou_arr[np.isnan(tiou_arr)] = 0.0
        tiou_sorted_idx = tiou_arr.argsort()[::-1]
        for tidx, tiou_thr in enumerate(tiou_thresholds):
            for jdx in tiou_sorted_idx:
                if tiou_arr[jdx] < tiou_thr:
                    fp[tidx, idx] = 1
                    break
                if lock_gt[tidx, this_gt[jdx][0]] >= 0:
                    continue
                tp[tidx, idx] = 1
                lock_gt[tidx, this_gt[jdx][0]] = idx
                break
            if fp[tidx, idx] == 0 and tp[tidx, idx] == 0:
                fp[tidx, idx] = 1
    tp_cumsum = np.cumsum(tp, axis=1).astype(float)
    fp_cumsum = np.cumsum(fp, axis=1).astype(float)
    recall_cumsum = tp_cumsum / npos
    precision_cumsum = tp_cumsum / (tp_cumsum + fp_cumsum)
    for tidx in range(len(tiou_thresholds)):
        ap[tidx] = interpolated_prec_rec(precision_cumsum[tidx, :], recall_cumsum[tidx, :])
    return ap


def evaluate_detection_official(gt, pred, subset="validation", tiou_thresholds=TIOU, blocked=(), nan_iou_as_zero=False):
    """(ap (T, C), mAP (T,), average_mAP, class names in index order) for GT/prediction dicts."""
    gt_rows, activity_index = import_ground_truth(gt, subset, blocked)
    pred_rows, scores = import_prediction(pred, activity_index, blocked)
    ground_truth_by_label, prediction_by_label = {}, {}  # groupby('label'): file order inside a group
    for v, s, e, c in gt_rows:
        ground_truth_by_label.setdefault(c, []).append((v, s, e))
    for i, (v, s, e, c) in enumerate(pred_rows):
        prediction_by_label.setdefault(c, []).append(i)
    ap = np.zeros((len(tiou_thresholds), len(activity_index)))
    for cidx in activity_index.values():
        keep = prediction_by_label.get(cidx, [])
        p = [pred_rows[i][:3] for i in keep]
        ap[:, cidx] = compute_average_precision_detection(ground_truth_by_label[cidx], p, scores[keep],
                                                          tiou_thresholds, nan_iou_as_zero)
    mAP = ap.mean(axis=1)
    return ap, mAP, mAP.mean(), list(activity_index)


def wrapper_segment_iou(target_segments, candidate_segments):
    """(N candidates, M targets) tIoU matrix (utils.py)."""
    n, m = candidate_segments.shape[0], target_segments.shape[0]
    tiou = np.empty((n, m))
    for i in range(m):
        tiou[:, i] = segment_iou(target_segments[i, :], candidate_segments)
    return tiou


def average_recall_vs_avg_nr_proposals(gt_rows, prop_rows, prop_scores, max_avg_nr_proposals=None,
                                       tiou_thresholds=TIOU):
    """(recall (T, 100), avg_recall (100,), proposals_per_video (100,)) as eval_proposal.py computes them."""
    video_lst = list(dict.fromkeys(v for v, _, _, _ in gt_rows))
    if not max_avg_nr_proposals:
        max_avg_nr_proposals = float(len(prop_rows)) / len(video_lst)
    ratio = max_avg_nr_proposals * float(len(video_lst)) / len(prop_rows)
    gt_by_video, prop_by_video = {}, {}
    for v, s, e, _ in gt_rows:
        gt_by_video.setdefault(v, []).append([s, e])
    for i, (v, s, e, _) in enumerate(prop_rows):
        prop_by_video.setdefault(v, []).append(i)
    score_lst = []
    total_nr_proposals = 0
    for videoid in video_lst:
        this_video_ground_truth = np.array(gt_by_video[videoid])
        if videoid not in prop_by_video:
            score_lst.append(np.zeros((this_video_ground_truth.shape[0], 1)))
            continue
        rows = prop_by_video[videoid]
        this_video_proposals = np.array([[prop_rows[i][1], prop_rows[i][2]] for i in rows])
        sort_idx = prop_scores[rows].argsort()[::-1]
        this_video_proposals = this_video_proposals[sort_idx, :]
        nr_proposals = np.minimum(int(this_video_proposals.shape[0] * ratio), this_video_proposals.shape[0])
        total_nr_proposals += nr_proposals
        this_video_proposals = this_video_proposals[:nr_proposals, :]
        score_lst.append(wrapper_segment_iou(this_video_proposals, this_video_ground_truth))
    pcn_lst = np.arange(1, 101) / 100.0 * (max_avg_nr_proposals * float(len(video_lst)) / total_nr_proposals)
    matches = np.empty((len(video_lst), pcn_lst.shape[0]))
    positives = np.empty(len(video_lst))
    recall = np.empty((len(tiou_thresholds), pcn_lst.shape[0]))
    for ridx, tiou in enumerate(tiou_thresholds):
        for i, score in enumerate(score_lst):
            positives[i] = score.shape[0]
            true_positives_tiou = score >= tiou
            pcn_proposals = np.minimum((score.shape[1] * pcn_lst).astype(int), score.shape[1])
            for j, nr_proposals in enumerate(pcn_proposals):
                matches[i, j] = np.count_nonzero((true_positives_tiou[:, :nr_proposals]).sum(axis=1))
        recall[ridx, :] = matches.sum(axis=0) / positives.sum()
    avg_recall = recall.mean(axis=0)
    proposals_per_video = pcn_lst * (float(total_nr_proposals) / len(video_lst))
    return recall, avg_recall, proposals_per_video


def evaluate_proposals_official(gt, proposals, subset="validation", max_avg_nr_proposals=100, tiou_thresholds=TIOU,
                                blocked=()):
    """(recall, avg_recall, proposals_per_video, normalized AUC) for GT/proposal dicts."""
    gt_rows, _ = import_ground_truth(gt, subset, blocked)
    prop_rows, scores = import_prediction(proposals, None, blocked, with_label=False)
    recall, avg_recall, ppv = average_recall_vs_avg_nr_proposals(gt_rows, prop_rows, scores, max_avg_nr_proposals,
                                                                 tiou_thresholds)
    return recall, avg_recall, ppv, float(np.trapezoid(avg_recall, ppv)) / ppv[-1]
