"""Score voting: hand-computed cases, padding, bad input, and the batched op against per-video calls and a plain
Python loop."""
import math

import pytest
import torch

from lofi.ops import batched_soft_nms, score_voting

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = [torch.float32, torch.float64]


def python_voting(kept, candidates, scores, iou):
    """One video in Python floats: each kept [s, e] becomes the score-weighted mean of the candidates with
    IoU >= iou; with no weight it stays."""
    out = []
    for ks, ke in kept:
        weight = start = end = 0.0
        for (cs, ce), score in zip(candidates, scores):
            inter = max(0.0, min(ke, ce) - max(ks, cs))
            union = (ke - ks) + (ce - cs) - inter
            if union > 0 and inter / union >= iou:
                weight += max(score, 0.0)
                start += max(score, 0.0) * cs
                end += max(score, 0.0) * ce
        out.append([start / weight, end / weight] if weight > 0 else [ks, ke])
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_hand_computed(dtype, device):
    candidates = torch.tensor([[[0, 10], [1, 10], [0, 9], [20, 30]]], dtype=dtype, device=device)
    scores = torch.tensor([[0.9, 0.6, 0.3, 0.8]], dtype=dtype, device=device)
    kept = torch.tensor([[[0, 10], [20, 30]]], dtype=dtype, device=device)
    counts = torch.tensor([2], device=device)
    # [1, 10] and [0, 9] overlap [0, 10] by IoU 0.9; [20, 30] has no neighbour and stays where it is.
    got = score_voting(kept, counts, candidates, scores, None, 0.8)
    want = torch.tensor([[[0.6 / 1.8, (9 + 6 + 2.7) / 1.8], [20, 30]]], dtype=torch.float64).to(dtype)
    torch.testing.assert_close(got.cpu(), want)
    assert got.dtype == dtype and got.device == kept.device
    # IoU 0.9 is reached at iou 0.9 (>=), not at 0.95: then only [0, 10] itself votes.
    torch.testing.assert_close(score_voting(kept, counts, candidates, scores, None, 0.9).cpu(), want)
    assert torch.equal(score_voting(kept, counts, candidates, scores, None, 0.95), kept)
    # The weights are the plain scores: with [1, 10] scored 0 only [0, 10] and [0, 9] vote.
    zeroed = scores.clone()
    zeroed[0, 1] = 0
    got = score_voting(kept, counts, candidates, zeroed, None, 0.8)
    torch.testing.assert_close(got[0, 0].cpu(), torch.tensor([0.0, (9 + 2.7) / 1.2], dtype=torch.float64).to(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_padding_and_weightless_segments_are_unchanged(device):
    candidates = torch.tensor([[[0.0, 0.4], [0.1, 0.4], [0.0, 0.41], [math.nan, math.inf]],
                               [[0.5, 0.9], [0.5, 0.8], [0.9, 1.0], [0.0, 0.0]]], dtype=torch.float64, device=device)
    scores = torch.tensor([[0.5, 0.5, 0.0, 9.0], [0.0, 0.0, 0.7, 0.2]], dtype=torch.float64, device=device)
    num_valid = torch.tensor([3, 3], device=device)  # video 0's last candidate (NaN, inf, score 9) is padding
    kept = torch.tensor([[[0.0, 0.4], [0.0, 0.41], [0.2, 0.3]],
                         [[0.5, 0.9], [0.3, 0.35], [0.9, 1.0]]], dtype=torch.float64, device=device)
    counts = torch.tensor([2, 2], device=device)
    got = score_voting(kept, counts, candidates, scores, num_valid, 0.7)
    # Video 0, kept 0: [0, 0.4] and [0.1, 0.4] (IoU 0.75) vote equally; [0, 0.41] scores 0.
    torch.testing.assert_close(got[0, 0].cpu(), torch.tensor([0.05, 0.4], dtype=torch.float64))
    torch.testing.assert_close(got[0, 1].cpu(), torch.tensor([0.05, 0.4], dtype=torch.float64))
    # Video 1, kept 0: its neighbours all score 0; kept 1: no candidate reaches it. Padding rows: unchanged.
    assert torch.equal(got[1, :2], kept[1, :2])
    assert torch.equal(got[:, 2], kept[:, 2])
    assert not got.isnan().any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_equals_per_video_and_python_loop(dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    b, n = 6, 120
    candidates = torch.sort(torch.randint(0, 33, (b, n, 2), generator=gen).to(dtype) / 32, -1).values  # duplicates
    scores = torch.randint(0, 9, (b, n), generator=gen).to(dtype) / 8  # ties, some 0
    num_valid = torch.randint(0, n + 1, (b,), generator=gen)
    num_valid[0] = n
    idx, _ = batched_soft_nms(candidates, scores, num_valid, sigma=0.5, top_k=30, method="bmn")
    counts = (idx >= 0).sum(1)
    kept = torch.gather(candidates, 1, idx.clamp_min(0)[..., None].expand(-1, -1, 2))
    kept = torch.where((idx >= 0)[..., None], kept, -1.0)  # padding rows
    got = score_voting(kept, counts, candidates, scores, num_valid, 0.6)
    assert (got != kept).any()  # some segments moved
    for v in range(b):
        m, c = int(num_valid[v]), int(counts[v])
        alone = score_voting(kept[v:v + 1, :c], counts[v:v + 1], candidates[v:v + 1, :m], scores[v:v + 1, :m], None,
                             0.6)
        torch.testing.assert_close(got[v, :c], alone[0])
        assert (got[v, c:] == -1).all()
        want = python_voting(kept[v, :c].tolist(), candidates[v, :m].tolist(), scores[v, :m].tolist(), 0.6)
        torch.testing.assert_close(got[v, :c], torch.tensor(want, dtype=torch.float64).reshape(c, 2).to(dtype))


def test_empty_inputs():
    kept = torch.zeros(2, 0, 2)
    assert score_voting(kept, torch.zeros(2, dtype=torch.int64), torch.zeros(2, 5, 2), torch.zeros(2, 5), None,
                        0.5).shape == (2, 0, 2)
    kept = torch.rand(2, 3, 2)
    got = score_voting(kept, torch.tensor([3, 3]), torch.zeros(2, 0, 2), torch.zeros(2, 0), None, 0.5)
    assert torch.equal(got, kept) and got is not kept


def _bad_cases():
    kept, counts = torch.rand(2, 3, 2), torch.tensor([3, 1])
    cand, sc = torch.rand(2, 5, 2), torch.rand(2, 5)
    return [
        ((kept[0], counts, cand, sc, None, 0.5), "kept must have shape"),
        ((kept, counts, cand[..., :1], sc, None, 0.5), "candidates must have shape"),
        ((kept, counts, cand, sc[:, :4], None, 0.5), "scores must have shape"),
        ((kept.double(), counts, cand, sc, None, 0.5), "kept is torch.float64"),
        ((kept, counts, cand, sc.half(), None, 0.5), "scores must be float32 or float64"),
        ((kept.tolist(), counts, cand, sc, None, 0.5), "kept must be a torch.Tensor"),
        ((kept, counts[:1], cand, sc, None, 0.5), "counts must be a"),
        ((kept, counts.float(), cand, sc, None, 0.5), "counts must have an integer dtype"),
        ((kept, counts, cand, sc, torch.tensor([5.0, 1.0]), 0.5), "num_valid must have an integer dtype"),
        ((kept, counts, cand, sc, torch.tensor([5]), 0.5), "num_valid must be a"),
        ((kept, counts, cand, sc, None, 0.0), "iou must be a number in"),
        ((kept, counts, cand, sc, None, 1.5), "iou must be a number in"),
        ((kept, counts, cand, sc, None, math.nan), "iou must be a number in"),
        ((kept, counts, cand, sc, None, True), "iou must be a number in"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_input_raises_naming_the_argument(case):
    args, words = _bad_cases()[case]
    with pytest.raises(ValueError, match=words):
        score_voting(*args)
