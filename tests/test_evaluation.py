"""lofi.evaluation and the lofi.eval CLI: the figures the official ActivityNet evaluation code gave for four result
files over the real v1.3 validation GT (to 1e-12), hand-computed cases, properties (permutation invariance, the two
ways of pairing predictions with GTs agree, agreement with lofi.evaluation_loop's per-prediction loop) and bad
input."""
import gzip
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from lofi import eval as cli
from lofi.evaluation import EvaluationWarning, evaluate_detection, evaluate_proposals
from lofi.evaluation_loop import loop_detection

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


def quiet_detection(gt, pred, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvaluationWarning)
        return evaluate_detection(gt, pred, **kw)


def assert_same_result(a, b, atol=0.0):
    assert list(a["per_class_AP"]) == list(b["per_class_AP"])
    np.testing.assert_allclose(np.array(list(a["per_class_AP"].values())), np.array(list(b["per_class_AP"].values())),
                               rtol=0, atol=atol)
    np.testing.assert_allclose(a["mAP"], b["mAP"], rtol=0, atol=atol)


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


VECTORS = ("ties_200videos", "zero_length_300videos", "twenty_classes_all", "noisy_all")


@pytest.fixture(scope="module")
def vectors(shared_data):
    """(folder, expected figures): four result files over the v1.3 validation GT (score ties, zero-length segments,
    20 of 200 classes, noisy predictions for every video) and what the official evaluation code gave for them."""
    folder = shared_data / "activitynet" / "eval_vectors"
    return folder, json.loads((folder / "expected.json").read_text())


@pytest.mark.parametrize("name", VECTORS)
@pytest.mark.parametrize("dense_group", [0, 16, 10**9])
def test_official_figures(anet, vectors, name, dense_group, monkeypatch):
    # Groups above _DENSE_GROUP GTs are paired by an interval join: 0 sends every group through it, 10**9 none.
    monkeypatch.setattr("lofi.evaluation._DENSE_GROUP", dense_group)
    folder, expected = vectors
    want = expected[name]
    got = quiet_detection(anet, folder / f"{name}.json.gz")  # gzipped results are read as they are
    assert got["tiou_thresholds"] == TIOU.tolist()
    np.testing.assert_allclose(want["tiou_thresholds"], TIOU, rtol=0, atol=1e-12)  # stored rounded: 0.9, not 0.8999...
    assert list(got["per_class_AP"]) == list(want["ap"])  # every class of the subset, in GT first-seen order
    np.testing.assert_allclose(np.array(list(got["per_class_AP"].values())), np.array(list(want["ap"].values())),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["mAP"], want["mAP"], rtol=0, atol=1e-12)
    assert abs(got["average_mAP"] - want["average_mAP"]) <= 1e-12


@pytest.mark.parametrize("name", ["ties_200videos", "zero_length_300videos"])
def test_official_figures_at_chosen_thresholds(anet, vectors, name):
    # Thresholds are evaluated independently: any sub-list gives the official figures of its members.
    folder, expected = vectors
    pick = [9, 0, 5]
    got = quiet_detection(anet, folder / f"{name}.json.gz", tiou_thresholds=TIOU[pick])
    want = np.array(list(expected[name]["ap"].values()))[:, pick]
    np.testing.assert_allclose(np.array(list(got["per_class_AP"].values())), want, rtol=0, atol=1e-12)


def test_official_proposal_figures(anet, vectors):
    folder, expected = vectors
    want = expected["noisy_all"]["proposal"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvaluationWarning)
        got = evaluate_proposals(anet, folder / "noisy_all.json.gz", max_avg_nr_proposals=want["max_avg_nr_proposals"])
    np.testing.assert_allclose(list(got["AR@AN"].values()), want["avg_recall"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["average_nr_proposals"], want["proposals_per_video"], rtol=0, atol=1e-12)
    assert abs(100 * got["AUC"] - want["auc"]) <= 1e-10  # the official figure is in percent


def test_plain_gzipped_and_loaded_files_agree(anet, vectors, tmp_path):
    folder, _ = vectors
    with gzip.open(folder / "ties_200videos.json.gz", "rt") as f:
        pred = json.load(f)
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    (tmp_path / "gt.json.gz").write_bytes(gzip.compress(json.dumps(anet).encode()))
    reference = quiet_detection(anet, pred)
    for gt, result in ((anet, tmp_path / "pred.json"), (tmp_path / "gt.json.gz", tmp_path / "pred.json"),
                       (tmp_path / "gt.json.gz", folder / "ties_200videos.json.gz")):
        assert quiet_detection(gt, result) == reference


def test_gt_as_proposals_gives_recall_1(anet):
    pred = results({v: [{"score": 1.0, "segment": a["segment"]} for a in e["annotations"]]
                    for v, e in validation(anet).items()})
    result = evaluate_proposals(anet, pred)
    # All but the three zero-length GTs: here the official code tests tIoU >= t, and 0/0 = NaN fails it.
    num_gt = sum(len(e["annotations"]) for e in validation(anet).values())
    assert result["AR@AN"][100] == (num_gt - 3) / num_gt and result["AUC"] > 0.5
    assert np.all(np.diff(np.array(result["recall"]), axis=1) >= 0)


# ---------------------------------------------------------------------------------------------------------------
# Hand-computed cases


@pytest.mark.parametrize("max_avg", [2, None])  # None: all proposals per video on average, here 2
def test_proposals_hand_computed(max_avg):
    gt = gt_of({"v1": [("A", [0, 10])], "v2": [("B", [20, 30])]})
    pred = results({"v1": [{"score": 0.9, "segment": [50, 60]}, {"score": 0.8, "segment": [0, 10]}],
                    "v2": [{"score": 0.6, "segment": [0, 1]}, {"score": 0.7, "segment": [20, 30]}]})
    result = evaluate_proposals(gt, pred, max_avg_nr_proposals=max_avg)
    # Point k keeps int(2 k / 100) proposals per video: none below k = 50, then v2's hit (its best), at k = 100 both.
    ar = [0.0] * 49 + [0.5] * 50 + [1.0]
    np.testing.assert_allclose(list(result["AR@AN"].values()), ar, rtol=0, atol=1e-15)
    np.testing.assert_allclose(result["average_nr_proposals"], np.arange(1, 101) / 50, rtol=1e-12)
    # Trapezoids of width 0.02: 0.25 (0 -> 0.5), 49 x 0.5, 0.75 (0.5 -> 1): 25.5 x 0.02 = 0.51, over the last AN (2).
    assert abs(result["AUC"] - 0.255) <= 1e-12
    # One proposal per video on average: each keeps its best only (v1's misses); recall 1/2 at the last point.
    one = evaluate_proposals(gt, pred, max_avg_nr_proposals=1)
    assert list(one["AR@AN"].values()) == [0.0] * 99 + [0.5] and abs(one["AUC"] - 0.0025) <= 1e-12


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


def test_zero_length_nan_matches_unless_flagged():
    gt = gt_of({"v": [("A", [5, 5]), ("B", [2, 8])]})
    # A zero-length prediction anywhere in the video against the zero-length GT: 0/0 = NaN, a match.
    pred = results({"v": [det("A", 0.9, [3, 3]), det("B", 0.9, [4, 4])]})
    result = evaluate_detection(gt, pred)
    assert result["per_class_AP"] == {"A": [1.0] * 10, "B": [0.0] * 10}  # zero length vs [2, 8] is tIoU 0
    flagged = evaluate_detection(gt, pred, nan_iou_as_zero=True)
    assert flagged["per_class_AP"]["A"] == [0.0] * 10


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


def test_lattice_cases_agree_with_the_per_prediction_loop(seed):
    # lofi.evaluation_loop.loop_detection runs the same algorithm one prediction at a time.
    for k in range(150):
        gt, pred = lattice_case(seed + k)
        for thr in (TIOU, np.array([0.1, 0.2, 0.5, 1.0])):
            for nan_iou_as_zero in (False, True):
                ours = quiet_detection(gt, pred, tiou_thresholds=thr, nan_iou_as_zero=nan_iou_as_zero)
                ap, classes = loop_detection(gt, pred, tiou_thresholds=thr, nan_iou_as_zero=nan_iou_as_zero)
                assert list(ours["per_class_AP"]) == classes
                np.testing.assert_allclose(np.array(list(ours["per_class_AP"].values())).T, ap, rtol=0, atol=1e-12)


def test_large_groups_pair_as_small_ones(seed, monkeypatch):
    # Groups above lofi.evaluation._DENSE_GROUP GTs are paired by an interval join; 0 sends every group through it,
    # 10**9 none: both give the same result.
    for k in range(30):
        gt, pred = lattice_case(seed + k, max_gt=60, span=30)
        for thr in (TIOU, np.array([0.1, 0.2, 0.5])):
            for nan_iou_as_zero in (False, True):
                got = []
                for dense_group in (0, 10**9):
                    monkeypatch.setattr("lofi.evaluation._DENSE_GROUP", dense_group)
                    got.append(quiet_detection(gt, pred, tiou_thresholds=thr, nan_iou_as_zero=nan_iou_as_zero))
                assert got[0] == got[1]


def test_permutations_with_distinct_scores_change_nothing(seed):
    rng = np.random.default_rng(seed)
    for k in range(40):
        gt, pred = lattice_case(seed + k, max_gt=30)
        count = sum(len(d) for d in pred["results"].values())
        scores = iter(rng.permutation(count) / count)  # distinct: the ranking has no ties
        for dets in pred["results"].values():
            for d in dets:
                d["score"] = float(next(scores))
        reference = quiet_detection(gt, pred)
        for _ in range(3):
            videos = list(pred["results"])
            shuffled = results({v: [pred["results"][v][i] for i in rng.permutation(len(pred["results"][v]))]
                                for v in (videos[i] for i in rng.permutation(len(videos)))})
            order = list(gt["database"])
            gt_shuffled = {"database": {v: gt["database"][v] for v in (order[i] for i in rng.permutation(len(order)))}}
            got = quiet_detection(gt_shuffled, shuffled)
            assert got["mAP"] == pytest.approx(reference["mAP"], abs=1e-12)
            for label, ap in reference["per_class_AP"].items():  # class order follows the GT's, values do not
                assert got["per_class_AP"][label] == pytest.approx(ap, abs=1e-12)


def test_blocked_videos_are_dropped(tmp_path):
    gt = gt_of({"v1": [("A", [0, 10])], "v2": [("A", [0, 10])]})
    pred = results({"v1": [det("A", 0.9, [0, 10])], "v2": [det("A", 0.95, [40, 50])]})
    assert evaluate_detection(gt, pred)["average_mAP"] == 0.25  # FP then TP, half the GT found
    (tmp_path / "blocked.json").write_text(json.dumps(["v2"]))
    (tmp_path / "blocked.txt").write_text("v2\n")
    for blocked in (tmp_path / "blocked.json", tmp_path / "blocked.txt", ["v2"]):
        assert evaluate_detection(gt, pred, blocked=blocked)["average_mAP"] == 1.0
    gt, pred = next(case for case in map(lattice_case, range(100)) if len(case[0]["database"]) >= 4)
    without = {"database": {v: e for v, e in gt["database"].items() if v != "v0"}}
    assert quiet_detection(gt, pred, blocked=["v0"]) == quiet_detection(
        without, results({v: d for v, d in pred["results"].items() if v != "v0"}))


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


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("proposals", [False, True])
def test_non_finite_scores_are_an_error_naming_the_video(bad, proposals, tmp_path):
    gt = gt_of({"v1": [("A", [0, 10])], "v2": [("A", [20, 30])]})
    pred = results({"v1": [det("A", 0.9, [0, 10])], "v2": [det("A", 0.8, [0, 10]), det("A", bad, [50, 60])]})
    evaluate = evaluate_proposals if proposals else evaluate_detection
    with pytest.raises(ValueError, match=rf"video 'v2': field 'score' {bad} is not finite \(1 such scores\)"):
        evaluate(gt, pred)
    # The same as a file: JSON's NaN/Infinity and an overflowing 1e400 (read as inf) are refused, exit status 2.
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    for text in (json.dumps(pred), json.dumps(pred).replace("Infinity", "1e400")):
        (tmp_path / "pred.json").write_text(text)
        with pytest.raises(ValueError, match="video 'v2': field 'score'"):
            evaluate(gt, tmp_path / "pred.json")
        args = ["--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "pred.json")]
        assert cli.main(args + (["--proposals"] if proposals else [])) == 2


def test_a_video_given_twice_is_an_error_naming_it(tmp_path, capsys):
    # JSON readers keep the last of two equal keys: here the second 'v1' would hide a true positive.
    (tmp_path / "gt.json").write_text(json.dumps(gt_of({"v1": [("A", [0, 10])], "v2": [("A", [0, 10])]})))
    one = json.dumps([det("A", 0.9, [0, 10])])
    (tmp_path / "pred.json").write_text(f'{{"results": {{"v1": {one}, "v2": {one}, "v1": []}}}}')
    with pytest.raises(ValueError, match=r"pred.json: 'v1' appears twice in one JSON object"):
        evaluate_detection(tmp_path / "gt.json", tmp_path / "pred.json")
    assert cli.main(["--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "pred.json")]) == 2
    assert "'v1' appears twice" in capsys.readouterr().err
    # In the GT, and for a field of one detection, too.
    (tmp_path / "gt2.json").write_text('{"database": {"v1": {"subset": "validation", "annotations": []}, "v1": {}}}')
    with pytest.raises(ValueError, match=r"gt2.json: 'v1' appears twice"):
        evaluate_detection(tmp_path / "gt2.json", results({}))
    (tmp_path / "pred.json").write_text('{"results": {"v1": [{"label": "A", "score": 0.1, "score": 0.9, '
                                        '"segment": [0, 10]}]}}')
    with pytest.raises(ValueError, match=r"'score' appears twice"):
        evaluate_detection(tmp_path / "gt.json", tmp_path / "pred.json")


@pytest.mark.parametrize("thresholds", [[0.0], [0.5, 0.0], [-0.1], [1.5], [0.5, float("nan")], [], [[0.5]], ["a"]])
def test_thresholds_outside_0_1_are_refused(thresholds):
    gt = gt_of({"v1": [("A", [0, 10])]})
    for evaluate in (evaluate_detection, evaluate_proposals):
        with pytest.raises(ValueError, match=r"tIoU thresholds must be a non-empty list of numbers in \(0, 1\]"):
            evaluate(gt, results({"v1": [det("A", 0.9, [0, 10])]}), tiou_thresholds=thresholds)


@pytest.mark.parametrize("tiou", ["0:0.5:3", "0.5,0", "-0.5", "0.5:1.05:3", "nan", "1.5"])
def test_cli_refuses_thresholds_outside_0_1(tmp_path, tiou, capsys):
    _, _, gt_path, pred_path = write_case(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--gt", gt_path, "--pred", pred_path, f"--tiou={tiou}"])
    assert exit_.value.code == 2 and "argument --tiou" in capsys.readouterr().err


def test_threshold_1_is_an_exact_match():
    gt = gt_of({"v1": [("A", [0, 10]), ("A", [20, 30])]})
    pred = results({"v1": [det("A", 0.9, [0, 10]), det("A", 0.8, [20, 29])]})
    assert evaluate_detection(gt, pred, tiou_thresholds=[1.0])["mAP"] == [0.5]


@pytest.mark.parametrize("text", ["[" * 100000 + "]" * 100000,
                                  '{"results": {"v1": ' + "[" * 100000 + "]" * 100000 + "}}"])
def test_deeply_nested_json_is_a_clear_error(tmp_path, text, capsys):
    gt = gt_of({"v1": [("A", [0, 10])]})
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "deep.json").write_text(text)
    with pytest.raises(ValueError, match="deep.json: JSON nested too deeply"):
        evaluate_detection(gt, tmp_path / "deep.json")
    assert cli.main(["--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "deep.json")]) == 2
    assert "nested too deeply" in capsys.readouterr().err
    assert cli.main(["--gt", str(tmp_path / "deep.json"), "--pred", str(tmp_path / "gt.json")]) == 2
    assert "deep.json: JSON nested too deeply" in capsys.readouterr().err
    args = ["--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "gt.json"), "--blocked", str(tmp_path / "deep.json")]
    assert cli.main(args) == 2
    assert "deep.json: JSON nested too deeply" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::lofi.evaluation.EvaluationWarning")
def test_gzipped_files_are_read_and_broken_ones_named(tmp_path):
    gt, pred = lattice_case(5)
    (tmp_path / "gt.json.gz").write_bytes(gzip.compress(json.dumps(gt).encode()))
    (tmp_path / "pred.json.gz").write_bytes(gzip.compress(json.dumps(pred).encode()))
    assert quiet_detection(tmp_path / "gt.json.gz", tmp_path / "pred.json.gz") == quiet_detection(gt, pred)
    (tmp_path / "cut.json.gz").write_bytes((tmp_path / "pred.json.gz").read_bytes()[:40])
    with pytest.raises(ValueError, match="cut.json.gz: not a valid gzip file"):
        evaluate_detection(gt, tmp_path / "cut.json.gz")
    (tmp_path / "latin1.json").write_bytes(b'{"results": {"caf\xe9": []}}')
    with pytest.raises(ValueError, match="latin1.json: not valid JSON"):
        evaluate_detection(gt, tmp_path / "latin1.json")


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
