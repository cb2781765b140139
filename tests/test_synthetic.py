"""lofi.data.synthetic: determinism, instance statistics, motion-only classes, the shifted clip set, the CLI."""
import dataclasses
import json
import pathlib
import subprocess
import sys

import numpy as np
import webdataset as wds
import pytest

from lofi.data import synthetic as S
from lofi.data.annotations import load_annotations

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(num_videos=3, num_classes=4, size=(32, 48), length=(2.0, 3.0), num_clips=4, clip_length=(1.0, 1.2))


def files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(pathlib.Path(root).rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_whatever_the_workers(tmp_path, seed):
    one = S.make_synthetic(tmp_path / "a", seed=seed, workers=1, progress=False, **TINY)
    S.make_synthetic(tmp_path / "b", seed=seed, workers=2, progress=False, **TINY)
    S.make_synthetic(tmp_path / "c", seed=seed + 1, workers=1, progress=False, **TINY)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert len(a) == 3 + 4 + 2 and a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a if k.suffix == ".mp4")
    ann = load_annotations(one["annotations"])  # ready for make_shards
    assert [r.subset for r in ann.records].count("validation") == round(3 * 0.25)
    clips = load_annotations(one["clip_list"], "clips")
    classes = dataclasses.replace(S.SYNTHETIC_PRESETS["demo"], **TINY).classes
    assert [r.label for r in clips.records] == classes and clips.classes == ann.classes == classes
    assert [(r.id, r.clip) for r in clips.records] == [(f"clip_{i:05d}", None) for i in range(4)]


def instance_stats(cfg, n):
    specs = [S.video_spec(cfg, i) for i in range(n)]
    for spec in specs:
        duration = spec["num_frames"] / cfg.fps
        inst = spec["instances"]
        assert cfg.instances[0] <= len(inst) <= cfg.instances[1]
        for (s, e, label), nxt in zip(inst, inst[1:] + [None]):
            assert 0 <= s < e <= duration and label in cfg.classes
            assert s * cfg.fps == pytest.approx(round(s * cfg.fps)) and e * cfg.fps == pytest.approx(round(e * cfg.fps))
            tol = 1.5 / cfg.fps / duration
            assert cfg.instance_fraction[0] - tol <= (e - s) / duration <= cfg.instance_fraction[1] + tol
            if nxt is not None:
                assert nxt[0] - e >= min(1.0, 0.05 * duration) - 1 / cfg.fps  # separable from the next one
    return specs


def test_instance_counts_and_durations():
    cfg = S.SYNTHETIC_PRESETS["demo"]
    specs = instance_stats(cfg, 150)
    counts = [len(s["instances"]) for s in specs]
    assert set(counts) == {1, 2, 3}
    fractions = [(e - s) * cfg.fps / spec["num_frames"] for spec in specs for s, e, _ in spec["instances"]]
    assert min(fractions) < 0.1 and max(fractions) > 0.6  # the 5-80% range is used
    assert {label for spec in specs for *_, label in spec["instances"]} == set(cfg.classes)
    lengths = [spec["num_frames"] / cfg.fps for spec in specs]
    assert cfg.length[0] <= min(lengths) and max(lengths) <= cfg.length[1]
    instance_stats(dataclasses.replace(cfg, instances=(3, 3), instance_fraction=(0.1, 0.3), length=(5, 6)), 40)


def test_actor_is_there_before_and_after_and_never_jumps():
    cfg = dataclasses.replace(S.SYNTHETIC_PRESETS["demo"], num_classes=len(S.CLASSES))
    h, w = cfg.size
    for i in range(60):
        spec = S.video_spec(cfg, i)
        paths, half = spec["paths"], spec["look"]["half"]
        assert len(paths) >= 1 + cfg.distractors[0]
        step = np.linalg.norm(np.diff(paths, axis=1), axis=-1)  # px per frame
        travel = np.zeros(spec["num_frames"] - 1, bool)
        for s, e, label in spec["instances"]:
            if label in ("rise", "fall"):  # wrap-around: the actor leaves on one side and comes back on the other
                travel[int(round(s * cfg.fps)):int(round(e * cfg.fps))] = True
        assert step[0][~travel].max() < 0.15 * min(cfg.size)
        assert step[1:].max() < 0.1 * min(cfg.size)
        on_screen = (paths[..., 0] >= -half) & (paths[..., 0] <= w + half) & (paths[..., 1] >= -half) & \
            (paths[..., 1] <= h + half)
        assert on_screen[1:].all() and on_screen[0][~np.r_[travel, False]].all()


def single_frame_features(frame):
    f = frame.astype(np.float32)
    hist = np.histogram(f.mean(2), bins=8, range=(0, 255))[0] / f[..., 0].size
    return np.concatenate([f.mean((0, 1)), f.std((0, 1)), hist])


def motion_features(path):
    v = np.diff(path, axis=0)
    return np.concatenate([np.abs(np.fft.rfft(v[:, 0], n=32)), np.abs(np.fft.rfft(v[:, 1], n=32)),
                           np.abs(v).mean(0), v.mean(0)])


def nearest_centroid_accuracy(x, y):
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    train = np.arange(len(y)) % 3 != 0
    centroids = np.stack([x[train & (y == c)].mean(0) for c in np.unique(y)])
    pred = np.unique(y)[np.argmin(((x[~train, None] - centroids[None]) ** 2).sum(-1), 1)]
    return (pred == y[~train]).mean()


def test_class_is_in_the_motion_not_in_a_frame():
    cfg = dataclasses.replace(S.SYNTHETIC_PRESETS["demo"], size=(48, 64), num_classes=8, num_clips=240, clip_length=(1.0, 1.4))
    frames, motion, labels = [], [], []
    for i in range(cfg.num_clips):
        spec = S.clip_spec(cfg, i)
        rendered = list(S.render(spec, cfg))
        frames.append(single_frame_features(rendered[len(rendered) // 2]))
        motion.append(motion_features(spec["paths"][0]))
        labels.append(cfg.classes.index(spec["label"]))
    labels = np.array(labels)
    assert np.bincount(labels).tolist() == [30] * 8  # balanced, no background class
    chance = 1 / 8
    assert nearest_centroid_accuracy(np.array(frames), labels) < chance + 0.12  # 80 test frames: chance level
    assert nearest_centroid_accuracy(np.array(motion), labels) > 0.6  # the actor's motion gives the class


def test_a_frame_does_not_tell_action_from_background():
    cfg = dataclasses.replace(S.SYNTHETIC_PRESETS["demo"], size=(48, 64), length=(8.0, 12.0))
    feats, inside = [], []
    for i in range(40):
        spec = S.video_spec(cfg, i)
        active = np.zeros(spec["num_frames"], bool)
        for s, e, _ in spec["instances"]:
            active[int(round(s * cfg.fps)):int(round(e * cfg.fps))] = True
        for f, frame in enumerate(S.render(spec, cfg)):
            if f % 9 == 0:
                feats.append(single_frame_features(frame))
                inside.append(active[f])
    inside = np.array(inside)
    accuracy = nearest_centroid_accuracy(np.array(feats), inside.astype(int))
    assert accuracy < max(inside.mean(), 1 - inside.mean()) + 0.1  # no better than always guessing the majority


def test_rendered_objects_follow_their_paths():
    cfg = dataclasses.replace(S.SYNTHETIC_PRESETS["demo"], size=(64, 80))
    spec = S.video_spec(cfg, 5)
    frames = np.stack(list(S.render(spec, cfg))).astype(np.float32)
    assert frames.shape == (spec["num_frames"], 64, 80, 3)
    colour = spec["look"]["colour"]
    hits = total = 0
    for paths in spec["paths"]:
        for f in range(0, spec["num_frames"], 5):
            x, y = np.round(paths[f]).astype(int)
            if 0 <= x < 80 and 0 <= y < 64:
                total += 1
                hits += np.abs(frames[f, y, x] - colour).max() < 3
    assert hits / total > 0.9  # misses: objects overlapping each other


def test_clip_set_comes_from_a_shifted_distribution():
    cfg = S.SYNTHETIC_PRESETS["demo"]
    videos = [S.video_spec(cfg, i)["look"] for i in range(40)]
    clips = [S.clip_spec(cfg, i)["look"] for i in range(40)]

    def palette_index(colour, palette):
        return np.argmin(np.abs(colour / colour.max() - palette / palette.max(1, keepdims=True)).sum(1))

    for look in videos:
        assert look["background"] == "texture"
        assert np.allclose(look["colour"] / S.WARM[palette_index(look["colour"], S.WARM)],
                           look["colour"][0] / S.WARM[palette_index(look["colour"], S.WARM)][0])
    for look in clips:
        assert look["background"] == "stripes"
        assert np.allclose(look["colour"] / S.COOL[palette_index(look["colour"], S.COOL)],
                           look["colour"][0] / S.COOL[palette_index(look["colour"], S.COOL)][0])
    assert max(v["half"] for v in videos) < min(c["half"] for c in clips)  # larger objects
    splits = [S.clip_spec(cfg, i)["split"] for i in range(cfg.num_clips)]
    assert splits.count("val") == round(cfg.num_clips * cfg.clip_validation_fraction)


def test_presets_and_validation():
    demo, bench = S.SYNTHETIC_PRESETS["demo"], S.SYNTHETIC_PRESETS["bench"]
    assert demo.num_videos == 40 and demo.fps == 15 and 128 <= min(demo.size) <= 160 and demo.length == (20, 40)
    assert bench.num_videos > demo.num_videos and bench.num_classes > demo.num_classes
    for bad in (dict(num_classes=len(S.CLASSES) + 1), dict(size=(33, 48)), dict(instances=(0, 2)),
                dict(instance_fraction=(0.4, 0.8))):
        with pytest.raises(ValueError):
            dataclasses.replace(demo, **bad)
    for name, (kind, freq, amp) in S.CLASSES.items():  # every pattern starts where the actor stands
        offsets = S.pattern(kind, np.linspace(0, 3, 46), freq * 100 if kind in ("rise", "fall") else freq, 20.0,
                            (1.0, -1.0))
        assert np.allclose(offsets[0], 0) and np.abs(offsets).max() > 5, name


def test_cli_generates_and_packs(tmp_path):
    out, shards = tmp_path / "syn", tmp_path / "shards" / "syn"
    run = subprocess.run([sys.executable, str(REPO / "tools" / "make_synthetic.py"), "--out", str(out),
                          "--shards", str(shards), "--num-videos", "4", "--num-clips", "6", "--size", "32", "48",
                          "--length", "2", "3", "--workers", "1", "--quiet"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    tal = json.loads((shards / "manifest.json").read_text())
    clips = json.loads((tmp_path / "shards" / "syn-clips" / "manifest.json").read_text())
    assert {k: v["num_samples"] for k, v in tal["splits"].items()} == {"training": 3, "validation": 1}
    assert sum(v["num_samples"] for v in clips["splits"].values()) == 6 and clips["classes"] == tal["classes"]
    assert tal["short_side"] == 32 and not tal["skipped"] and not clips["skipped"]
    for tar in sorted((tmp_path / "shards" / "syn-clips").glob("*.tar")):
        for sample in wds.WebDataset(str(tar), shardshuffle=False):
            info = json.loads(sample["json"])
            assert clips["classes"][info["label_id"]] == info["label"] and info["clip"] is None
            assert info["annotations"] == [{"segment": [0.0, info["duration"]], "label": info["label"],
                                            "label_id": info["label_id"]}]
            assert sample["mp4"] == (out / "clips" / f"{info['id']}.mp4").read_bytes()  # conforming: copied
