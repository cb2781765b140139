"""lofi.evaluation and the lofi.eval CLI: hand-computed cases, the real v1.3 GT, and agreement to 1e-9 with the loop
transcription of the official ActivityNet code (tests/official_anet_eval.py) on random inputs."""
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

import official_anet_eval as official
from lofi import eval as cli
from lofi.evaluation import EvaluationWarning, evaluate_detection, evaluate_proposals

TIOU = np.linspace(0.5, 0.95, 10)


def det(label, score, segment):
    return {"label": label, "score": score, "segment": segment}


def gt_of(videos: dict, subset="validation") -> dict:
    """GT dict from {video: [(label, [start, end]), ...]}."""
    return {"version": "test", "taxonomy": [], "database": {
        v: {"subset": subset, "duration": 100.0, "annotations": [{"label": l, "segment": s} for l, s in anns]}
        for v, anns in videos.items()}}


def results(videos: dict) -> dict:
    return {"version": "test", "results": videos, "external_data": {}}


def assert_matches_official(gt, pred, **kw):
    """Per-class AP, mAP and average mAP of lofi.evaluation equal the loop oracle's to 1e-9."""
    ap, mAP, average, classes = official.evaluate_detection_official(gt, pred, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvaluationWarning)
        ours = evaluate_detection(gt, pred, **kw)
    assert list(ours["per_class_AP"]) == classes
    np.testing.assert_allclose(np.array(list(ours["per_class_AP"].values())).T, ap, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours["mAP"], mAP, rtol=0, atol=1e-9)
    assert abs(ours["average_mAP"] - average) <= 1e-9
    return ours


# ---------------------------------------------------------------------------------------------------------------
# The real v1.3 GT


@pytest.fixture(scope="module")
def anet(shared_data):
    with open(shared_data / "activitynet" / "activity_net_v1-3_gt.json") as f:
        return json.load(f)


def validation(anet):
    return {v: e for v, e in anet["database"].items() if e["subset"] == "validation"}


def test_predictions_equal_to_gt_give_map_1(anet):
    # Zero-length GTs (three in validation) are matched by their zero-length copies only through the official 0/0 = NaN.
    zero = {(v, a["label"]) for v, e in validation(anet).items() for a in e["annotations"]
            if a["segment"][0] == a["segment"][1]}
    assert len(zero) == 3
    pred = results({v: [det(a["label"], 0.5 if a["segment"][0] == a["segment"][1] else 1.0, a["segment"])
                        for a in e["annotations"]] for v, e in validation(anet).items()})
    result = evaluate_detection(anet, pred)
    assert result["tiou_thresholds"] == TIOU.tolist()
    assert result["mAP"] == [1.0] * 10 and result["average_mAP"] == 1.0
    assert len(result["per_class_AP"]) == 200
    # With the flag each of those pairs is a miss, ranked last: AP = (n - 1) / n for its class, 1 elsewhere.
    flagged = evaluate_detection(anet, pred, nan_iou_as_zero=True)
    counts = {}
    for e in validation(anet).values():
        for a in e["annotations"]:
            counts[a["label"]] = counts.get(a["label"], 0) + 1
    for label, ap in flagged["per_class_AP"].items():
        expected = (counts[label] - 1) / counts[label] if label in {l for _, l in zero} else 1.0
        np.testing.assert_allclose(ap, [expected] * 10, rtol=0, atol=1e-12)


def small_real_gt(anet, seed, num_videos=250):
    """The GT restricted to ``num_videos`` random validation videos (keeps the loop oracle fast)."""
    rng = np.random.default_rng(seed)
    val = validation(anet)
    names = sorted(val)
    keep = [names[i] for i in rng.choice(len(names), num_videos, replace=False)]
    keep += [v for v, e in val.items() if any(a["segment"][0] == a["segment"][1] for a in e["annotations"])]
    return {"database": {v: val[v] for v in dict.fromkeys(keep)}}


def perturbed(gt, seed, per_gt=6, outside=5):
    """Jittered copies of every GT (some relabelled, some zero-length, some inverted), scores rounded to 0.01 so
    that ties occur, plus predictions for videos that are not in the GT."""
    rng = np.random.default_rng(seed)
    classes = sorted({a["label"] for e in gt["database"].values() for a in e["annotations"]})
    out = {}
    for v, e in gt["database"].items():
        dets = []
        for a in e["annotations"]:
            s, t = a["segment"]
            length = max(t - s, 1.0)
            for _ in range(per_gt):
                a0, a1 = s + rng.normal(0, 0.25) * length, t + rng.normal(0, 0.25) * length
                if rng.random() < 0.05:
                    a1 = a0  # zero length
                label = a["label"] if rng.random() < 0.8 else classes[rng.integers(len(classes))]
                dets.append(det(label, round(float(rng.random()), 2), [round(a0, 1), round(a1, 1)]))
        out[v] = dets
    for k in range(outside):
        out[f"not-in-gt-{k}"] = [det(classes[rng.integers(len(classes))], 0.99, [0.0, 10.0])]
    return results(out)


def test_random_perturbations_match_official(anet, seed):
    for k in range(2):
        gt = small_real_gt(anet, seed + k)
        pred = perturbed(gt, seed + k)
        ours = assert_matches_official(gt, pred)
        assert 0.05 < ours["average_mAP"] < 0.95  # a non-trivial case
        assert_matches_official(gt, pred, nan_iou_as_zero=True)
        assert_matches_official(gt, pred, tiou_thresholds=np.array([0.1, 0.3, 0.5, 0.7]))


def test_gt_as_proposals_gives_recall_1(anet):
    pred = results({v: [{"score": 1.0, "segment": a["segment"]} for a in e["annotations"]]
                    for v, e in validation(anet).items()})
    result = evaluate_proposals(anet, pred)
    # All but the three zero-length GTs: here the official code tests tIoU >= t, and 0/0 = NaN fails it.
    num_gt = sum(len(e["annotations"]) for e in validation(anet).values())
    assert result["AR@AN"][100] == (num_gt - 3) / num_gt and result["AUC"] > 0.5
    assert np.all(np.diff(np.array(result["recall"]), axis=1) >= 0)


def test_proposals_match_official(anet, seed):
    gt = small_real_gt(anet, seed, num_videos=150)
    pred = perturbed(gt, seed, per_gt=40, outside=2)
    for max_avg, thr in ((100, TIOU), (5, TIOU), (None, np.array([0.0, 0.3, 0.7]))):
        recall, avg_recall, per_video, auc = official.evaluate_proposals_official(
            gt, pred, max_avg_nr_proposals=max_avg, tiou_thresholds=thr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EvaluationWarning)
            ours = evaluate_proposals(gt, pred, max_avg_nr_proposals=max_avg, tiou_thresholds=thr)
        np.testing.assert_allclose(ours["recall"], recall, rtol=0, atol=1e-9)
        np.testing.assert_allclose(list(ours["AR@AN"].values()), avg_recall, rtol=0, atol=1e-9)
        np.testing.assert_allclose(ours["average_nr_proposals"], per_video, rtol=1e-12)
        assert abs(ours["AUC"] - auc) <= 1e-9 and 0 < auc < 1


# ---------------------------------------------------------------------------------------------------------------
# Hand-computed cases


def test_duplicates_are_false_positives():
    gt = gt_of({"v1": [("A", [0, 10]), ("A", [20, 30])]})
    pred = results({"v1": [det("A", 0.9, [0, 10]), det("A", 0.8, [0, 10]), det("A", 0.7, [20, 30])]})
    # TP, FP (its only overlapping GT is locked), TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    ap = evaluate_detection(gt, pred)["per_class_AP"]["A"]
    np.testing.assert_allclose(ap, [0.5 + 0.5 * 2 / 3] * 10, rtol=0, atol=1e-12)


def test_class_without_predictions_has_ap_0():
    gt = gt_of({"v1": [("A", [0, 10])], "v2": [("B", [5, 9])]})
    result = evaluate_detection(gt, results({"v1": [det("A", 0.3, [0, 10])]}))
    assert list(result["per_class_AP"]) == ["A", "B"]  # first-seen order
    assert result["per_class_AP"]["B"] == [0.0] * 10
    assert result["mAP"] == [0.5] * 10 and result["average_mAP"] == 0.5


def test_score_ties_follow_reversed_argsort():
    gt = gt_of({"v1": [("A", [0, 10])]})
    pred = results({"v1": [det("A", 0.5, [50, 60]), det("A", 0.5, [0, 10])]})  # a miss, then a hit, equal scores
    hit_first = np.argsort(np.array([0.5, 0.5]))[::-1][0] == 1
    expected = 1.0 if hit_first else 0.5  # TP then FP gives AP 1; FP then TP gives precision 1/2 at recall 1
    assert evaluate_detection(gt, pred)["average_mAP"] == expected
    assert_matches_official(gt, pred)


def test_predictions_for_videos_without_gt_are_false_positives():
    gt = gt_of({"v1": [("A", [0, 10])], "v2": [("B", [0, 10])]})
    pred = results({"v1": [det("A", 0.9, [0, 10])], "elsewhere": [det("A", 0.95, [0, 10])],
                    "v2": [det("A", 0.99, [0, 10])]})  # v2 has no GT of class A
    with pytest.warns(EvaluationWarning, match="1 of 3 predicted videos are not in the GT subset"):
        result = evaluate_detection(gt, pred)
    assert result["per_class_AP"]["A"] == [1 / 3] * 10  # FP, FP, TP


def test_descending_tiou_matching_with_locks():
    # p1 [0, 8.2]: tIoU 0.82 with G1 [0, 10], 0.73 with G2 [0, 6]; p2 [0, 9]: 0.9 with G1, 0.67 with G2.
    gt = gt_of({"v": [("A", [0, 10]), ("A", [0, 6])]})
    pred = results({"v": [det("A", 0.9, [0, 8.2]), det("A", 0.8, [0, 9])]})
    # 0.5-0.65: both TP (p2 falls back to G2); 0.7-0.8: p2's G2 is below, FP; 0.85-0.9: p1 FP, p2 takes G1 (0.9 >=
    # linspace's 0.8999999999999999); 0.95: none.
    expected = [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0]
    np.testing.assert_allclose(evaluate_detection(gt, pred)["mAP"], expected, rtol=0, atol=1e-12)
    assert_matches_official(gt, pred)


def test_zero_length_nan_matches_unless_flagged():
    gt = gt_of({"v": [("A", [5, 5]), ("B", [2, 8])]})
    # A zero-length prediction anywhere in the video against the zero-length GT: 0/0 = NaN, a match.
    pred = results({"v": [det("A", 0.9, [3, 3]), det("B", 0.9, [4, 4])]})
    result = evaluate_detection(gt, pred)
    assert result["per_class_AP"] == {"A": [1.0] * 10, "B": [0.0] * 10}  # zero length vs [2, 8] is tIoU 0
    flagged = evaluate_detection(gt, pred, nan_iou_as_zero=True)
    assert flagged["per_class_AP"]["A"] == [0.0] * 10
    assert_matches_official(gt, pred)
    assert_matches_official(gt, pred, nan_iou_as_zero=True)


def lattice_case(seed, max_gt=10, span=10):
    """Small random GT/predictions on an integer grid: many equal tIoUs and scores, duplicate and zero-length or
    inverted segments, GT of other subsets, videos without GT."""
    rng = np.random.default_rng(seed)
    classes = [f"c{k}" for k in range(rng.integers(1, 4))]
    gt = gt_of({f"v{v}": [(classes[rng.integers(len(classes))], [int(s), int(s) + int(rng.integers(-1, 5))])
                          for s in rng.integers(0, span, rng.integers(1, max_gt))] for v in range(rng.integers(1, 6))})
    gt["database"]["other"] = {"subset": "training", "annotations": [{"label": "zz", "segment": [0, 1]}]}
    classes = sorted({a["label"] for v, e in gt["database"].items() if v != "other" for a in e["annotations"]})
    score = (lambda: int(rng.integers(0, 4))) if seed % 2 else (lambda: float(rng.integers(0, 4)) / 4)
    pred = results({f"v{v}": [det(classes[rng.integers(len(classes))], score(),
                                  [int(s), int(s) + int(rng.integers(-1, 6))])
                              for s in rng.integers(0, span, rng.integers(0, 3 * max_gt))]
                    for v in range(len(gt["database"]))})
    return gt, pred


def test_lattice_cases_match_official(seed):
    for k in range(150):
        gt, pred = lattice_case(seed + k)
        for thr in (TIOU, np.array([0.0, 0.2, 0.5])):
            assert_matches_official(gt, pred, tiou_thresholds=thr)
            assert_matches_official(gt, pred, tiou_thresholds=thr, nan_iou_as_zero=True)


@pytest.mark.parametrize("dense_group", [0, 16])
def test_large_groups_match_official(seed, dense_group, monkeypatch):
    # Groups above lofi.evaluation._DENSE_GROUP GTs are paired by an interval join; 0 sends every group through it.
    monkeypatch.setattr("lofi.evaluation._DENSE_GROUP", dense_group)
    for k in range(30):
        gt, pred = lattice_case(seed + k, max_gt=60, span=30)
        for thr in (TIOU, np.array([0.0, 0.2, 0.5])):
            assert_matches_official(gt, pred, tiou_thresholds=thr)
            assert_matches_official(gt, pred, tiou_thresholds=thr, nan_iou_as_zero=True)


def test_blocked_videos_are_dropped(tmp_path):
    gt = gt_of({"v1": [("A", [0, 10])], "v2": [("A", [0, 10])]})
    pred = results({"v1": [det("A", 0.9, [0, 10])], "v2": [det("A", 0.95, [40, 50])]})
    assert evaluate_detection(gt, pred)["average_mAP"] == 0.25  # FP then TP, half the GT found
    (tmp_path / "blocked.json").write_text(json.dumps(["v2"]))
    (tmp_path / "blocked.txt").write_text("v2\n")
    for blocked in (tmp_path / "blocked.json", tmp_path / "blocked.txt", ["v2"]):
        assert evaluate_detection(gt, pred, blocked=blocked)["average_mAP"] == 1.0
    assert_matches_official(gt, pred, blocked={"v2"})


# ---------------------------------------------------------------------------------------------------------------
# Bad input


def test_unknown_labels_are_an_error_unless_ignored():
    gt = gt_of({"v1": [("A", [0, 10])]})
    pred = results({"v1": [det("A", 0.9, [0, 10]), det("Zebra", 0.8, [0, 10]), det("Yak", 0.7, [0, 1])]})
    with pytest.raises(ValueError, match=r"2 predicted label\(s\).*\['Yak', 'Zebra'\].*--ignore-unknown-labels"):
        evaluate_detection(gt, pred)
    with pytest.warns(EvaluationWarning, match="dropped 2 predictions"):
        assert evaluate_detection(gt, pred, ignore_unknown_labels=True)["average_mAP"] == 1.0


@pytest.mark.parametrize("bad, message", [
    ({"label": "A", "segment": [0, 1]}, r"results\['v2'\]\[1\]: missing or malformed field 'score'"),
    ({"label": "A", "score": 0.5, "segment": [0]}, r"results\['v2'\]\[1\]: malformed field 'segment'"),
    ({"label": "A", "score": 0.5, "segment": "0-1"}, r"results\['v2'\]\[1\]: malformed field 'segment'"),
    ({"label": 3, "score": 0.5, "segment": [0, 1]}, r"results\['v2'\]\[1\]: missing or malformed field 'label'"),
    ({"label": ["A"], "score": 0.5, "segment": [0, 1]}, r"results\['v2'\]\[1\]: missing or malformed field 'label'"),
    ({"label": "A", "score": "high", "segment": [0, 1]}, r"results\['v2'\]\[1\]: missing or malformed field 'score'"),
    ({"label": "A", "score": 0.5, "segment": [0, float("nan")]},
     r"video 'v2': field 'segment' \[0.0, nan\] is not finite"),
])
@pytest.mark.filterwarnings("ignore::lofi.evaluation.EvaluationWarning")
def test_malformed_predictions_name_video_and_field(bad, message):
    gt = gt_of({"v1": [("A", [0, 10])]})
    pred = results({"v1": [det("A", 0.9, [0, 10])], "v2": [det("A", 0.9, [0, 10]), bad]})
    with pytest.raises(ValueError, match=message):
        evaluate_detection(gt, pred)


def test_malformed_files_are_named(tmp_path):
    gt = gt_of({"v1": [("A", [0, 10])]})
    with pytest.raises(ValueError, match="missing or malformed field 'results'"):
        evaluate_detection(gt, {"detections": {}})
    with pytest.raises(ValueError, match="missing or malformed field 'database'"):
        evaluate_detection({"results": {}}, results({}))
    broken = gt_of({"v1": [("A", [0, 10])]})
    del broken["database"]["v1"]["annotations"][0]["segment"]
    with pytest.raises(ValueError, match=r"video 'v1': annotations\[0\]: malformed field 'segment'"):
        evaluate_detection(broken, results({}))
    with pytest.raises(ValueError, match="subset 'testing' has no annotated videos"):
        evaluate_detection(gt, results({}), subset="testing")
    path = tmp_path / "pred.json"
    path.write_text('{"results": {')
    with pytest.raises(ValueError, match=f"{path}: not valid JSON"):
        evaluate_detection(gt, path)


def test_inverted_segments_are_reported():
    gt = gt_of({"v1": [("A", [0, 10])]})
    pred = results({"v1": [det("A", 0.9, [0, 10]), det("A", 0.5, [8, 3]), det("A", 0.4, [9, 1])]})
    with pytest.warns(EvaluationWarning, match=r"2 segments end before they start.*\('v1', \[8.0, 3.0\]\)"):
        evaluate_detection(gt, pred)


# ---------------------------------------------------------------------------------------------------------------
# CLI


def write_case(tmp_path):
    gt, pred = lattice_case(7)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    return gt, pred, str(tmp_path / "gt.json"), str(tmp_path / "pred.json")


@pytest.mark.filterwarnings("ignore::lofi.evaluation.EvaluationWarning")
def test_cli_json_round_trip(tmp_path, capsys):
    gt, pred, gt_path, pred_path = write_case(tmp_path)
    assert cli.main(["--gt", gt_path, "--pred", pred_path, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(evaluate_detection(gt, pred)))
    assert set(printed) == {"tiou_thresholds", "mAP", "average_mAP", "per_class_AP"}
    assert cli.main(["--gt", gt_path, "--pred", pred_path, "--json", "--tiou", "0.3:0.7:5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["tiou_thresholds"] == np.linspace(0.3, 0.7, 5).tolist()
    assert printed == json.loads(json.dumps(evaluate_detection(gt, pred, tiou_thresholds=np.linspace(0.3, 0.7, 5))))
    assert cli.main(["--gt", gt_path, "--pred", pred_path, "--json", "--proposals", "--tiou", "0.5,0.75"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["tiou_thresholds"] == [0.5, 0.75] and set(printed["AR@AN"]) == {str(k) for k in range(1, 101)}


@pytest.mark.filterwarnings("ignore::lofi.evaluation.EvaluationWarning")
def test_cli_table_and_errors(tmp_path):
    gt, pred, gt_path, pred_path = write_case(tmp_path)
    run = subprocess.run([sys.executable, "-m", "lofi.eval", "--gt", gt_path, "--pred", pred_path],
                         capture_output=True, text=True, check=True)
    assert "mAP (%)" in run.stdout and f"{100 * evaluate_detection(gt, pred)['average_mAP']:6.2f}" in run.stdout
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(results({"v0": [det("no-such-class", 1.0, [0, 1])]})))
    assert cli.main(["--gt", gt_path, "--pred", str(bad)]) == 2
    assert cli.main(["--gt", gt_path, "--pred", str(bad), "--ignore-unknown-labels"]) == 0
