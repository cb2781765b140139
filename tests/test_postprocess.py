"""Post-processing: the proposal map's boundary filter and candidates, batched soft-NMS, seconds, class fusion, and
the targets → maps → segments round trip."""
import json
import math

import pytest
import torch

from lofi.atomic import write_json
from lofi.config import PostprocessConfig
from lofi.models import build_targets
from lofi.models.map_head import ProposalMapHead
from lofi.models.proposal_map import boundary_candidates
from lofi.postprocess import detect as detect_with, load_cuhk, result_json

CLASSES = ["jump", "run", "swim", "throw"]
MAP_HEAD = ProposalMapHead()


def detect(pred, meta, class_scores=None, classes=None, **pp):
    """The post-processing of a map head's outputs under a postprocess section with ``pp``'s keys."""
    return detect_with(MAP_HEAD, pred, meta, PostprocessConfig(**pp), class_scores=class_scores, classes=classes)


def iou(a, b):
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / (a[1] - a[0] + b[1] - b[0] - inter)


def perfect_pred(meta, L):
    t = build_targets(meta, L)
    return {"start": t["start"], "end": t["end"], "maps": torch.stack([t["iou_map"], t["iou_map"]], 1)}


META = [
    {"id": "vidA", "duration": 120.0, "annotations": [{"segment": [10.3, 40.9], "label": "run"},
                                                       {"segment": [70.2, 120.0], "label": "run"}]},
    {"id": "vidB", "duration": 33.3, "annotations": [{"segment": [0.0, 12.5], "label": "swim"}]},
]


@pytest.mark.parametrize("L", [25, 50, 100])
def test_round_trip_recovers_ground_truth(L):
    out = detect(perfect_pred(META, L), META, top_k=100)
    for m in META:
        props = out["proposals"][m["id"]]
        assert 0 < len(props) <= 100
        assert all(0 <= p["segment"][0] <= p["segment"][1] <= m["duration"] for p in props)
        assert [p["score"] for p in props] == sorted((p["score"] for p in props), reverse=True)
        top = props[:len(m["annotations"])]
        for ann in m["annotations"]:  # every GT is recovered by one of the top proposals
            assert max(iou(p["segment"], ann["segment"]) for p in top) > 0.9
    # the GT that ends at the video's end is recovered with a proposal ending exactly there
    assert any(p["segment"][1] == 120.0 for p in out["proposals"]["vidA"][:2])
    assert out["detections"] == {} and out["classifier"] is None


def test_boundary_candidates():
    p = torch.tensor([[0.1, 0.3, 0.2, 0.05, 0.04, 0.9, 0.5, 0.6]])
    # peaks at 1, 5, 7 (right edge: larger than its only neighbour); > 0.45 at 5, 6, 7
    assert boundary_candidates(p)[0].nonzero().flatten().tolist() == [1, 5, 6, 7]


def test_candidate_rules_gtad_and_opentad():
    # L = 4. Start candidates {0, 2} (peaks above 0.5·max); end candidates {1, 3} (peak, and the forced last snippet).
    # opentad reads the end at s+d: [0,2] (s0 d1), [0,4] (s0 d3), [2,4] (s2 d1), two of them ending at the video end.
    # gtad reads it at s+d+1 < L: [0,1] (s0 d0), [0,3] (s0 d2), [2,3] (s2 d0), none ending at the video end.
    L = 4
    start = torch.tensor([[0.9, 0.1, 0.8, 0.1]])
    end = torch.tensor([[0.1, 0.9, 0.1, 0.2]])
    maps = torch.zeros(1, 2, L, L)  # [b, channel, d, s]; ch0 regression, ch1 classification
    maps[0, 0] = 1.0
    maps[0, 1] = 0.2  # cells that neither rule keeps
    for (d, s), cls in {(2, 0): 0.9, (0, 0): 0.6, (0, 2): 0.5, (3, 0): 0.7, (1, 0): 0.4, (1, 2): 0.3}.items():
        maps[0, 1, d, s] = cls
    pred = {"start": start, "end": end, "maps": maps}
    meta = [{"id": "v", "duration": 8.0}]  # 2 s per snippet
    # Gaussian soft-NMS with sigma 0.8: the first pick decays a neighbour with IoU 1/3 (gtad) or 1/2 (opentad).
    k3, k2 = math.exp(-(1 / 3) ** 2 / 0.8), math.exp(-0.5 ** 2 / 0.8)
    expected = {"gtad": [([0.0, 6.0], 0.9), ([0.0, 2.0], 0.6 * k3), ([4.0, 6.0], 0.5 * k3)],
                "opentad": [([0.0, 8.0], 0.7), ([0.0, 4.0], 0.4 * k2), ([4.0, 8.0], 0.3 * k2)]}
    for rule, rows in expected.items():
        props = detect(pred, meta, top_k=10, candidates=rule)["proposals"]["v"]
        assert [p["segment"] for p in props] == [seg for seg, _ in rows], rule
        assert [p["score"] for p in props] == pytest.approx([sc for _, sc in rows], rel=1e-6), rule
    assert detect(pred, meta)["proposals"] == detect(pred, meta, candidates="opentad")["proposals"]  # the default
    with pytest.raises(ValueError, match="postprocess.candidates"):
        detect(pred, meta, candidates="bmn")


def test_class_fusion_from_video_classifier():
    L = 50
    probs = torch.tensor([[0.1, 0.6, 0.2, 0.1], [0.05, 0.05, 0.7, 0.2]])
    out = detect(perfect_pred(META, L), META, class_scores=probs, classes=CLASSES, top_k=50)
    assert "VideoClassifier" in out["classifier"]
    for b, m in enumerate(META):
        dets, props = out["detections"][m["id"]], out["proposals"][m["id"]]
        assert len(dets) == 2 * len(props) <= 100
        top2 = [CLASSES[i] for i in probs[b].topk(2).indices]
        assert {d["label"] for d in dets} == set(top2)
        for i, p in enumerate(props):
            for k, label in enumerate(top2):
                d = dets[2 * i + k]
                assert d["label"] == label and d["segment"] == p["segment"]
                assert d["score"] == pytest.approx(p["score"] * probs[b, CLASSES.index(label)].item())


def test_external_cuhk_classifier(tmp_path):
    path = tmp_path / "cuhk.json"
    path.write_text(json.dumps({"class": CLASSES, "results": {"v_vidA": [0.0, 0.1, 0.3, 0.6], "vidB": [1, 0, 0, 0]}}))
    out = detect(perfect_pred(META, 25), META, class_scores=str(path), top_k=10)
    assert str(path) in out["classifier"] and "external" in out["classifier"]
    assert {d["label"] for d in out["detections"]["vidA"]} == {"throw", "swim"}
    assert len(out["detections"]["vidB"]) <= 20
    loaded = load_cuhk(path)
    assert set(loaded["scores"]) == {"vidA", "vidB"}
    with pytest.raises(KeyError, match="vidC"):
        detect(perfect_pred(META, 25), [dict(META[0], id="vidC")], class_scores=loaded)
    path.write_text(json.dumps({"class": CLASSES, "results": {"vidA": [0.1]}}))
    with pytest.raises(ValueError, match="vidA"):
        load_cuhk(path)
    path.write_text(json.dumps({"results": {}}))
    with pytest.raises(ValueError, match="'class'"):
        load_cuhk(path)


def test_bad_class_scores_shape():
    with pytest.raises(ValueError, match="class_scores"):
        detect(perfect_pred(META, 25), META, class_scores=torch.rand(2, 3), classes=CLASSES)


def test_result_json_written_atomically(tmp_path):
    out = detect(perfect_pred(META, 25), META, class_scores=torch.rand(2, 4), classes=CLASSES, top_k=5)
    path = tmp_path / "sub" / "result.json"
    write_json(result_json(out["detections"], out["classifier"]), path)
    data = json.loads(path.read_text())
    assert set(data) == {"version", "results", "external_data"}
    assert data["external_data"]["classifier"] == out["classifier"]
    assert set(data["results"]) == {"vidA", "vidB"}
    assert list(path.parent.iterdir()) == [path]


def test_padding_duplicates_are_left_out():
    meta = META + [dict(META[0], pad=True)]
    pred = perfect_pred(meta, 25)
    pred["maps"][2] = 0  # a padding row must not overwrite vidA's results
    out = detect(pred, meta, class_scores=torch.rand(3, 4), classes=CLASSES, top_k=5)
    assert set(out["proposals"]) == set(out["detections"]) == {"vidA", "vidB"}
    assert out["proposals"]["vidA"][0]["score"] > 0.8


def test_min_duration_drops_short_proposals():
    everything = detect(perfect_pred(META, 25), META, top_k=100)["proposals"]
    long = detect(perfect_pred(META, 25), META, top_k=100, min_duration_s=12.0)["proposals"]
    for vid, props in everything.items():
        assert long[vid] == [p for p in props if p["segment"][1] - p["segment"][0] >= 12.0]
    assert 0 < len(long["vidB"]) < len(everything["vidB"])  # vidB: one proposal of 11.99 s


def test_perfect_maps_and_classes_give_full_map_at_low_tiou():
    from lofi.evaluation import evaluate_detection, evaluate_proposals

    gt = {"database": {m["id"]: {"subset": "validation", "duration": m["duration"], "annotations": m["annotations"]}
                       for m in META}}
    probs = torch.tensor([[0.0, 0.9, 0.1, 0.0], [0.0, 0.1, 0.9, 0.0]])
    out = detect(perfect_pred(META, 100), META, class_scores=probs, classes=CLASSES)
    result = evaluate_detection(gt, result_json(out["detections"], out["classifier"]), tiou_thresholds=[0.5, 0.9])
    assert result["mAP"] == [1.0, 1.0]
    ar = evaluate_proposals(gt, result_json(out["proposals"], None))
    assert ar["AUC"] > 0.9
