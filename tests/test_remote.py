"""Shards read from a web or object store (lofi.data.remote), on loopback only: an http.server over shards made here,
compared bit for bit with the same shards read from the local directory."""
import json
import pathlib

import numpy as np
import pytest
import torch
from http_shards import serve

from lofi.config import ConfigError, load_config
from lofi.data import build_loader
from lofi.data.packing import make_shards
from lofi.data.remote import index_remote, member_url
from lofi.data.shardlist import index_subset
from lofi.data.synthetic import make_synthetic
from lofi.fidelity import Fidelity, LoFiSchedule

FIXED = LoFiSchedule("full", Fidelity(4, 2, 32, 32))


# 10 synthetic videos (8 training, in 4 shards of 2), packed by make_shards
SYNTHETIC = dict(seed=5, num_videos=10, num_classes=2, size=(48, 64), length=(3.0, 5.0), num_clips=2,
                 clip_length=(1.0, 1.5), workers=1, progress=False)
PACKING = dict(fps=10, short_side=48, shard_size=2, workers=1, progress=False)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    paths = make_synthetic(root / "raw", "demo", **SYNTHETIC)
    make_shards(paths["videos"], paths["annotations"], root / "shards", **PACKING)
    return root / "shards"


def batches(source, tmp_path=None, epoch=0, **kw):
    args = dict(batch_size=2, schedule=FIXED, train=True, epoch=epoch, seed=1, backend="cpu", num_workers=0)
    if tmp_path is not None:
        args.update(cache_dir=str(tmp_path / "cache"), fetch_retries=2)
    return list(build_loader(str(source), "training", **{**args, **kw}))


def plain(meta):
    return [{k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in m.items()} for m in meta]


def assert_same(a, b):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert torch.equal(x["frames"], y["frames"]) and x["fidelity"] == y["fidelity"]
        assert plain(x["meta"]) == plain(y["meta"])


def training_shards(shards):
    return sorted(json.loads((shards / "manifest.json").read_text())["splits"]["training"]["shards"])


def test_url_equals_local_and_each_shard_is_fetched_once(shards, tmp_path):
    local = [batches(shards, epoch=e, num_workers=2) for e in (0, 1)]
    with serve(shards) as server:
        first = batches(server.url, tmp_path, num_workers=2)
        fetched = list(server.requests)
        second = batches(server.url, tmp_path, epoch=1, num_workers=2)
        assert server.requests == fetched  # epoch 1 reads the cache; the manifest was fetched once
    assert_same(first, local[0])
    assert_same(second, local[1])
    # the two DataLoader workers share the shard at their boundary: one download each
    assert sorted(fetched) == ["manifest.json"] + training_shards(shards)


def test_dropped_connection_is_retried_with_the_same_batches(shards, tmp_path):
    local = batches(shards)
    name = training_shards(shards)[1]
    with serve(shards) as server:
        server.drops[name] = 5000  # the first request for this shard closes after 5000 bytes
        remote = batches(server.url, tmp_path)
        assert server.requests.count(name) == 2
    assert_same(remote, local)


def test_error_after_the_retries_names_the_url(shards, tmp_path):
    name = training_shards(shards)[0]

    class Always(dict):  # drops every request for the shard
        def pop(self, key, default=None):
            return 1000 if key == name else default

    with serve(shards) as server:
        server.drops, url = Always(), server.url
        with pytest.raises(RuntimeError, match=f"cannot fetch {url}/{name} after 3 attempts"):
            batches(url, tmp_path)
        assert server.requests.count(name) == 3


def test_pipe_source_gives_the_same_batches(shards, tmp_path):
    assert_same(batches(f"pipe:cat {shards}/{{name}}", tmp_path), batches(shards))
    with pytest.raises(ValueError, match="must contain {name}"):
        member_url("pipe:cat x", "manifest.json")


def test_ddp_rank_fetches_only_its_own_shards(shards, tmp_path):
    with serve(shards) as server:
        loader = build_loader(server.url, "training", batch_size=2, schedule=FIXED, train=False, epoch=0, seed=1,
                              backend="cpu", num_workers=0, rank=0, world_size=2, cache_dir=str(tmp_path))
        list(loader)
        front = loader.front
        own = {front.shards[front.units[p % len(front.units)][0]].path.rsplit("/", 1)[1]
               for p in front.worker_positions(0)}
        assert sorted(r for r in server.requests if r.endswith(".tar")) == sorted(own)
        assert len(own) < len(training_shards(shards))


def test_cache_reuse_checks_the_checksum_and_the_size_bound(shards, tmp_path):
    with serve(shards) as server:
        indexed = index_remote(server.url, "training", cache_dir=str(tmp_path), max_bytes=1)
        first = pathlib.Path(indexed[0].remote.local())
        assert first.parent.parent == tmp_path
        first.write_bytes(first.read_bytes()[:-10] + b"0" * 10)  # damaged in the cache
        assert pathlib.Path(indexed[0].remote.local()).read_bytes() == (shards / indexed[0].remote.name).read_bytes()
        assert server.requests.count(indexed[0].remote.name) == 2
        indexed[1].remote.local()  # the bound (1 byte) keeps only the newest shard
        assert [p.name for p in first.parent.glob("*.tar")] == [indexed[1].remote.name]


def test_incomplete_or_inconsistent_manifest_is_refused(shards, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    manifest = json.loads((shards / "manifest.json").read_text())
    for name in training_shards(shards):
        (bad / name).write_bytes((shards / name).read_bytes())
    with serve(bad) as server:
        (bad / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
        with pytest.raises(ValueError, match=f"{server.url}/manifest.json: the manifest is not complete"):
            index_remote(server.url, "training", cache_dir=str(tmp_path))
    name = training_shards(shards)[0]
    manifest["splits"]["training"]["shards"][name]["num_samples"] += 1
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with serve(bad) as server:
        with pytest.raises(ValueError, match=f"shard {name} lists 2 keys for 3 samples"):
            index_remote(server.url, "training", cache_dir=str(tmp_path))


def test_foreground_index_equals_the_local_one(shards, tmp_path):
    with serve(shards) as server:
        remote = index_remote(server.url, "training", foreground=True, cache_dir=str(tmp_path))
    local = index_subset(str(shards), "training", foreground=True)
    assert [(s.keys, s.segments) for s in remote] == [(s.keys, s.segments) for s in local]
    assert any(n > 1 for s in local for n in s.segments)


def test_config_accepts_a_url_and_checks_the_cache_keys():
    cfg = load_config(None, ["data.shards=https://example.invalid/anet", "data.clip_shards=pipe:cat /x/{name}",
                             "data.synthetic.build=false", "stages=[acp, lofi, head, eval]"])
    assert cfg.data.shards == "https://example.invalid/anet"  # checked when its manifest is fetched, not here
    with pytest.raises(ConfigError, match="data.cache_max_gib: must be > 0.*\n.*data.fetch_retries: must be ≥ 0"):
        load_config(None, ["data.cache_max_gib=0", "data.fetch_retries=-1"], check_paths=False)


def test_processes_of_a_node_share_one_download(shards, tmp_path):
    # ranks and DataLoader workers of one node asking for the same shard at once: one download, the others wait
    from concurrent.futures import ThreadPoolExecutor
    with serve(shards) as server:
        shard = index_remote(server.url, "training", cache_dir=str(tmp_path))[0].remote
        with ThreadPoolExecutor(4) as pool:
            paths = list(pool.map(lambda _: shard.local(), range(4)))
        assert server.requests.count(shard.name) == 1 and len(set(paths)) == 1
