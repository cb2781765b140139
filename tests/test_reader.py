import importlib.util
import io
import json
import os

import av
import numpy as np
import pytest
import torch
from video_shards import encode_video, video_info, write_shards

from lofi.data import build_loader
from lofi.data.sampling import snippet_frame_indices, snippet_times
from lofi.data.spatial import Crop, apply_crop
from lofi.fidelity import Fidelity, LoFiSchedule

SMALL = Fidelity(4, 2, 32, 32)
FIXED = LoFiSchedule("full", SMALL)
SIZES = [(48, 64), (48, 80), (64, 48)]


def samples(n, subset="training", seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        frames = int(rng.integers(30, 61))
        h, w = SIZES[i % 3]
        dur = frames / 15
        ann = [{"segment": [0.1 * dur, 0.4 * dur], "label": "a", "label_id": 0}]
        if i % 2:
            ann.append({"segment": [0.5 * dur, 0.9 * dur], "label": "b", "label_id": 1})
        out.append({"info": video_info(f"vid{i}", frames, h, w, subset=subset, annotations=ann)})
    return out


@pytest.fixture(scope="module")
def vp9(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vp9"))
    write_shards(root, "training", samples(7), per_shard=3)
    return root


@pytest.fixture(scope="module")
def mjpeg(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mjpeg"))
    write_shards(root, "validation", samples(3, "validation", seed=1), per_shard=2, codec="mjpeg")
    return root


def collect(loader):
    return [b for b in loader]


def ids(batches, pads=False):
    return [m["id"] for b in batches for m in b["meta"] if pads or not m["pad"]]


def reference_frames(mp4, frames, crop):
    """Decode every frame with PyAV and apply the same crop: the oracle for the cpu backend."""
    with av.open(io.BytesIO(mp4)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    stack = torch.from_numpy(np.stack([decoded[i] for i in frames.reshape(-1)])).permute(0, 3, 1, 2)
    return apply_crop(stack, crop).reshape(*frames.shape, 3, crop.H, crop.W)


def test_eval_every_video_once_with_exact_frames(vp9):
    loader = build_loader(vp9, "training", batch_size=2, schedule=FIXED, train=False, epoch=0, seed=0,
                          backend="cpu", num_workers=0)
    batches = collect(loader)
    assert len(loader) == len(batches) == 4
    assert ids(batches) == [f"vid{i}" for i in range(7)]  # fixed order, each once
    assert [m["pad"] for m in batches[-1]["meta"]] == [False, True]
    tar = os.path.join(vp9, "training-000000.tar")
    import webdataset as wds
    first = next(iter(wds.WebDataset(tar, shardshuffle=False)))
    info = json.loads(first["json"])
    frames = snippet_frame_indices(info["num_frames"], SMALL.L, SMALL.T)
    meta = batches[0]["meta"][0]
    np.testing.assert_allclose(meta["snippet_times"], snippet_times(frames, 15))
    assert meta["duration"] == info["duration"] and meta["annotations"] == info["annotations"]
    h, w = info["height"], info["width"]
    crop = Crop(32, round(w * 32 / h), 0, (round(w * 32 / h) - 32) // 2, 32, 32, False)
    b = batches[0]
    assert b["frames"].dtype == torch.uint8 and b["frames"].shape == (2, 4, 2, 3, 32, 32)
    assert torch.equal(b["frames"][0], reference_frames(first["mp4"], frames, crop))
    assert b["fidelity"] == SMALL and (b["epoch"], b["iteration"]) == (0, 0)


def test_two_ranks_workers_no_overlap_equal_counts(vp9):
    def run(rank, train, workers):
        return collect(build_loader(vp9, "training", batch_size=2, schedule=FIXED, train=train, epoch=3, seed=5,
                                    backend="cpu", num_workers=workers, rank=rank, world_size=2))
    r0, r1 = run(0, False, 2), run(1, False, 0)
    assert len(r0) == len(r1) == 2
    assert sorted(ids(r0) + ids(r1)) == sorted(f"vid{i}" for i in range(7))
    assert not set(ids(r0)) & set(ids(r1))
    assert sum(m["pad"] for b in r0 + r1 for m in b["meta"]) == 1
    t0, t1 = run(0, True, 2), run(1, True, 1)
    assert len(t0) == len(t1) == 2 and all(b["frames"].shape[0] == 2 for b in t0 + t1)
    # 8 positions over 7 videos: every video appears, one is resampled
    assert set(ids(t0) + ids(t1)) == {f"vid{i}" for i in range(7)}


def test_seeded_shuffle_reproducible(vp9):
    def run(seed, epoch=1):
        return collect(build_loader(vp9, "training", batch_size=2, schedule=FIXED, train=True, epoch=epoch,
                                    seed=seed, backend="cpu", num_workers=0))
    a, b, c = run(7), run(7), run(8)
    assert ids(a) == ids(b) and all(torch.equal(x["frames"], y["frames"]) for x, y in zip(a, b))
    assert ids(a) != ids(c) or not all(torch.equal(x["frames"], y["frames"]) for x, y in zip(a, c))
    assert ids(run(7, epoch=2)) != ids(a)


def test_short_cycle_changes_fidelity_within_epoch(vp9):
    full = Fidelity(8, 2, 48, 48)
    sched = LoFiSchedule("short_cycle", full, r_t=4, r_s=2.0, st_r_t=2, c_s=1)
    batches = collect(build_loader(vp9, "training", batch_size=2, schedule=sched, train=True, epoch=0, seed=0,
                                   backend="cpu", num_workers=2))
    shapes = [tuple(b["frames"].shape[1:]) for b in batches]
    assert shapes == [(8, 2, 3, 24, 24), (2, 2, 3, 48, 48), (4, 2, 3, 34, 34), (8, 2, 3, 24, 24)]
    assert [b["fidelity"] for b in batches] == [sched(0, i) for i in range(4)]
    assert all(len(b["meta"][0]["snippet_times"]) == b["fidelity"].L for b in batches)


def test_foreground_one_sample_per_segment(vp9):
    loader = build_loader(vp9, "training", batch_size=3, schedule=FIXED, train=False, epoch=0, seed=0,
                          backend="cpu", num_workers=0, foreground=True)
    metas = [m for b in loader for m in b["meta"] if not m["pad"]]
    assert len(metas) == 7 + 3  # one segment per video, two for the odd ones
    for m in metas:
        seg = [a for a in m["annotations"] if a["label_id"] == m["label_id"]][0]["segment"]
        assert seg[0] - 0.1 <= m["snippet_times"].min() and m["snippet_times"].max() <= seg[1] + 0.1


@pytest.mark.parametrize("backend", ["cpu", "dali"])
def test_corrupt_sample_skipped_counted(tmp_path, backend):
    if backend == "dali" and importlib.util.find_spec("nvidia.dali") is None:
        pytest.skip("needs nvidia-dali")
    items = samples(3)
    good = encode_video(40, 48, 64)
    items[1]["mp4"] = good[: len(good) // 3]
    write_shards(str(tmp_path), "training", items, per_shard=3)
    loader = build_loader(str(tmp_path), "training", batch_size=3, schedule=FIXED, train=False, epoch=0, seed=0,
                          backend=backend, num_workers=0)
    with pytest.warns(UserWarning, match="vid1"):
        batches = collect(loader)
    assert list(loader.corrupt) == [f"vid1 in {tmp_path}/training-000000.tar"]
    assert ids(batches) == ["vid0", "vid2"] and batches[0]["frames"].shape[0] == 3


def test_bad_shards_named(tmp_path):
    write_shards(str(tmp_path), "training", samples(4), per_shard=2)
    man = json.loads((tmp_path / "manifest.json").read_text())
    man["splits"]["training"]["shards"]["training-000001.tar"]["num_samples"] = 3
    (tmp_path / "manifest.json").write_text(json.dumps(man))
    kwargs = dict(batch_size=1, schedule=FIXED, train=True, epoch=0, seed=0, backend="cpu", num_workers=0)
    with pytest.raises(ValueError, match="training-000001.tar holds 2 samples, the manifest says 3"):
        build_loader(str(tmp_path), "training", **kwargs)
    os.remove(tmp_path / "training-000001.tar")
    with pytest.raises(ValueError, match="missing shard .*training-000001.tar"):
        build_loader(str(tmp_path), "training", **kwargs)
    bad = tmp_path / "broken-000000.tar"
    bad.write_bytes(b"this is not a tar file" * 100)
    with pytest.raises(RuntimeError, match="cannot read shard .*broken-000000.tar"):
        build_loader(str(bad), "training", **kwargs)


def test_clip_label_id(tmp_path):
    items = samples(2)
    for i, s in enumerate(items):
        s["info"].update(label="b", label_id=1)
    write_shards(str(tmp_path), "training", items, per_shard=2, manifest=False)
    batch = next(iter(build_loader(str(tmp_path / "training-000000.tar"), "training", batch_size=2, schedule=FIXED,
                                   train=True, epoch=0, seed=0, backend="cpu", num_workers=0)))
    assert [m["label_id"] for m in batch["meta"]] == [1, 1]


needs_dali = pytest.mark.skipif(importlib.util.find_spec("nvidia.dali") is None, reason="needs nvidia-dali")


@needs_dali
def test_dali_cpu_matches_pyav(mjpeg, vp9):
    for root, subset in ((mjpeg, "validation"), (vp9, "training")):
        runs = {}
        for backend in ("cpu", "dali"):
            sched = LoFiSchedule("short_cycle", Fidelity(8, 2, 32, 32), r_t=2, st_r_t=2, c_s=1)
            loader = build_loader(root, subset, batch_size=2, schedule=sched, train=True, epoch=0, seed=3,
                                  backend=backend, num_workers=1)
            assert loader.backend == ("cpu" if backend == "cpu" else "dali-cpu")
            runs[backend] = collect(loader)
        assert len(runs["cpu"]) == len(runs["dali"])
        for a, b in zip(runs["cpu"], runs["dali"]):
            assert a["fidelity"] == b["fidelity"] and a["frames"].shape == b["frames"].shape
            assert ids([a], pads=True) == ids([b], pads=True)
            for ma, mb in zip(a["meta"], b["meta"]):
                np.testing.assert_array_equal(ma["snippet_times"], mb["snippet_times"])
            diff = (a["frames"].float() - b["frames"].float()).abs().mean().item()
            assert diff <= 3.0, f"{root}: mean |PyAV − DALI| = {diff:.2f} levels"


@needs_dali
def test_mixed_and_cpu_graphs_come_from_one_function():
    from lofi.data.backend_dali import build_pipeline

    graphs = {}
    for device in ("cpu", "mixed"):
        pipe = build_pipeline(lambda info: None, device, batch_size=2)
        pipe._build_graph()
        graphs[device] = [(type(op._op).__name__, op.spec.OutputDevice(0)) for op in pipe._ops]
    names = [name for name, _ in graphs["cpu"]]
    assert names == [name for name, _ in graphs["mixed"]] and "Video" in names
    assert {d for _, d in graphs["cpu"]} == {"cpu"}
    after_decoder = names.index("Video")
    assert [d for n, d in graphs["mixed"][after_decoder:] if n != "ExternalSource"] == ["gpu"] * 6


@needs_dali
def test_dali_cpu_rejects_h264(tmp_path):
    items = samples(1)
    write_shards(str(tmp_path), "training", items, per_shard=1, codec="libx264")
    loader = build_loader(str(tmp_path), "training", batch_size=1, schedule=FIXED, train=True, epoch=0, seed=0,
                          backend="dali", num_workers=0)
    with pytest.raises(ValueError, match="DALI's CPU decoder handles"):
        collect(loader)


def test_reads_make_shards_output(tmp_path):
    from lofi.data.packing import make_shards
    from lofi.data.synthetic import make_synthetic

    syn = make_synthetic(tmp_path / "syn", seed=2, workers=1, progress=False, num_videos=4, num_classes=2,
                         size=(48, 64), length=(3.0, 4.0), num_clips=2, clip_length=(1.0, 1.5))
    man = make_shards(syn["videos"], syn["annotations"], tmp_path / "tal", codec="vp9", short_side=48, shard_size=2,
                      workers=1, progress=False)
    for subset, split in man["splits"].items():
        loader = build_loader(str(tmp_path / "tal"), subset, batch_size=1, schedule=FIXED, train=False, epoch=0,
                              seed=0, backend="cpu", num_workers=0, foreground=True)
        metas = [m for b in loader for m in b["meta"] if not m["pad"]]
        assert len({m["id"] for m in metas}) == split["num_samples"] and not loader.corrupt
        assert all(m["label_id"] in (0, 1) for m in metas)
    clips = make_shards(syn["clips"], syn["clip_list"], tmp_path / "clips", fmt="clips", codec="vp9", short_side=48,
                        workers=1, progress=False)
    subset = sorted(clips["splits"])[0]
    batch = next(iter(build_loader(str(tmp_path / "clips"), subset, batch_size=1, schedule=FIXED, train=True,
                                   epoch=0, seed=0, backend="cpu", num_workers=0)))
    assert batch["meta"][0]["label_id"] in (0, 1) and batch["frames"].shape == (1, 4, 2, 3, 32, 32)
