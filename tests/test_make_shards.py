"""lofi.data.packing.make_shards and tools/make_shards.py: round trips, metadata, resume, bad input."""
import io
import os
import json
import pathlib
import shutil
import subprocess
import sys

import av
import pytest
import webdataset as wds

from lofi.data import packing
from lofi.data.annotations import AnnotationError, SegmentWarning
from lofi.data.packing import PackingError, make_shards
from lofi.hashing import sha256_file
from lofi.data.synthetic import make_synthetic

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(num_videos=5, num_classes=3, size=(48, 64), length=(3.0, 5.0), num_clips=6, clip_length=(1.0, 1.5))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("syn"), seed=3, workers=1, progress=False, **TINY)


def read_shards(out_dir):
    """{key: (json, mp4 bytes, shard name)} of every sample, read with webdataset as the reader does."""
    samples = {}
    for tar in sorted(pathlib.Path(out_dir).glob("*.tar")):
        for s in wds.WebDataset(str(tar), shardshuffle=False):
            samples[s["__key__"]] = (json.loads(s["json"]), s["mp4"], tar.name)
    return samples


def probe(data):
    """(codec, stream count, frame times, keyframe flags, width, height) of an mp4 in memory."""
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        frames = [(f.time, f.key_frame) for f in c.decode(s)]
        return s.codec_context.name, len(c.streams), [t for t, _ in frames], [k for _, k in frames], s.width, s.height


def remux_faststart(path) -> bytes:
    """``path`` rewritten with its index (moov) before the data, as streaming-friendly mp4s are."""
    out_path = pathlib.Path(path).with_suffix(".faststart.mp4")
    with av.open(str(path)) as src, av.open(str(out_path), "w", options={"movflags": "faststart"}) as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    data = out_path.read_bytes()
    out_path.unlink()
    return data


def check_manifest(out_dir, manifest):
    on_disk = json.loads((pathlib.Path(out_dir) / "manifest.json").read_text())
    assert on_disk == manifest and manifest["complete"]
    tars = sorted(p.name for p in pathlib.Path(out_dir).glob("*.tar"))
    listed = sorted(name for split in manifest["splits"].values() for name in split["shards"])
    assert tars == listed
    samples = read_shards(out_dir)
    for subset, split in manifest["splits"].items():
        assert split["num_samples"] == sum(e["num_samples"] for e in split["shards"].values())
        for name, entry in split["shards"].items():
            assert name.startswith(subset + "-") and sha256_file(pathlib.Path(out_dir) / name) == entry["sha256"]
            assert sorted(k for k, (_, _, n) in samples.items() if n == name) == sorted(entry["keys"])
            assert entry["num_samples"] == len(entry["keys"])
    assert not [p for p in pathlib.Path(out_dir).iterdir() if ".tmp" in p.name]
    return samples


def check_sample(info, data, short_side, fps=15.0):
    codec, n_streams, times, keys, width, height = probe(data)
    assert n_streams == 1  # audio dropped
    assert info["num_frames"] == len(times) and info["fps"] == fps
    assert info["duration"] == pytest.approx(info["num_frames"] / fps)
    assert times == pytest.approx([k / fps for k in range(len(times))], abs=1e-3)  # constant frame rate
    assert (info["width"], info["height"]) == (width, height) and width % 2 == 0 and height % 2 == 0
    assert min(width, height) == short_side
    gop = round(fps)
    key_positions = [i for i, k in enumerate(keys) if k] + [len(keys)]
    assert key_positions[0] == 0 and max(b - a for a, b in zip(key_positions, key_positions[1:])) <= gop
    for a in info["annotations"]:
        assert 0 <= a["segment"][0] < a["segment"][1] <= info["duration"] + 1e-9
    return codec


def test_real_clips_round_trip(shared_data, tmp_path):
    videos = shared_data / "videos"
    ann = {"database": {
        "bikes": {"subset": "training", "duration": 10.0, "annotations": [
            {"segment": [1.0, 4.0], "label": "ride"}, {"segment": [8.0, 12.0], "label": "stop"},
            {"segment": [6.0, 5.0], "label": "ride"}]},
        "bigbuckbunny": {"subset": "validation", "duration": 5.3, "annotations": [
            {"segment": [-0.5, 2.0], "label": "stop"}]},
        "absent": {"subset": "training", "duration": 3.0, "annotations": []}}}
    (tmp_path / "a.json").write_text(json.dumps(ann))
    with pytest.warns(SegmentWarning):
        manifest = make_shards(videos, tmp_path / "a.json", tmp_path / "out", short_side=64, workers=1,
                               progress=False)
    samples = check_manifest(tmp_path / "out", manifest)
    assert manifest["classes"] == ["ride", "stop"]
    assert (manifest["codec"], manifest["fps"], manifest["short_side"]) == ("h264", 15.0, 64)
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"training": 1, "validation": 1}
    assert [(s["video"], s["subset"]) for s in manifest["skipped"]] == [("absent", "training")]
    assert "missing video file" in manifest["skipped"][0]["reason"]
    assert sorted(w["video"] for w in manifest["warnings"]) == ["bigbuckbunny", "bikes", "bikes"]

    bikes, data, _ = samples["bikes"]
    assert check_sample(bikes, data, 64) == "h264"
    assert (bikes["orig_fps"], bikes["orig_duration"], bikes["num_frames"]) == (25.0, pytest.approx(10.0), 150)
    assert bikes["width"] / bikes["height"] == pytest.approx(640 / 272, rel=0.02)
    assert bikes["annotations"] == [{"segment": [1.0, 4.0], "label": "ride", "label_id": 0},
                                    {"segment": [8.0, 10.0], "label": "stop", "label_id": 1}]
    bunny, data, _ = samples["bigbuckbunny"]  # 1280x720 with an audio track
    check_sample(bunny, data, 64)
    assert bunny["orig_fps"] == 25.0 and bunny["num_frames"] == round(bunny["orig_duration"] * 15)
    assert (bunny["width"], bunny["height"]) == (114, 64)
    assert bunny["annotations"] == [{"segment": [0.0, 2.0], "label": "stop", "label_id": 1}]


@pytest.mark.parametrize("codec, decoder", [("vp9", "vp9"), ("mjpeg", "mjpeg")])
def test_codecs(synthetic, tmp_path, codec, decoder):
    manifest = make_shards(synthetic["videos"], synthetic["annotations"], tmp_path / codec, codec=codec,
                           short_side=32, subsets=["validation"], workers=1, progress=False)
    samples = check_manifest(tmp_path / codec, manifest)
    assert manifest["codec"] == codec and len(samples) == 1
    for info, data, _ in samples.values():
        assert check_sample(info, data, 32) == decoder


def test_synthetic_round_trip_copy_and_transcode(synthetic, tmp_path):
    gt = json.loads(synthetic["annotations"].read_text())["database"]
    copied = make_shards(synthetic["videos"], synthetic["annotations"], tmp_path / "copy", short_side=48,
                         shard_size=2, workers=2, progress=False)
    resized = make_shards(synthetic["videos"], synthetic["annotations"], tmp_path / "small", short_side=32,
                          shard_size=2, workers=1, progress=False)
    assert [len(s["shards"]) for s in copied["splits"].values()] == [2, 1]  # 4 training in 2 shards, 1 validation
    for out_dir, manifest, short in ((tmp_path / "copy", copied, 48), (tmp_path / "small", resized, 32)):
        samples = check_manifest(out_dir, manifest)
        assert manifest["classes"] == json.loads(synthetic["annotations"].read_text())["classes"]
        assert sorted(samples) == sorted(gt) and not manifest["skipped"] and not manifest["warnings"]
        for key, (info, data, _) in samples.items():
            check_sample(info, data, short)
            assert info["num_frames"] == gt[key]["num_frames"] and info["subset"] == gt[key]["subset"]
            assert [(a["segment"], a["label"]) for a in info["annotations"]] == \
                [(a["segment"], a["label"]) for a in gt[key]["annotations"]]
            assert all(manifest["classes"][a["label_id"]] == a["label"] for a in info["annotations"])
            if out_dir.name == "copy":  # the source already conforms: stored unchanged
                assert data == (synthetic["videos"] / f"{key}.mp4").read_bytes()


def test_clip_list_cuts_and_labels(synthetic, tmp_path):
    src = synthetic["videos"] / "syn_00000.mp4"
    duration = json.loads(synthetic["annotations"].read_text())["database"]["syn_00000"]["duration"]
    (tmp_path / "videos").mkdir()
    shutil.copy(src, tmp_path / "videos" / "long.mp4")
    shutil.copy(src, tmp_path / "videos" / "v_whole.mp4")  # ActivityNet-style v_ file name
    (tmp_path / "clips.csv").write_text("video,start,end,label,split\nlong,0.5,2.0,jump,train\n"
                                        "long,1,2.9,run,val\nwhole,,,run,train\n")
    manifest = make_shards(tmp_path / "videos", tmp_path / "clips.csv", tmp_path / "out", fmt="clips",
                           short_side=48, workers=1, progress=False)
    samples = check_manifest(tmp_path / "out", manifest)
    assert manifest["classes"] == ["jump", "run"]
    jump = samples["long_000000_000002"][0]
    assert (jump["label"], jump["label_id"], jump["subset"], jump["clip"]) == ("jump", 0, "training", [0.5, 2.0])
    assert jump["num_frames"] == round(1.5 * 15) and jump["orig_duration"] == pytest.approx(1.5)
    assert jump["annotations"] == [{"segment": [0.0, jump["duration"]], "label": "jump", "label_id": 0}]
    run = samples["long_000001_000002"][0]
    assert run["subset"] == "validation" and run["num_frames"] == round(1.9 * 15)
    whole = samples["whole"][0]
    assert whole["clip"] is None and whole["duration"] == pytest.approx(duration)


def test_corrupt_inputs_are_skipped_and_listed(synthetic, shared_data, tmp_path):
    videos = tmp_path / "videos"
    shutil.copytree(synthetic["videos"], videos)
    (videos / "syn_00001.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)  # garbage
    real = (shared_data / "videos" / "bikes.mp4").read_bytes()
    (videos / "syn_00002.mp4").write_bytes(real[:len(real) // 3])  # truncated
    (videos / "syn_00003.mp4").write_text("not a video")
    faststart = remux_faststart(videos / "syn_00004.mp4")  # index first: it opens, then the data ends
    (videos / "syn_00004.mp4").write_bytes(faststart[:len(faststart) // 2])
    manifest = make_shards(videos, synthetic["annotations"], tmp_path / "out", short_side=48, workers=2,
                           progress=False)
    samples = check_manifest(tmp_path / "out", manifest)
    skipped = {s["video"]: s["reason"] for s in manifest["skipped"]}
    assert sorted(skipped) == ["syn_00001", "syn_00002", "syn_00003", "syn_00004"]
    assert "unreadable" in skipped["syn_00001"]
    assert "corrupt" in skipped["syn_00004"] or "truncated" in skipped["syn_00004"]
    assert sorted(samples) == ["syn_00000"]
    assert manifest["splits"]["training"]["num_samples"] == 1
    # the validation shard lost its only video: no (empty) tar, listed as empty, and a re-run keeps it so
    assert "validation" not in manifest["splits"] and list(manifest["empty_shards"]) == ["validation-000000.tar"]
    assert make_shards(videos, synthetic["annotations"], tmp_path / "out", short_side=48, workers=1,
                       progress=False) == manifest
    with pytest.raises(PackingError, match="syn_00001"):
        make_shards(videos, synthetic["annotations"], tmp_path / "strict", short_side=48, workers=1,
                    strict=True, progress=False)
    assert json.loads((tmp_path / "strict" / "manifest.json").read_text())["complete"]
    cli = [sys.executable, str(REPO / "tools" / "make_shards.py"), str(videos), str(synthetic["annotations"]),
           str(tmp_path / "cli"), "--short-side", "48", "--workers", "1", "--quiet"]
    assert subprocess.run(cli, capture_output=True).returncode == 0
    strict = subprocess.run(cli + ["--strict"], capture_output=True, text=True)
    assert strict.returncode == 1 and "syn_00003" in strict.stderr


def test_malformed_annotations_stop_the_run(synthetic, tmp_path):
    bad = json.loads(synthetic["annotations"].read_text())
    bad["database"]["syn_00002"]["annotations"][0]["segment"] = [1.0]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(AnnotationError, match=r"syn_00002.*annotations\[0\]\.segment"):
        make_shards(synthetic["videos"], tmp_path / "bad.json", tmp_path / "out", workers=1, progress=False)
    assert not (tmp_path / "out").exists()
    run = subprocess.run([sys.executable, str(REPO / "tools" / "make_shards.py"), str(synthetic["videos"]),
                          str(tmp_path / "bad.json"), str(tmp_path / "out")], capture_output=True, text=True)
    assert run.returncode == 2 and "syn_00002" in run.stderr and "segment" in run.stderr
    with pytest.raises(ValueError, match="subsets"):
        make_shards(synthetic["videos"], synthetic["annotations"], tmp_path / "out", subsets=["testing"])
    with pytest.raises(ValueError, match="short_side"):
        make_shards(synthetic["videos"], synthetic["annotations"], tmp_path / "out", short_side=33)


def test_resume_after_killed_run(synthetic, tmp_path, monkeypatch):
    out = tmp_path / "out"
    kwargs = dict(short_side=32, shard_size=1, workers=1, progress=False)
    calls = []
    real_task = packing._transcode_task

    def dying_task(task):  # the run is killed while transcoding the third video
        calls.append(task)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_task(task)

    monkeypatch.setattr(packing, "_transcode_task", dying_task)
    with pytest.raises(KeyboardInterrupt):
        make_shards(synthetic["videos"], synthetic["annotations"], out, **kwargs)
    monkeypatch.setattr(packing, "_transcode_task", real_task)
    partial = json.loads((out / "manifest.json").read_text())
    assert not partial["complete"]
    done = {name: e for s in partial["splits"].values() for name, e in s["shards"].items()}
    assert sorted(done) == ["training-000000.tar", "training-000001.tar"]
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(done)  # nothing half-written is left
    assert all(sha256_file(out / n) == e["sha256"] for n, e in done.items())

    # leftovers of a harder kill: a temporary shard, a damaged finished shard
    (out / "training-000002.tar.tmp-12345").write_bytes(b"partial")
    stamp = (out / "training-000000.tar").stat().st_mtime_ns
    with open(out / "training-000001.tar", "r+b") as f:
        f.truncate(1000)
    manifest = make_shards(synthetic["videos"], synthetic["annotations"], out, **kwargs)
    check_manifest(out, manifest)
    assert (out / "training-000000.tar").stat().st_mtime_ns == stamp  # verified shard kept
    assert manifest["splits"]["training"]["shards"]["training-000001.tar"] == done["training-000001.tar"]
    assert sum(s["num_samples"] for s in manifest["splits"].values()) == 5

    # a clean re-run keeps everything; other settings rebuild everything and drop stale shards
    again = make_shards(synthetic["videos"], synthetic["annotations"], out, **kwargs)
    assert again == manifest and (out / "training-000000.tar").stat().st_mtime_ns == stamp
    bigger = make_shards(synthetic["videos"], synthetic["annotations"], out, **{**kwargs, "shard_size": 4})
    check_manifest(out, bigger)
    assert sorted(p.name for p in out.glob("*.tar")) == ["training-000000.tar", "validation-000000.tar"]


def write_levels(path, times, rate):
    """A video whose frame i is flat grey level 8 * i (i < 30), shown from ``times[i]`` seconds."""
    import fractions

    import numpy as np

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.time_base = s.codec_context.time_base = ms = fractions.Fraction(1, 1000)  # ms timestamps
        s.options = {"crf": "0", "bf": "0"}
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 8 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), ms
            c.mux(s.encode(frame))
        c.mux(s.encode())


def levels(data):
    with av.open(io.BytesIO(data)) as c:
        return [round(f.to_ndarray(format="gray").mean() / 8) for f in c.decode(video=0)]


@pytest.mark.parametrize("times", [
    [i / 10 for i in range(30)],  # 10 fps → 15 fps: frames repeat
    [i / 24 for i in range(30)],  # 24 fps → 15 fps: frames dropped
    [round(sum((0.02, 0.05, 0.1, 0.033)[j % 4] for j in range(i)), 3) for i in range(30)],  # variable frame rate
])
def test_constant_frame_rate_conversion(tmp_path, times):
    rate = 10 if times[1] == 0.1 else 24
    write_levels(tmp_path / "v.mp4", times, rate)
    data, meta = packing.transcode(tmp_path / "v.mp4", packing.Encoding(short_side=48, copy=False))
    span = times[-1] - times[0]  # plus the last frame's duration, 1 / (the stream's average frame rate)
    assert span < meta["orig_duration"] <= span + 0.1 and meta["num_frames"] == round(meta["orig_duration"] * 15)
    if times[1] in (0.1, 1 / 24):
        assert meta["orig_duration"] == pytest.approx(span + 1 / rate, abs=1e-3) and meta["orig_fps"] == \
            pytest.approx(rate, rel=1e-3)
    shown = levels(data)
    times = [round(t * 1000) / 1000 for t in times]  # as stored (ms time base)
    rel = [t - times[0] for t in times]
    # output frame k shows the latest source frame at or before (k + 0.5) / 15 s
    expected = [max(i for i, t in enumerate(rel) if t <= (k + 0.5) / 15 + 1e-6) for k in range(meta["num_frames"])]
    assert shown == expected

    clip_data, clip_meta = packing.transcode(tmp_path / "v.mp4", packing.Encoding(short_side=48), clip=(0.5, 1.0))
    assert clip_meta["orig_duration"] == pytest.approx(0.5, abs=0.05)
    assert clip_meta["num_frames"] == round(clip_meta["orig_duration"] * 15)
    assert levels(clip_data) == [max(i for i, t in enumerate(times) if t <= 0.5 + (k + 0.5) / 15 + 1e-6 and t < 1.0)
                                 for k in range(clip_meta["num_frames"])]  # [start, end): the frame at 1.0 is out


def test_a_dying_worker_fails_the_run_instead_of_hanging():
    from concurrent.futures.process import BrokenProcessPool

    with pytest.raises(BrokenProcessPool):
        with packing.ordered_map(os._exit, [3, 3], workers=2) as results:  # the worker process exits mid-task
            list(results)
    with packing.ordered_map(abs, [-3, 2, -1], workers=2) as results:
        assert list(results) == [3, 2, 1]
