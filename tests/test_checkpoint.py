"""Atomic checkpoint writes, retention, RNG capture, and the feature cache (reuse, invalidation, external formats)."""
import json
import pickle
import random

import h5py
import numpy as np
import pytest
import torch

from lofi.engine import distributed as D
from crafted import Payload, crafted_pt
from lofi.engine.checkpoint import (Checkpointer, UnsafeFileError, atomic_save, capture_rng, load, restore_rng,
                                    state_hash)
from lofi.engine.feature_cache import FeatureCache, FeatureLoader, load_external


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "ck" / "last.pt"
    atomic_save({"a": 1}, target)

    def broken(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        atomic_save({"a": 2}, target)
    monkeypatch.undo()
    assert load(target) == {"a": 1}
    assert [p.name for p in target.parent.iterdir()] == ["last.pt"]


def test_load_names_a_corrupt_file(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="x.pt cannot be read"):
        load(tmp_path / "x.pt")


def test_load_refuses_a_file_that_needs_unpickling(tmp_path):
    marker = tmp_path / "ran"
    files = [crafted_pt(tmp_path / "weights.pth", marker),
             crafted_pt(tmp_path / "last.pt", marker, lambda p: {"models": {"model": p}, "position": {"epoch": 1}})]
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps({"w": 1, "x": Payload(marker)}))  # a plain pickle, not a zip
    for path in (*files, tmp_path / "raw.pkl"):
        with pytest.raises(UnsafeFileError, match=rf"{path} cannot be read safely.*can run arbitrary code"):
            load(path)
        assert not marker.exists(), path


def test_checkpoints_load_with_weights_only(tmp_path):
    """A real checkpoint (SGD momentum, StepLR, scaler, every RNG, a config) reads back with weights_only=True, and
    its RNG states restore exactly."""
    from lofi.config import load_config, to_dict
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    np.random.randn()  # NumPy's cached Gaussian is part of its state
    ck = Checkpointer(tmp_path)
    ck.save(ck.state({"m": model}, opt, sched, torch.amp.GradScaler("cpu", enabled=False), epoch=1, iteration=0,
                     config=to_dict(load_config(None, [], check_paths=False)), extra={"history": [{"epoch": 1}]}))
    expected = (random.random(), np.random.randn(3), torch.rand(2))
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    restore_rng(state["rng"])
    assert expected[0] == random.random() and (expected[1] == np.random.randn(3)).all()
    assert torch.equal(expected[2], torch.rand(2))


def test_retention_and_best(tmp_path):
    model = torch.nn.Linear(2, 2)
    ck = Checkpointer(tmp_path, keep=2)
    for it in range(1, 5):
        ck.save(ck.state({"m": model}, epoch=0, iteration=it), best=it == 2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best.pt", "last.pt", "step-0000-000003.pt", "step-0000-000004.pt"]
    assert load(tmp_path / "best.pt")["position"]["iteration"] == 2
    assert Checkpointer(tmp_path / "other", enabled=False).save(ck.state({"m": model}, epoch=0, iteration=0)) is None


def test_rng_roundtrip():
    state = capture_rng()
    a = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_state_hash_tracks_values():
    m = torch.nn.Linear(3, 2)
    h = state_hash(m.state_dict())
    assert h == state_hash({k: v.clone() for k, v in m.state_dict().items()})
    with torch.no_grad():
        m.bias[0] += 1
    assert h != state_hash(m.state_dict())


def _batches(n, C=3, L=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    metas = [{"id": f"vid{i}", "duration": 10.0 + i, "annotations": [], "snippet_times": [1.0, 2.0, 3.0, 4.0]}
             for i in range(n)]
    feats = torch.randn(n, C, L, generator=g)
    return [(feats[i:i + 2], metas[i:i + 2]) for i in range(0, n, 2)], feats


def test_feature_cache_reuse_and_invalidation(tmp_path):
    info = D.DistInfo()
    key = {"encoder": "abc", "fidelity": "4x2@32x32", "source": "shards/x"}
    cache = FeatureCache(tmp_path / "training", key)
    assert not cache.valid()
    batches, feats = _batches(5)
    batches[-1][1][-1]["pad"] = True  # a padding duplicate is not stored
    cache.build(batches, info, shard_size=2)
    assert cache.valid() and len(list((tmp_path / "training").glob("features-*.h5"))) == 2
    loaded = cache.load()
    assert sorted(loaded) == [f"vid{i}" for i in range(4)]
    assert torch.equal(loaded["vid3"][0], feats[3]) and loaded["vid3"][1]["duration"] == 13.0
    assert FeatureCache(tmp_path / "training", dict(key)).valid()  # same key: reused
    for changed in ({**key, "encoder": "def"}, {**key, "fidelity": "8x2@32x32"}):
        assert not FeatureCache(tmp_path / "training", changed).valid()  # new encoder or fidelity: rebuild
    other = FeatureCache(tmp_path / "training", {**key, "encoder": "def"})
    other.build(_batches(2, seed=1)[0], info)
    assert sorted(other.load()) == ["vid0", "vid1"] and not cache.valid()
    idx = json.loads((tmp_path / "training" / "index.json").read_text())
    assert idx["key"]["encoder"] == "def" and idx["complete"]


def test_external_npy_and_hdf5(tmp_path):
    metas = {"a": {"id": "a", "duration": 8.0, "annotations": []}, "b": {"id": "b", "duration": 4.0, "annotations": []}}
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "v_a.npy", np.arange(12, dtype=np.float32).reshape(4, 3))  # (T, C)
    np.save(tmp_path / "npy" / "b.npy", np.ones((8, 3), np.float32))
    out = load_external(tmp_path / "npy", metas, L=4)
    assert out["a"][0].shape == (3, 4) and torch.equal(out["a"][0][:, 1], torch.tensor([3.0, 4.0, 5.0]))
    assert out["b"][0].shape == (3, 4) and out["a"][1]["snippet_times"] == [1.0, 3.0, 5.0, 7.0]
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["v_a"] = np.zeros((4, 3), np.float32)
        f["b"] = np.zeros((3, 2), np.float32)  # (C, T) with layout CT
    out = load_external(tmp_path / "f.h5", metas, L=4, layout="CT")
    assert out["a"][0].shape == (4, 4) and out["b"][0].shape == (3, 4)
    with pytest.raises(KeyError, match="no features for 1 video"):
        load_external(tmp_path / "npy", {**metas, "c": {"id": "c", "duration": 1.0}}, L=4)


def test_feature_loader_splits_ranks_evenly():
    entries = {f"v{i}": (torch.full((2, 3), float(i)), {"id": f"v{i}"}) for i in range(5)}
    seen = []
    for rank in range(2):
        loader = FeatureLoader(entries, batch_size=2, train=False, rank=rank, world_size=2)
        batches = list(loader)
        assert len(batches) == len(loader) == 2
        seen += [m["id"] for b in batches for m in b["meta"] if not m["pad"]]
    assert sorted(seen) == sorted(entries)
    train = [FeatureLoader(entries, 2, True, rank=r, world_size=2) for r in range(2)]
    assert len(train[0]) == len(train[1]) == 1
