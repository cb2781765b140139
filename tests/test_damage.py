"""Damaged samples: checksums verified before planning, strict PyAV decoding, DALI's fallback to PyAV, the limit."""
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import tarfile

import av
import numpy as np
import pytest
import torch
from subproc import child_env
from video_shards import damage_frame, encode_video, video_info, write_shards, zero_member_bytes

from lofi.config import ConfigError, load_config
from lofi.data import CorruptLimitError, build_loader, loader
from lofi.data.backend_cpu import decode_frames
from lofi.data.packing import member_checksums
from lofi.data.reader import CorruptSample
from lofi.data.sampling import snippet_frame_indices
from lofi.fidelity import Fidelity, LoFiSchedule

SMALL = Fidelity(4, 2, 32, 32)
FIXED = LoFiSchedule("full", SMALL)
CODECS = {"vp9": "libvpx-vp9", "mjpeg": "mjpeg"}
needs_dali = pytest.mark.skipif(importlib.util.find_spec("nvidia.dali") is None, reason="needs nvidia-dali")
BACKENDS = ["cpu", pytest.param("dali", marks=needs_dali)]


@pytest.fixture(autouse=True)
def dali_cpu_device(monkeypatch):
    """backend="dali" resolves to DALI's CPU device (device_id None) on any machine: its decoder takes VP9 and MJPEG."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def items(n=6, frames=40):
    return [{"info": video_info(f"vid{i}", frames, 48, 64)} for i in range(n)]


def run(root, backend, train=False, schedule=FIXED, workers=0, **kw):
    dl = build_loader(str(root), "training", batch_size=2, schedule=schedule, train=train, epoch=0, seed=4,
                      backend=backend, num_workers=workers, **kw)
    return dl, [b for b in dl]


def frames_by_id(batches):
    """{id: uint8 frames (L, T, 3, H, W)} of every unpadded sample."""
    return {m["id"]: b["frames"][j].cpu() for b in batches for j, m in enumerate(b["meta"]) if not m["pad"]}


@pytest.fixture(scope="module", params=sorted(CODECS))
def shards(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    write_shards(str(root), "training", items(), per_shard=3, codec=CODECS[request.param])
    return root


@pytest.mark.parametrize("backend", BACKENDS)
def test_checksum_skips_bytes_zeroed_after_packing(shards, backend, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(shards, damaged)
    zero_member_bytes(str(damaged / "training-000001.tar"), "vid3.mp4", 0.5, 64)
    _, clean = run(shards, backend)
    dl, batches = run(damaged, backend)
    where = f"vid3 in {damaged}/training-000001.tar"
    assert list(dl.corrupt) == [where] and "sha256" in dl.corrupt[where]
    assert len(batches) == len(clean) == 3  # the epoch completes
    good, reference = frames_by_id(batches), frames_by_id(clean)
    assert sorted(good) == [f"vid{i}" for i in (0, 1, 2, 4, 5)]
    assert all(np.array_equal(good[k].numpy(), reference[k].numpy()) for k in good)


@needs_dali
@pytest.mark.parametrize("codec", sorted(CODECS))
def test_dali_falls_back_to_pyav_on_a_checksum_consistent_broken_mp4(codec, tmp_path):
    samples = items()
    source = encode_video(40, 48, 64, codec=CODECS[codec], seed=3)
    # broken before packing: the first sampled frame's packet is zeroed
    first = int(snippet_frame_indices(40, 2, 2).min())
    samples[3]["mp4"] = damage_frame(source, first, count=1 << 20)
    write_shards(str(tmp_path), "training", samples, per_shard=3, codec=CODECS[codec])
    schedule = LoFiSchedule("short_cycle", Fidelity(8, 2, 32, 32), r_t=2, st_r_t=2, c_s=1)
    cpu, cpu_batches = run(tmp_path, "cpu", train=True, schedule=schedule, workers=1)
    with pytest.warns(UserWarning, match="DALI failed") as record:
        dali, dali_batches = run(tmp_path, "dali", train=True, schedule=schedule, workers=1)
    fallbacks = [str(w.message) for w in record if "DALI failed" in str(w.message)]
    assert len(fallbacks) == 1 and "vid3" in fallbacks[0]
    assert list(dali.corrupt) == list(cpu.corrupt) == [f"vid3 in {tmp_path}/training-000001.tar"]
    assert len(dali_batches) == len(cpu_batches) == 3  # the epoch completes, in the same order and schedule
    for a, b in zip(cpu_batches, dali_batches):
        assert a["fidelity"] == b["fidelity"] == schedule(0, a["iteration"]) and a["iteration"] == b["iteration"]
        assert [(m["id"], m["pad"]) for m in a["meta"]] == [(m["id"], m["pad"]) for m in b["meta"]]
        if any(m["id"] == "vid3" for m in a["meta"]) or len({m["id"] for m in a["meta"]}) < len(a["meta"]):
            assert np.array_equal(a["frames"].numpy(), b["frames"].numpy())  # the fallback batch: PyAV's frames
        else:
            assert (a["frames"].float() - b["frames"].float()).abs().mean() <= 3.0
    assert "vid3" not in frames_by_id(dali_batches)


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_limit_stops_the_epoch_naming_them(backend, tmp_path):
    write_shards(str(tmp_path), "training", items(), per_shard=3)
    for tar, key in (("training-000000.tar", "vid1"), ("training-000001.tar", "vid4")):
        zero_member_bytes(str(tmp_path / tar), f"{key}.mp4", 0.5, 64)
    with pytest.raises(CorruptLimitError, match=r"2 corrupt samples of 6 exceed data.max_corrupt_fraction=0.2: "
                                                r"vid1 in .*sha256.*vid4 in "):
        run(tmp_path, backend, max_corrupt_fraction=0.2)
    dl, batches = run(tmp_path, backend, max_corrupt_fraction=2 / 6)
    assert len(batches) == 3 and len(dl.corrupt) == 2


def test_max_corrupt_fraction_is_validated():
    with pytest.raises(ConfigError, match=r"data.max_corrupt_fraction: .*\[0, 1\], got 1.5"):
        load_config(None, ["data.max_corrupt_fraction=1.5"], check_paths=False)
    assert load_config(None, ["data.max_corrupt_fraction=0"], check_paths=False).data.max_corrupt_fraction == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_shards_without_checksums_read_with_one_warning(backend, tmp_path, monkeypatch):
    write_shards(str(tmp_path), "training", items(), per_shard=3, checksums=False)
    monkeypatch.setattr(loader, "_warned_unverified", False)
    with pytest.warns(UserWarning) as record:
        epochs = [run(tmp_path, backend) for _ in range(2)]
    unverified = [w for w in record if "without checksums" in str(w.message)]
    assert len(unverified) == 1 and str(tmp_path) in str(unverified[0].message)
    for dl, batches in epochs:
        assert not dl.corrupt and sorted(frames_by_id(batches)) == [f"vid{i}" for i in range(6)]


def test_make_shards_records_the_mp4_sha256(tmp_path):
    from lofi.data.packing import make_shards
    from lofi.data.synthetic import make_synthetic

    syn = make_synthetic(tmp_path / "syn", seed=2, workers=1, progress=False, num_videos=2, num_classes=2,
                         size=(48, 64), length=(2.0, 2.5), num_clips=0)
    man = make_shards(syn["videos"], syn["annotations"], tmp_path / "tal", codec="vp9", short_side=48, workers=1,
                      progress=False)
    checked = 0
    for split in man["splits"].values():
        for name in split["shards"]:
            with tarfile.open(tmp_path / "tal" / name) as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar}
            for member, data in members.items():
                if member.endswith(".json"):
                    mp4 = members[member[:-len("json")] + "mp4"]
                    assert json.loads(data)["sha256"] == member_checksums({"mp4": mp4}) and len(mp4)
                    checked += 1
    assert checked == 2


def lenient_frame_count(mp4):
    """Frames PyAV's default decoder returns for the whole file (it conceals damage and only logs it)."""
    with av.open(io.BytesIO(mp4)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.fixture(scope="module")
def bikes(shared_data):
    """The real clip as make_shards stores it by default (h264, 15 fps, short side 256): (mp4 bytes, meta)."""
    from lofi.data.packing import Encoding, transcode

    return transcode(shared_data / "videos" / "bikes.mp4", Encoding(codec="h264", copy=False))


def test_strict_decoding_never_returns_damaged_real_frames(bikes):
    mp4, meta = bikes
    wanted = np.unique(snippet_frame_indices(meta["num_frames"], 4, 2))
    reference = decode_frames(mp4, wanted)
    outcomes = []
    for start in np.linspace(0.02, 0.95, 25):  # 4000 zeroed bytes at 25 places of the file
        offset = int(start * len(mp4))
        try:
            frames = decode_frames(mp4[:offset] + bytes(4000) + mp4[offset + 4000:], wanted)
        except CorruptSample as exc:
            outcomes.append("logged" if "the decoder reported" in str(exc) else "raised")
        else:
            assert all(np.array_equal(a, b) for a, b in zip(frames, reference)), f"damage at {start:.2f} passed"
            outcomes.append("unaffected")
    assert "logged" in outcomes and "raised" in outcomes, outcomes  # both rules are needed on this clip


def test_real_clip_damage_is_caught(bikes, tmp_path):
    mp4, meta = bikes
    info = video_info("bikes", meta["num_frames"], meta["height"], meta["width"], fps=meta["fps"])
    with av.open(io.BytesIO(mp4)) as container:  # a quarter into the largest keyframe packet after the first
        key = max((p for p in container.demux(video=0) if p.size and p.is_keyframe and p.pts), key=lambda p: p.size)
        offset = key.pos + key.size // 4
    broken = mp4[:offset] + bytes(4000) + mp4[offset + 4000:]
    assert lenient_frame_count(broken) == meta["num_frames"]  # PyAV's default decoding conceals this damage
    other = {"info": video_info("pattern", 30, 48, 64), "mp4": encode_video(30, 48, 64, codec="libx264")}
    for name, sample in (("after", mp4), ("before", broken)):  # zeroed after packing; broken before (same sha256)
        write_shards(str(tmp_path / name), "training", [{"info": info, "mp4": sample}, other], per_shard=2,
                     manifest=False)
    zero_member_bytes(str(tmp_path / "after" / "training-000000.tar"), "bikes.mp4", 0.5, 4000)
    for name, reason in (("after", "does not match its sha256"), ("before", "[h264]")):
        tar = tmp_path / name / "training-000000.tar"
        dl = build_loader(str(tar), "training", batch_size=2, schedule=LoFiSchedule("full", Fidelity(16, 2, 32, 32)),
                          train=False, epoch=0, seed=0, backend="cpu", num_workers=0)
        with pytest.warns(UserWarning, match="bikes"):
            batches = list(dl)
        assert list(dl.corrupt) == [f"bikes in {tar}"] and reason in dl.corrupt[f"bikes in {tar}"], dl.corrupt
        assert [(m["id"], m["pad"]) for m in batches[0]["meta"]] == [("pattern", False), ("pattern", True)]


def test_extract_features_skips_damage_and_stops_at_the_limit(tmp_path):
    import subprocess
    import sys

    import torch
    from subproc import REPO, child_env

    from lofi.models import GTAD, build_encoder

    write_shards(str(tmp_path / "shards"), "training", items(4, frames=30), per_shard=2)
    zero_member_bytes(str(tmp_path / "shards" / "training-000000.tar"), "vid1.mp4", 0.5, 64)
    torch.save(build_encoder("tsm_r18").state_dict(), tmp_path / "enc.pt")
    outcomes = {}
    for limit in (0.2, 0.25):
        proc = subprocess.run(
            [sys.executable, str(REPO / "tools" / "extract_features.py"), "--encoder", str(tmp_path / "enc.pt"),
             "--subset", "training", "--npy", str(tmp_path / f"npy{limit}"), f"data.shards={tmp_path / 'shards'}",
             "data.val_subset=training", "data.backend=cpu", "data.num_workers=0", f"data.max_corrupt_fraction={limit}",
             "fidelity.L=4", "fidelity.T=2", "fidelity.size=32", "head.batch_size=2",
             f"work_dir={tmp_path / f'work{limit}'}"],
            cwd=REPO, env=child_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
        outcomes[limit] = proc
    stopped, done = outcomes[0.2], outcomes[0.25]
    assert stopped.returncode == 1 and "exceed data.max_corrupt_fraction=0.2: vid1 in " in stopped.stderr
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "npy0.25").iterdir()) == ["vid0.npy", "vid2.npy", "vid3.npy"]


def test_infer_skips_a_damaged_window(tmp_path):
    from lofi.models.tal import HeadModel
    from lofi.infer import Detector
    from lofi.models import GTAD, build_encoder

    detector = object.__new__(Detector)  # a randomly initialised model: only the decoding is under test
    detector.device, detector.classes = torch.device("cpu"), ["a", "b"]
    detector.cfg = load_config(None, ["fidelity.L=4", "fidelity.T=2", "fidelity.size=32"], check_paths=False)
    detector.encoder, detector.head = build_encoder("tsm_r18").eval(), HeadModel(GTAD(512, fused=False), 512, 2).eval()
    source = encode_video(60, 48, 64, codec="libvpx-vp9", gop=8, seed=1)  # 4 s, a keyframe every 8 frames
    (tmp_path / "clip.mp4").write_bytes(damage_frame(source, 2, count=1 << 20))  # in the first 2 s window only
    fid = detector.cfg.fidelity
    sampled = int(snippet_frame_indices(60, fid.L, fid.T, fid.stride)[2, 0])
    (tmp_path / "whole.mp4").write_bytes(damage_frame(source, sampled, count=1 << 20))
    with pytest.warns(UserWarning, match="skipping the damaged window 0.00-2.00 s"):
        result = detector(str(tmp_path / "clip.mp4"), window_s=2.0)
    assert list(result["damaged_windows"]) == ["0.00-2.00 s"] and result["duration"] == 4.0
    with pytest.raises(ValueError, match="whole.mp4: damaged, no window decodes cleanly"):
        detector(str(tmp_path / "whole.mp4"))


def test_strict_decoding_leaves_libav_logging_as_it_was(tmp_path):
    """The log callback strict decoding installs is removed after each decode: left installed, a threaded encoder
    later in the same process (packing) hung with its threads blocked in the callback."""
    before = av.logging.get_level()
    video = encode_video(16, 64, 64, codec="libx264")
    decode_frames(video, np.arange(4))
    assert av.logging.get_level() == before
    (tmp_path / "v.mp4").write_bytes(video)
    script = ("import sys, numpy as np; from lofi.data.backend_cpu import decode_frames; from lofi.data import packing;"
              "data = open(sys.argv[1], 'rb').read(); decode_frames(data, np.arange(4));"
              "packing.transcode(sys.argv[1], packing.Encoding(short_side=48, copy=False, threads=4)); print('ok')")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "v.mp4")], capture_output=True, text=True,
                          timeout=300, env=child_env())
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
