"""Starting an epoch mid-way (a resumed run): the loaders yield exactly the tail of the full epoch, and the batches
before the start are never read or decoded; the trainer asks for the resume position instead of skipping batches."""
import importlib.util

import pytest
import torch
from test_pretext import SPEED
from test_reader import FIXED, samples
from video_shards import write_shards

import lofi.data.loader as loader_module
from lofi.data import build_loader
from lofi.data.pretext import Pretext
from lofi.data.reader import FrontEnd
from lofi.engine.feature_cache import FeatureLoader


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("start"))
    write_shards(root, "training", samples(11), per_shard=3)
    return root


def epoch(shards, start=0, **kw):
    args = dict(batch_size=2, schedule=FIXED, train=True, epoch=1, seed=5, backend="cpu", num_workers=0,
                shuffle_buffer=4)
    return list(build_loader(shards, "training", start=start, **{**args, **kw}))


def same(a, b):
    def order(batch):  # which samples, and the rates of their pretext views
        return batch["iteration"], [(m["key"], m.get("pretext_rates")) for m in batch["meta"]]
    return order(a) == order(b) and torch.equal(a["frames"], b["frames"])


@pytest.mark.parametrize("kw", [dict(num_workers=0), dict(num_workers=2), dict(num_workers=3),
                                dict(num_workers=2, rank=1, world_size=2), dict(num_workers=2, train=False),
                                dict(num_workers=2, pretext=SPEED), dict(num_workers=0, pretext=Pretext("arrow"))])
def test_start_yields_the_tail_of_the_epoch(shards, kw):
    full = epoch(shards, **kw)
    n = len(full)
    assert n >= 3
    for start in (1, n - 2, n):
        tail = epoch(shards, start, **kw)
        assert len(tail) == n - start
        assert all(same(a, b) for a, b in zip(tail, full[start:]))


def test_skipped_batches_are_neither_read_nor_decoded(shards, monkeypatch):
    decoded, read = [], []
    prepare = loader_module._cpu_prepare
    monkeypatch.setattr(loader_module, "_cpu_prepare",
                        lambda plan, out: (decoded.append(plan["key"]), prepare(plan, out)))
    original_read = FrontEnd.read

    def counting_read(self, positions):
        for item in original_read(self, positions):
            read.append(item[0])
            yield item
    monkeypatch.setattr(FrontEnd, "read", counting_read)
    full = epoch(shards)
    keys = [[m["key"] for m in b["meta"]] for b in full]
    assert decoded == [k for batch in keys for k in batch] and len(read) == len(decoded)
    decoded.clear(), read.clear()
    start = len(full) - 2
    epoch(shards, start)
    assert decoded == [k for batch in keys[start:] for k in batch]  # only the last two batches' samples
    assert len(read) == 2 * 2


@pytest.mark.skipif(importlib.util.find_spec("nvidia.dali") is None, reason="needs nvidia-dali")
def test_dali_start_yields_the_tail_of_the_epoch(shards):
    full = epoch(shards, backend="dali", num_workers=1)
    tail = epoch(shards, len(full) - 2, backend="dali", num_workers=1)
    assert len(tail) == 2 and all(same(a, b) for a, b in zip(tail, full[-2:]))


def test_front_end_refuses_a_start_past_the_epoch(shards):
    with pytest.raises(ValueError, match="start iteration 99"):
        epoch(shards, 99)


@pytest.mark.parametrize("train, world_size", [(True, 1), (True, 2), (False, 2)])
def test_feature_loader_start_yields_the_tail(train, world_size):
    entries = {f"v{i}": (torch.full((2, 3), float(i)), {"id": f"v{i}"}) for i in range(13)}
    for rank in range(world_size):
        kw = dict(batch_size=2, train=train, rank=rank, world_size=world_size, seed=3, epoch=2)
        full = list(FeatureLoader(entries, **kw))
        for start in range(len(full) + 1):
            loader = FeatureLoader(entries, start=start, **kw)
            tail = list(loader)
            assert len(loader) == len(full) and len(tail) == len(full) - start
            for a, b in zip(tail, full[start:]):
                assert torch.equal(a["features"], b["features"]) and a["meta"] == b["meta"]


def test_trainer_asks_the_loader_for_the_resume_position(tmp_path):
    # A trainer resumed at epoch 1, optimizer step 3 with 2 micro-batches per step builds that epoch's loader at
    # batch 6 and every later epoch's at 0; it never draws a batch it does not train on.
    from lofi.engine.checkpoint import Checkpointer
    from lofi.engine.distributed import DistInfo
    from lofi.engine.logger import RunLogger
    from lofi.engine.loop import LoopState, Trainer
    model = torch.nn.Linear(2, 1)
    calls, drawn = [], []

    class Loader:
        def __init__(self, epoch, start):
            self.epoch, self.start = epoch, start

        def __len__(self):
            return 10

        def __iter__(self):
            for i in range(self.start, 10):
                drawn.append((self.epoch, i))
                yield {"x": torch.full((1, 2), float(i))}

    def loader_fn(epoch, start):
        calls.append((epoch, start))
        return Loader(epoch, start)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(stage="t", modules={"model": model}, step_fn=lambda b, g: (model(b["x"]).sum(), {}),
                      loader_fn=loader_fn, optimizer=optimizer,
                      scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 1), epochs=3, info=DistInfo(),
                      checkpointer=Checkpointer(tmp_path / "ckpt", 1, True),
                      logger=RunLogger(tmp_path, enabled=False), seed=0, accum_steps=2)
    trainer.state = LoopState(epoch=1, iteration=3)
    trainer.fit()
    assert calls == [(1, 6), (2, 0)]
    assert drawn == [(1, i) for i in range(6, 10)] + [(2, i) for i in range(10)]
