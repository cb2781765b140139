"""G-TAD's protocol options in the head stage: model selection by validation loss or average mAP (both reported),
and the time base of external features from G-TAD's video_info CSV."""
import json

import numpy as np
import pytest
import torch

from lofi.config import load_config
from lofi.stages import features, head as head_stage
from lofi.stages.base import Context
from lofi.engine.distributed import DistInfo
from lofi.engine.feature_cache import load_external, read_video_info
from lofi.engine.logger import RunLogger
from lofi.models import build_targets


def write_external(tmp_path, videos):
    """videos: {id: (subset, duration, [(start, end)])} → (features dir of (T=12, C=8) .npy, ActivityNet JSON)."""
    feats = tmp_path / "npy"
    feats.mkdir()
    g = np.random.default_rng(0)
    database = {}
    for vid, (subset, duration, segs) in videos.items():
        np.save(feats / f"v_{vid}.npy", g.standard_normal((12, 8)).astype(np.float32))
        database[vid] = {"subset": subset, "duration": duration,
                         "annotations": [{"segment": list(s), "label": "jump"} for s in segs]}
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"database": database}))
    return feats, gt


# Scripted validation metrics per (lr, epoch): the lowest loss is lr 2e-3 at epoch 3, the best mAP lr 1e-3 at epoch 2.
SCRIPT = {(1e-3, 1): (0.9, 0.30), (1e-3, 2): (0.5, 0.45), (1e-3, 3): (0.6, 0.20),
          (2e-3, 1): (0.8, 0.25), (2e-3, 2): (0.7, 0.35), (2e-3, 3): (0.4, 0.05)}


@pytest.mark.parametrize("select, lr, epoch", [("val_loss", 2e-3, 3), ("val_map", 1e-3, 2)])
def test_head_select_by_val_loss_or_map_reports_both(tmp_path, monkeypatch, select, lr, epoch):
    videos = {f"t{i}": ("training", 30.0, [(3.0 * i, 3.0 * i + 10.0)]) for i in range(4)}
    videos.update({f"v{i}": ("validation", 30.0, [(5.0, 20.0)]) for i in range(2)})
    feats, gt = write_external(tmp_path, videos)
    cfg = load_config(None, [f"work_dir={tmp_path / 'w'}", f"head.features={feats}", f"head.annotations={gt}",
                             "head.epochs=3", "head.batch_size=2", "head.lr_search=[1e-3, 2e-3]", f"head.select={select}",
                             "fidelity.L=8", "stages=[head]", "log.tensorboard=false", "log.progress=false"],
                      check_paths=False)
    calls = []

    def scripted_score(ctx, result, gt):
        current_lr = [1e-3, 2e-3][len(calls) // 3]
        calls.append(result)
        loss, average_map = SCRIPT[(current_lr, (len(calls) - 1) % 3 + 1)]
        return {"average_mAP": average_map, "mAP": [average_map], "val_loss": loss}

    monkeypatch.setattr(head_stage, "score", scripted_score)
    log = RunLogger(cfg.run_dir, tensorboard=False, progress=False)
    path = head_stage.run(Context(cfg, DistInfo(), log, stage="head"))
    log.close()
    assert len(calls) == 6 and all(set(r["detections"]) == {"v0", "v1"} for r in calls)
    head = json.loads((cfg.run_dir / "metrics.json").read_text())["head"]
    assert head["picks"]["val_loss"] == {"lr": 2e-3, "epoch": 3, "val_loss": 0.4, "val_average_mAP": 0.05}
    assert head["picks"]["val_map"] == {"lr": 1e-3, "epoch": 2, "val_loss": 0.5, "val_average_mAP": 0.45}
    assert (head["select"], head["lr"], head["epoch"]) == (select, lr, epoch)
    assert head["lr_search"]["0.001"]["val_loss"]["epoch"] == 2 and head["lr_search"]["0.002"]["val_map"]["epoch"] == 2
    # The model is the picked epoch's best.pt, and the log names both picks.
    best = torch.load(cfg.run_dir / "head" / f"lr{lr:g}" / "best.pt", weights_only=False)
    assert best["position"]["epoch"] == epoch
    bundle = torch.load(path, weights_only=False)
    assert (bundle["lr"], bundle["epoch"], bundle["select"]) == (lr, epoch, select)
    assert all(torch.equal(bundle["head"][k], best["models"]["model"][k]) for k in bundle["head"])
    other = "val_map" if select == "val_loss" else "val_loss"
    text = (cfg.run_dir / "log.jsonl").read_text()
    assert f"selected by {select}: lr {lr:g}, epoch {epoch}" in text and f"{other} would pick" in text


def test_video_info_time_base_gives_gtad_labels(tmp_path):
    # A 100 s video of 3000 frames whose features cover featureFrame = 2400 frames: G-TAD's time base is
    # 100 · 2400 / 3000 = 80 s, so the GT [20, 60] s is [0.25, 0.75] of the features (not [0.2, 0.6]).
    feats, gt = write_external(tmp_path, {"abc": ("training", 100.0, [(20.0, 60.0)])})
    info = tmp_path / "video_info_new.csv"
    info.write_text("video,numFrame,seconds,fps,rfps,subset,featureFrame\n"
                    "v_abc,3000,100.0,30.0,30,training,2400\nv_other,100,4.0,25.0,25,validation,96\n")
    assert read_video_info(info) == {"v_abc": 80.0, "v_other": pytest.approx(3.84)}
    metas = {"abc": features.annotation_metas(load_config(None, [f"head.features={feats}", f"head.annotations={gt}"],
                                                        check_paths=False))["abc"]}
    L = 8
    _, meta = load_external(feats, metas, L, video_info=info)["abc"]
    assert meta["duration"] == 100.0 and meta["feature_duration"] == 80.0
    assert meta["snippet_times"] == [5.0 * (2 * k + 1) for k in range(L)]  # 10 s snippets over the 80 s
    t = build_targets([meta], L)
    # G-TAD's labels: the proposal of snippets 2..5 ([0.25, 0.75]) has IoU 1; a boundary at x snippets is positive
    # at j iff x ∈ (j − 1, j + 2): start x = 2 → {1, 2}, end x = 6 → {5, 6}.
    assert t["iou_map"][0, 3, 2] == 1.0 and (t["iou_map"][0] == 1.0).sum() == 1
    assert (t["start"][0] > 0.5).nonzero().flatten().tolist() == [1, 2]
    assert (t["end"][0] > 0.5).nonzero().flatten().tolist() == [5, 6]
    plain = build_targets([load_external(feats, metas, L)["abc"][1]], L)  # the annotated duration: other labels
    assert (plain["start"][0] > 0.5).nonzero().flatten().tolist() == [0, 1, 2]
    assert (plain["end"][0] > 0.5).nonzero().flatten().tolist() == [3, 4, 5]


def test_video_info_errors_name_file_video_and_field(tmp_path):
    feats, gt = write_external(tmp_path, {"abc": ("training", 100.0, [])})
    metas = {"abc": {"id": "abc", "duration": 100.0, "annotations": []}}
    bad = tmp_path / "bad.csv"
    bad.write_text("video,numFrame,seconds\nv_abc,3000,100\n")
    with pytest.raises(ValueError, match=r"bad.csv has no column\(s\) \['featureFrame'\]"):
        read_video_info(bad)
    bad.write_text("video,numFrame,seconds,featureFrame\nv_abc,0,100,2400\n")
    with pytest.raises(ValueError, match="bad.csv line 2, video 'v_abc': numFrame must be a positive number"):
        read_video_info(bad)
    bad.write_text("video,numFrame,seconds,featureFrame\nv_xyz,3000,100,2400\n")
    with pytest.raises(KeyError, match=r"no row for 1 video\(s\): \['abc'\]"):
        load_external(feats, metas, 8, video_info=bad)
