"""The pretext views (lofi.data.pretext): the frame indices of the time-reversed and the sped-up view at every clip
fidelity, the balanced labels, and, on a real clip, that both backends decode exactly the frames the plan names."""
import importlib.util

import numpy as np
import pytest
import torch
from video_shards import video_info, write_shards

from lofi.data import build_loader
from lofi.data.pretext import Pretext
from lofi.data.reader import FrontEnd
from lofi.data.sampling import snippet_frame_indices
from lofi.data.spatial import apply_crop
from lofi.fidelity import Fidelity

SPEED = Pretext("speed", normal=(1.0, 1.2), fast=(1.7, 2.3), zoom=(1.0, 1.5))
# (num_frames, start, end, L, T, stride): the demo's 1x4 clips 2 apart, 8 consecutive frames, several snippets, a
# segment inside a longer video, and a clip shorter than the sampled span (the sampler clips it)
CASES = [(30, 0, 30, 1, 4, 2), (48, 0, 48, 1, 8, None), (60, 0, 60, 4, 2, None), (90, 17, 61, 2, 4, 3),
         (40, 0, 40, 1, 16, None), (7, 0, 7, 1, 8, 2)]


@pytest.mark.parametrize("num_frames, start, end, L, T, stride", CASES)
def test_arrow_view_is_the_sampled_clip_reversed(num_frames, start, end, L, T, stride):
    for train in (True, False):
        views, meta = Pretext("arrow").views(num_frames, L, T, stride, start, end, train, np.random.default_rng(0))
        forward = snippet_frame_indices(num_frames, L, T, stride, start, end)
        assert views.shape == (2, L, T) and meta["pretext"] == [0, 1]
        np.testing.assert_array_equal(views[0], forward)  # the clip exactly as ACP samples it
        # the same L·T frames played backwards: snippet order and the frames inside each snippet reversed
        np.testing.assert_array_equal(views[1].reshape(-1), forward.reshape(-1)[::-1])


@pytest.mark.parametrize("num_frames, start, end, L, T, stride", CASES)
def test_speed_views_play_one_pattern_at_two_rates(num_frames, start, end, L, T, stride, seed):
    rng = np.random.default_rng(seed)
    firsts = set()
    for train in (True, False):
        for _ in range(20):
            views, meta = SPEED.views(num_frames, L, T, stride, start, end, train, rng)
            (r0, r1), n = meta["pretext_rates"], end - start
            assert meta["pretext"] == [0, 1] and views.shape == (2, L, T)
            assert 1.0 <= r0 <= 1.2 and 1.7 <= r1 <= 2.3
            assert views.min() >= start and views.max() < end  # inside the clip, so nothing is clipped or repeated
            # both views hold one sampling pattern: the stage's snippets over the longest window whose sped-up copy
            # fits the clip, each gap between sampled frames times the view's rate, rounded to whole frames
            window = int((n - 1) // r1) + 1
            pattern = snippet_frame_indices(window, L, T, stride)
            pattern -= pattern.min()
            for view, rate in zip(views, (r0, r1)):
                np.testing.assert_array_equal(view - view.min(), np.floor(rate * pattern + 0.5))
            assert views[1].max() - views[1].min() <= n - 1
            if train:
                firsts.add(int(views[1].min()))
            else:  # evaluation: each view centred in the clip
                for view in views:
                    assert abs((view.min() - start) - (end - 1 - view.max())) <= 1
        assert views.dtype == np.int64
    if n > 2.3 * (T - 1) * (stride or 1) + 2 * L:
        assert len(firsts) > 1  # training draws where each view starts


def test_speed_at_fixed_rates_skips_exactly():
    # rates fixed at 1x and 2x: the sped-up view takes every other frame of the span the normal view takes in order
    fixed = Pretext("speed", normal=(1.0, 1.0), fast=(2.0, 2.0))
    for L, T, stride in ((1, 4, 2), (1, 8, 1), (3, 4, None)):
        views, meta = fixed.views(64, L, T, stride, 0, 64, True, np.random.default_rng(1))
        normal, fast = (v.reshape(-1) - v.min() for v in views)
        assert meta["pretext_rates"] == [1.0, 2.0]
        np.testing.assert_array_equal(fast, 2 * normal)
        assert np.all(np.diff(views[1].reshape(-1)) >= 0)  # played forwards


def test_bad_pretext_settings_are_named():
    with pytest.raises(ValueError, match="pretext task must be one of"):
        Pretext("jigsaw")
    with pytest.raises(ValueError, match="pretext fast .* must lie above normal"):
        Pretext("speed", normal=(1.0, 2.0), fast=(1.5, 2.5))
    with pytest.raises(ValueError, match="pretext zoom must be a range 1 <= low <= high"):
        Pretext("speed", zoom=(0.5, 1.0))


# ------------------------------------------------------------------------------------------------- on a real clip

@pytest.fixture(scope="module")
def bikes_clip(shared_data, tmp_path_factory):
    """The real clip bikes.mp4 (25 fps) as a one-clip shard: VP9 (DALI's CPU decoder reads it), 15 fps, 48 px short
    side: 150 frames. Returns (shard dir, every frame decoded (150, 48, 112, 3) uint8)."""
    from lofi.data.backend_cpu import decode_frames
    from lofi.data.packing import Encoding, transcode
    mp4, meta = transcode(shared_data / "videos" / "bikes.mp4", Encoding(codec="vp9", short_side=48, copy=False))
    root = tmp_path_factory.mktemp("bikes")
    info = video_info("bikes", meta["num_frames"], meta["height"], meta["width"], fps=15, label="ride", label_id=0)
    write_shards(str(root), "training", [{"info": info, "mp4": mp4}], per_shard=1)
    return str(root), np.stack(decode_frames(mp4, np.arange(meta["num_frames"])))


def planned(monkeypatch):
    """Records every plan the front end makes (both backends decode from these)."""
    plans = []
    original = FrontEnd.plan

    def recording(self, *args):
        plans.append(original(self, *args))
        return plans[-1]
    monkeypatch.setattr(FrontEnd, "plan", recording)
    return plans


@pytest.mark.parametrize("backend", ["cpu", "dali"])
def test_real_clip_decodes_exactly_the_planned_views(bikes_clip, backend, monkeypatch):
    if backend == "dali" and importlib.util.find_spec("nvidia.dali") is None:
        pytest.skip("needs nvidia-dali")
    root, every = bikes_clip
    source = torch.from_numpy(every).permute(0, 3, 1, 2)  # (150, 3, 48, 112)
    for pretext in (Pretext("arrow"), SPEED):
        for fid, train, epoch in ((Fidelity(1, 4, 32, 32, 2), True, 0), (Fidelity(2, 3, 40, 40), True, 1),
                                  (Fidelity(1, 8, 32, 32), False, 0)):
            plans = planned(monkeypatch)
            batches = list(build_loader(root, "training", batch_size=1, schedule=lambda e, i: fid, train=train,
                                        epoch=epoch, seed=7, backend=backend, num_workers=0, pretext=pretext))
            assert len(batches) == len(plans) == 1
            (batch,), (plan,) = batches, plans
            frames, indices = batch["frames"][0], plan["frames"]
            assert frames.shape == (2, fid.L, fid.T, 3, fid.H, fid.W) and indices.shape == (2, fid.L, fid.T)
            if pretext.task == "arrow":
                np.testing.assert_array_equal(indices[1].reshape(-1), indices[0].reshape(-1)[::-1])
            reference = apply_crop(source, plan["crop"]).float()  # every frame of the clip, cropped as planned
            errors = (frames.reshape(-1, 1, 3, fid.H, fid.W).float() - reference[None]).abs().mean((2, 3, 4))
            intended = torch.from_numpy(indices.reshape(-1))
            own = errors[torch.arange(len(intended)), intended]
            if backend == "cpu":  # PyAV + the same torch crop: exactly the planned frames
                assert torch.all(own == 0), pretext
            else:  # DALI's own resize: within 3 levels, and no other frame of the clip fits better
                assert own.max() <= 3.0 and torch.all(own <= errors.min(1).values + 1.0), pretext
            labels = [label for m in batch["meta"] for label in m["pretext"]]
            assert labels.count(0) == labels.count(1) == len(batch["meta"])  # balanced in every batch


def test_training_batches_hold_both_views_of_every_clip(tmp_path, monkeypatch):
    """Several clips per batch: every clip contributes one view of each label, so the labels are exactly balanced;
    the sped-up rate is drawn per clip, and the zoom too, in training only (48 px frames → 32: unzoomed 32 rows)."""
    items = [{"info": video_info(f"c{i}", 30 + 7 * i, 48, 64, label="a", label_id=0)} for i in range(5)]
    write_shards(str(tmp_path), "training", items, per_shard=5)
    fid = Fidelity(1, 4, 32, 32, 2)
    for train in (True, False):
        plans = planned(monkeypatch)
        loader = build_loader(str(tmp_path), "training", batch_size=2, schedule=lambda e, i: fid, train=train,
                              epoch=0, seed=3, backend="cpu", num_workers=0, pretext=SPEED)
        rates = set()
        for batch in loader:
            assert batch["frames"].shape == (2, 2, 1, 4, 3, 32, 32)
            assert [m["pretext"] for m in batch["meta"]] == [[0, 1]] * 2
            assert all(m["snippet_times"].shape == (2, 1) for m in batch["meta"])
            rates |= {m["pretext_rates"][1] for m in batch["meta"]}
        assert len(rates) > 1
        zoomed = {p["crop"].resize_h for p in plans}
        assert (len(zoomed) > 1 and min(zoomed) >= 32 and max(zoomed) <= 48) if train else zoomed == {32}


@pytest.mark.skipif(importlib.util.find_spec("nvidia.dali") is None, reason="needs nvidia-dali")
def test_dali_fallback_keeps_the_views(tmp_path):
    """A batch DALI fails on is decoded by PyAV in the plan's view layout: the cpu backend's frames."""
    from lofi.data.backend_dali import cpu_fallback
    write_shards(str(tmp_path), "training", [{"info": video_info(f"c{i}", 40, 48, 64)} for i in range(2)], per_shard=2)
    fid = Fidelity(2, 3, 32, 32)
    kw = dict(batch_size=2, schedule=lambda e, i: fid, train=True, epoch=0, seed=5, num_workers=0, pretext=SPEED)
    planned_batch = next(iter(build_loader(str(tmp_path), "training", backend="dali", **kw).front))
    with pytest.warns(UserWarning, match="DALI failed"):
        fallback = cpu_fallback(planned_batch, True, RuntimeError("decoder failed"))
    decoded = next(iter(build_loader(str(tmp_path), "training", backend="cpu", **kw)))
    assert fallback["frames"].shape == (2, 2, 2, 3, 3, 32, 32) and torch.equal(fallback["frames"], decoded["frames"])
