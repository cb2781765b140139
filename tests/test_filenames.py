"""Video ids from shards and annotation files never name a file outside its folder: lofi.filenames, the .npy export of
lofi.feature_export (tools/extract_features.py --npy) and the external-feature reader."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lofi.data.packing import sample_key
from lofi.engine.feature_cache import load_external
from lofi.feature_export import export_npy
from lofi.filenames import video_path, video_stem

HOSTILE = ["../x", "../../etc/passwd", "/tmp/abs", "a/b", "..", ".", "~user", "c:\\win", "a\x00b", "v_é.mp4"]


@pytest.mark.parametrize("vid", HOSTILE)
def test_stems_are_plain_names(vid, tmp_path):
    stem = video_stem(vid)
    assert stem and set(stem) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
    assert video_path(tmp_path, vid, ".npy") == tmp_path / f"{stem}.npy"
    assert sample_key(vid) == stem  # shard keys use the same function


def test_real_ids_are_unchanged():
    for vid in ("-0AJGvZa2Xo", "v_QOlSCBRmfWY", "video_validation_0000051", "abc_000012_000034"):
        assert video_stem(vid) == vid


@pytest.mark.parametrize("vid", ["", None, 3])
def test_ids_that_name_nothing_are_refused(vid, tmp_path):
    with pytest.raises(ValueError, match="cannot name a file"):
        video_path(tmp_path, vid, ".npy")


def test_a_link_out_of_the_folder_is_refused(tmp_path):
    folder, outside = tmp_path / "out", tmp_path / "elsewhere.npy"
    folder.mkdir()
    (folder / "evil.npy").symlink_to(outside)
    with pytest.raises(ValueError, match=r"video 'evil': .* outside"):
        video_path(folder, "evil", ".npy")


def features(seed, c=3, length=5):
    return torch.randn(c, length, generator=torch.Generator().manual_seed(seed)), {}


def test_npy_export_stays_inside_its_folder(tmp_path):
    out = tmp_path / "deep" / "out"
    entries = {vid: features(k) for k, vid in enumerate(["../escaped", "../../escaped2", str(tmp_path / "abs"), "ok"])}
    export_npy(out, entries)
    # Nothing but the four files inside ``out``.
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    expected = sorted(f"deep/out/{video_stem(vid)}.npy" for vid in entries)
    assert written == expected
    for vid, (x, _) in entries.items():
        np.testing.assert_array_equal(np.load(out / f"{video_stem(vid)}.npy"), x.t().numpy())
    # The head stage reads them back by the same names.
    metas = {vid: {"id": vid, "duration": 10.0} for vid in entries}
    back = load_external(out, metas, L=5)
    for vid, (x, _) in entries.items():
        torch.testing.assert_close(back[vid][0], x)


def test_npy_export_refuses_two_videos_with_one_file(tmp_path):
    with pytest.raises(ValueError, match=r"videos 'a\.b' and 'a_b' would both be written to"):
        export_npy(tmp_path, {"a.b": features(0), "a_b": features(1)})
    assert not list(tmp_path.iterdir())  # checked before anything is written


def test_npy_export_refuses_a_planted_link(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "v1.npy").symlink_to(tmp_path / "victim")
    with pytest.raises(ValueError, match="video 'v1'"):
        export_npy(out, {"v1": features(0)})
    assert not (tmp_path / "victim").exists()


def test_external_features_are_not_read_outside_their_folder(tmp_path):
    folder = tmp_path / "feats"
    folder.mkdir()
    np.save(tmp_path / "secret.npy", np.zeros((4, 3), np.float32))
    with pytest.raises(KeyError, match=r"no features for 1 video\(s\): \['\.\./secret'\]"):
        load_external(folder, {"../secret": {"id": "../secret", "duration": 1.0}}, L=4)


def test_infer_names_its_outputs_by_the_video_stem(tmp_path, monkeypatch, capsys):
    import lofi.infer

    class FixedDetector:  # stands in for the model: main() only names and writes the outputs
        def __init__(self, checkpoint, device):
            pass

        def __call__(self, path, window):
            return {"id": Path(path).stem, "duration": 10.0, "classifier": "fixed",
                    "detections": [{"label": "A", "score": 0.9, "segment": [1.0, 4.0]}], "damaged_windows": []}

    monkeypatch.setattr(lofi.infer, "Detector", FixedDetector)
    (tmp_path / "model.pt").write_bytes(b"")
    video = tmp_path / "my clip..v2.mp4"
    video.write_bytes(b"")
    out = tmp_path / "out"
    assert lofi.infer.main(["--checkpoint", str(tmp_path / "model.pt"), "--video", str(video), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["my_clip__v2.json", "my_clip__v2_timeline.png"]
    assert json.loads((out / "my_clip__v2.json").read_text())["results"] == {
        "my clip..v2": [{"label": "A", "score": 0.9, "segment": [1.0, 4.0]}]}  # the id itself is kept inside
