"""Packing on many machines (lofi.data.parts): 3 parts + --merge equal one run, a killed part resumes, --merge refuses
missing or incomplete parts."""
import io
import json
import pathlib
import signal
import subprocess
import sys

import av
import numpy as np
import pytest
import webdataset as wds

from lofi.data.annotations import load_annotations
from lofi.data.packing import make_shards
from lofi.data.parts import merge_parts, select_part
from lofi.data.shardlist import index_subset
from lofi.data.synthetic import make_synthetic

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(num_videos=7, num_classes=3, size=(48, 64), length=(2.0, 6.0), num_clips=2, clip_length=(1.0, 1.5))
KW = dict(short_side=32, shard_size=1, workers=1, progress=False)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("syn"), seed=4, workers=1, progress=False, **TINY)


def samples(out_dir):
    """{key: (json, decoded frames (N, H, W, 3))} of every shard the directory's manifest.json lists."""
    manifest = json.loads((out_dir / "manifest.json").read_text())
    out = {}
    for split in manifest["splits"].values():
        for name in split["shards"]:
            for s in wds.WebDataset(str(out_dir / name), shardshuffle=False):
                with av.open(io.BytesIO(s["mp4"])) as c:
                    frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
                assert s["__key__"] not in out
                out[s["__key__"]] = (json.loads(s["json"]), frames)
    return out


def merge_cli(out_dir):
    return subprocess.run([sys.executable, "tools/make_shards.py", "--merge", str(out_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_three_parts_and_merge_equal_one_run(synthetic, tmp_path):
    make_shards(synthetic["videos"], synthetic["annotations"], tmp_path / "one", **KW)
    for i in (1, 2, 3):
        part = make_shards(synthetic["videos"], synthetic["annotations"], tmp_path / "parts", part=(i, 3), **KW)
        assert not (tmp_path / "parts" / "manifest.json").exists()  # a part writes only manifest-p0Iof03.json
        assert all(f"-p0{i}of03-" in n for s in part["splits"].values() for n in s["shards"])
    proc = merge_cli(tmp_path / "parts")
    assert proc.returncode == 0, proc.stderr
    one, parts = samples(tmp_path / "one"), samples(tmp_path / "parts")
    assert sorted(one) == sorted(parts) and len(one) == 7
    for key, (info, frames) in one.items():
        assert parts[key][0] == info and np.array_equal(parts[key][1], frames)
    merged = json.loads((tmp_path / "parts" / "manifest.json").read_text())
    whole = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert merged["complete"] and merged["num_parts"] == 3 and merged["classes"] == whole["classes"]
    for subset in whole["splits"]:
        assert merged["splits"][subset]["num_samples"] == whole["splits"][subset]["num_samples"]
        index_subset(str(tmp_path / "parts"), subset)  # the reader's manifest check accepts the merged directory


def test_parts_are_disjoint_and_balanced_by_duration(synthetic):
    records = load_annotations(synthetic["annotations"]).records
    parts = [select_part(records, (i, 3)) for i in (1, 2, 3)]
    ids = [r.id for p in parts for r in p]
    assert sorted(ids) == sorted(r.id for r in records)  # every video in exactly one part
    loads = [sum(r.duration for r in p) for p in parts]
    assert max(loads) - min(loads) <= max(r.duration for r in records)  # greedy longest-first bound
    assert [select_part(records, (i, 3)) for i in (1, 2, 3)] == parts  # deterministic
    with pytest.raises(ValueError, match="part 4 of 3"):
        select_part(records, (4, 3))


# tools/make_shards.py ARGS, SIGKILLed while it transcodes its second video (one worker: in this process)
SIGKILL_ON_SECOND_VIDEO = """
import os, runpy, signal, sys
from lofi.data import packing
real, calls = packing._transcode_task, []
def task(t):
    calls.append(t)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(t)
packing._transcode_task = task
sys.argv = ["tools/make_shards.py", *sys.argv[1:]]
runpy.run_path("tools/make_shards.py", run_name="__main__")
"""


def test_killed_part_resumes_and_merge_refuses_missing_or_incomplete_parts(synthetic, tmp_path):
    out = tmp_path / "parts"
    make_shards(synthetic["videos"], synthetic["annotations"], out, part=(1, 3), **KW)
    part1 = {p.name: p.stat().st_mtime_ns for p in out.glob("*-p01of03-*.tar")}
    killed = subprocess.run([sys.executable, "-c", SIGKILL_ON_SECOND_VIDEO, str(synthetic["videos"]),
                             str(synthetic["annotations"]), str(out), "--short-side", "32", "--shard-size", "1",
                             "--workers", "1", "--quiet", "--part", "2", "--num-parts", "3"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [p.name for p in out.glob("*.tmp-*")]  # the kill left a half-written shard behind
    proc = merge_cli(out)
    assert proc.returncode == 2 and not (out / "manifest.json").exists()
    with pytest.raises(ValueError, match="packed in parts and not merged yet"):
        index_subset(str(out), "training")  # the reader refuses the parts before the merge
    assert f"part 2 of 3 ({out / 'manifest-p02of03.json'}) is incomplete" in proc.stderr
    assert f"part 3 of 3 ({out / 'manifest-p03of03.json'}) is missing" in proc.stderr

    (out / "training-p02of03-000009.tar.tmp-999").write_bytes(b"partial")  # a harder kill's leftover
    (out / "training-p01of03-000009.tar.tmp-999").write_bytes(b"partial")  # part 1's: not part 2's to delete
    resumed = make_shards(synthetic["videos"], synthetic["annotations"], out, part=(2, 3), **KW)
    assert resumed["complete"] and not list(out.glob("*-p02of03-*.tmp-*"))
    assert (out / "training-p01of03-000009.tar.tmp-999").exists()
    (out / "training-p01of03-000009.tar.tmp-999").unlink()
    make_shards(synthetic["videos"], synthetic["annotations"], out, part=(3, 3), **KW)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*-p01of03-*.tar")} == part1  # untouched by parts 2, 3

    shard = sorted(out.glob("*-p03of03-*.tar"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ValueError, match=f"part 3 of 3 .*: shard {shard} does not match its sha256"):
        merge_parts(out)
    shard.write_bytes(data)
    merged = merge_parts(out)
    assert sum(s["num_samples"] for s in merged["splits"].values()) == 7
