"""Soft-NMS: the reference against a literal G-TAD-style loop, the public API (kernels) against the reference."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import lofi.ops
from lofi.ops import batched_soft_nms, batched_soft_nms_reference, soft_nms, soft_nms_reference
from lofi.ops.soft_nms_baselines import bmn_style_soft_nms, gtad_like_inputs, gtad_style_soft_nms

NEAR_TIE = 1e-6  # relative score gap within which implementations may pick different candidates
METHODS = ("gaussian", "linear", "hard", "bmn")
KERNEL = lofi.ops.available()


TINY = torch.finfo(torch.float64).tiny  # scores are decayed in float64; below this, rounding is absolute (subnormals)


def rounding_rtol(dtype):
    """Implementations agree up to float64 rounding (accumulated over <= 100 picks), then a cast to ``dtype``."""
    return 1e-12 if dtype == torch.float64 else 2 * torch.finfo(dtype).eps


# ---------------------------------------------------------------------------------------------------------------------
# Oracles written independently of lofi.ops.soft_nms


def assert_valid_selection(segments, scores, idx, out, sigma, top_k, method, iou_threshold, num_valid=None,
                           high_threshold=0.9):
    """Replays soft-NMS in NumPy float64 along the picks in ``idx`` (B, top_k) and asserts that each pick was the
    best remaining candidate, or within NEAR_TIE relative of it (the only allowed divergence), that each emitted score
    equals the replayed decayed score up to rounding in the output dtype, that the run stops only when nothing positive
    remains, and that the padding is -1 / 0. Returns how many picks were near-tie deviations from the lowest-index
    argmax."""
    seg = segments.detach().cpu().double().numpy()
    sc = scores.detach().cpu().double().numpy()
    idx = idx.cpu().numpy()
    out = out.cpu()
    assert idx.shape == (sc.shape[0], top_k) and out.shape == idx.shape and out.dtype == scores.dtype
    rtol = rounding_rtol(scores.dtype)
    deviations = 0
    for b in range(sc.shape[0]):
        n = sc.shape[1] if num_valid is None else int(num_valid[b])
        starts, ends = seg[b, :n, 0], seg[b, :n, 1]
        lengths = ends - starts
        cur = sc[b, :n].copy()
        alive = cur > 0  # not yet picked, and positive at the start (decayed scores may round to 0 differently)
        for k in range(top_k):
            i = int(idx[b, k])
            if i < 0:
                assert not (cur[alive] > TINY).any(), f"video {b} stopped after {k} picks with positive candidates left"
                assert (idx[b, k:] == -1).all() and (out[b, k:] == 0).all()
                break
            assert i < n and alive[i], f"video {b} pick {k}: index {i} is not a remaining candidate"
            best = cur[alive].max()
            # Gaussian decay (also BMN's) may underflow: a subnormal score can round to 0 here and not there.
            assert cur[i] > 0 or method in ("gaussian", "bmn"), f"video {b} pick {k}: {i} was suppressed to 0"
            assert cur[i] >= best - NEAR_TIE * best - TINY, f"video {b} pick {k}: {i} ({cur[i]}) is not best ({best})"
            first = int(np.flatnonzero(alive & (cur == best))[0])
            deviations += int(i != first)
            expected = torch.tensor(cur[i], dtype=torch.float64).to(scores.dtype)
            torch.testing.assert_close(out[b, k], expected, rtol=rtol, atol=TINY)
            alive[i] = False
            inter = np.maximum(np.minimum(ends, ends[i]) - np.maximum(starts, starts[i]), 0)
            union = (lengths + (ends[i] - starts[i])) - inter
            iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0)
            if method == "gaussian":
                weight = np.exp(-(iou * iou) / sigma)
            elif method == "bmn":
                width = ends[i] - starts[i]
                weight = np.where(iou > iou_threshold + (high_threshold - iou_threshold) * width,
                                  np.exp(-(iou * iou) / sigma), 1.0)
            elif method == "linear":
                weight = np.where(iou >= iou_threshold, 1 - iou, 1)
            else:
                weight = np.where(iou >= iou_threshold, 0.0, 1.0)
            cur = cur * weight
    return deviations


# ---------------------------------------------------------------------------------------------------------------------
# Inputs


def random_inputs(gen, b, n, dtype=torch.float64, grid=False, quantize=False):
    """Random segments in [0, 1] (on a 1/16 grid when ``grid``: exact IoUs, duplicates, zero lengths) and scores in
    (0, 1] (multiples of 0.125 when ``quantize``: exact ties), some non-positive."""
    if grid:
        pts = torch.randint(0, 17, (b, n, 2), generator=gen).to(dtype) / 16
    else:
        pts = torch.rand(b, n, 2, generator=gen, dtype=dtype)
    segments = torch.sort(pts, dim=-1).values
    if quantize:
        scores = torch.randint(-1, 9, (b, n), generator=gen).to(dtype) / 8
    else:
        scores = torch.rand(b, n, generator=gen, dtype=dtype) * 1.1 - 0.1
    return segments, scores


def kernel_devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ---------------------------------------------------------------------------------------------------------------------
# The reference: G-TAD semantics


@pytest.mark.parametrize("n,top_k,sigma", [(1, 100, 0.8), (7, 3, 0.84), (60, 100, 0.8), (200, 50, 0.3)])
def test_reference_matches_gtad_loop(seed, n, top_k, sigma):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(3):
        segments, scores = random_inputs(gen, 1, n)
        ref_idx, ref_scores = soft_nms_reference(segments[0], scores[0], sigma=sigma, top_k=top_k)
        idx, out = gtad_style_soft_nms(segments[0].tolist(), scores[0].tolist(), sigma, top_k)
        assert ref_idx.tolist() == idx
        torch.testing.assert_close(ref_scores, torch.tensor(out, dtype=torch.float64), rtol=1e-12, atol=TINY)


def test_reference_matches_gtad_loop_on_grid_with_ties(seed):
    # Segments on a 1/16 grid: the hull and the sum-minus-intersection unions are both exact, so ties stay exact.
    gen = torch.Generator().manual_seed(seed)
    segments, scores = random_inputs(gen, 1, 80, grid=True, quantize=True)
    ref_idx, ref_scores = soft_nms_reference(segments[0], scores[0], sigma=0.8, top_k=100)
    idx, out = gtad_style_soft_nms(segments[0].tolist(), scores[0].tolist(), 0.8, 100)
    assert ref_idx.tolist() == idx
    torch.testing.assert_close(ref_scores, torch.tensor(out, dtype=torch.float64), rtol=1e-12, atol=TINY)


# ---------------------------------------------------------------------------------------------------------------------
# BMN's rule: exp(-IoU²/sigma) only where IoU > low + (high - low)·(width of the pick)

ANET_BMN = dict(method="bmn", sigma=0.4, iou_threshold=0.5, high_threshold=0.9, top_k=100)  # BMN's ActivityNet values
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
BATCHED = [pytest.param(batched_soft_nms, id="api"), pytest.param(batched_soft_nms_reference, id="reference")]


@pytest.mark.parametrize("grid", [False, True])
@pytest.mark.parametrize("low,high", [(0.5, 0.9), (0.2, 0.6), (-0.3, 0.4)])  # (-0.3, 0.4): IoU 0 exceeds some
def test_bmn_reference_matches_python_loop(seed, grid, low, high):
    gen = torch.Generator().manual_seed(seed)
    segments, scores = random_inputs(gen, 3, 150, grid=grid, quantize=grid)
    for b in range(3):
        ref_idx, ref_scores = soft_nms_reference(segments[b], scores[b], sigma=0.4, top_k=100, method="bmn",
                                                 iou_threshold=low, high_threshold=high)
        idx, out = bmn_style_soft_nms(segments[b].tolist(), scores[b].tolist(), 0.4, low, high, 100)
        assert ref_idx.tolist() == idx
        torch.testing.assert_close(ref_scores, torch.tensor(out, dtype=torch.float64), rtol=1e-12, atol=TINY)


@pytest.mark.skipif(not KERNEL, reason="lofi._C is not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bmn_cpu_op_matches_reference_and_python_loop_with_ties(seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    for grid, quantize, n in [(True, True, 300), (True, False, 120), (False, True, 400), (False, False, 200)]:
        segments, scores = random_inputs(gen, 6, n, dtype, grid=grid, quantize=quantize)
        segments[:, n // 2:n // 2 + 10] = segments[:, :10]  # duplicate segments with equal scores: exact ties
        scores[:, n // 2:n // 2 + 10] = scores[:, :10]
        num_valid = torch.randint(0, n + 1, (6,), generator=gen)
        num_valid[0] = n
        ref_idx, ref_out = batched_soft_nms_reference(segments, scores, num_valid, **ANET_BMN)
        idx, out = torch.ops.lofi.batched_soft_nms(segments, scores, num_valid, 0.4, 100, 3, 0.5, 0.9)
        for picks, values in ((ref_idx, ref_out), (idx, out)):
            assert_valid_selection(segments, scores, picks, values, 0.4, 100, "bmn", 0.5, num_valid, 0.9)
        same = (idx == ref_idx).all(1)
        torch.testing.assert_close(out[same], ref_out[same], rtol=rounding_rtol(dtype), atol=TINY)
        for b in range(6):
            m = int(num_valid[b])
            loop_idx, loop_out = bmn_style_soft_nms(segments[b, :m].tolist(), scores[b, :m].tolist(), 0.4, 0.5, 0.9,
                                                    100)
            if idx[b, :len(loop_idx)].tolist() == loop_idx:  # else a near tie, which assert_valid_selection allowed
                assert (idx[b, len(loop_idx):] == -1).all()
                expected = torch.tensor(loop_out, dtype=torch.float64).to(dtype)
                torch.testing.assert_close(out[b, :len(loop_idx)], expected, rtol=rounding_rtol(dtype), atol=TINY)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batched", BATCHED)
def test_bmn_threshold_is_strict(batched, dtype, device):
    # Low 0.5, high 1: a pick [0, 0.5] decays IoUs above 0.75; every number here is exact in binary.
    eps = 2.0 ** -20
    segments = torch.tensor([[[0, 0.5], [0, 0.375], [1, 2], [0, 0]],  # IoU exactly 0.75: no decay
                             [[0, 0.5], [0, 0.375 + eps], [0, 0.375 - eps], [1, 2]]],  # IoU 0.75 ± 2^-19
                            dtype=dtype, device=device)
    scores = torch.tensor([[0.9, 0.8, 0.1, 10.0], [0.9, 0.8, 0.7, 0.1]], dtype=dtype, device=device)
    num_valid = torch.tensor([3, 4], device=device)  # video 0's padding would win every pick if it counted
    idx, out = batched(segments, scores, num_valid, sigma=0.4, top_k=4, method="bmn", iou_threshold=0.5,
                       high_threshold=1.0)
    assert idx.tolist() == [[0, 1, 2, -1], [0, 2, 3, 1]]
    # Video 1: candidate 1 decays after pick 0, and again after pick 2 (width 0.375 - eps: threshold about 0.69).
    again = (0.375 - eps) / (0.375 + eps)
    last = 0.8 * math.exp(-(0.75 + 2 * eps) ** 2 / 0.4) * math.exp(-again ** 2 / 0.4)
    expected = torch.tensor([[0.9, 0.8, 0.1, 0], [0.9, 0.7, 0.1, last]], dtype=torch.float64).to(dtype)
    torch.testing.assert_close(out.cpu(), expected, rtol=rounding_rtol(dtype), atol=0)
    # The Gaussian rule decays at any overlap: with sigma 0.1, video 0's candidate 1 falls below the disjoint 0.1.
    assert batched(segments, scores, num_valid, sigma=0.1, top_k=4)[0][0].tolist() == [0, 2, 1, -1]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batched", BATCHED)
def test_bmn_wide_picks_decay_nothing(batched, device, seed):
    # Segments in seconds, all wider than 1.25: threshold 0.5 + 0.4·w > 1 >= every IoU, so the result is the plain
    # top-k by score (ties: the lowest index), scores unchanged.
    gen = torch.Generator().manual_seed(seed)
    start = torch.rand(4, 200, generator=gen, dtype=torch.float64) * 100
    segments = torch.stack([start, start + 1.5 + 30 * torch.rand(4, 200, generator=gen, dtype=torch.float64)], -1)
    segments[:, 100:150] = segments[:, :50]  # duplicates: IoU 1
    scores = torch.randint(-1, 9, (4, 200), generator=gen).double() / 8  # ties, some non-positive
    idx, out = batched(segments.to(device), scores.to(device), **dict(ANET_BMN, top_k=60))
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :60]
    ranked = torch.gather(scores, 1, order)
    assert torch.equal(idx.cpu(), torch.where(ranked > 0, order, -1))
    assert torch.equal(out.cpu(), ranked.clamp_min(0))
    gaussian, _ = batched(segments.to(device), scores.to(device), **dict(ANET_BMN, top_k=60, method="gaussian"))
    assert not torch.equal(gaussian.cpu(), idx.cpu())  # the same inputs do decay under the Gaussian rule


@pytest.mark.parametrize("method", ["gaussian", "linear", "hard"])
@pytest.mark.parametrize("batched", BATCHED)
def test_high_threshold_is_ignored_by_other_methods(batched, method, seed):
    gen = torch.Generator().manual_seed(seed)
    segments, scores = random_inputs(gen, 3, 100, grid=True, quantize=True)
    a = batched(segments, scores, sigma=0.5, top_k=50, method=method, iou_threshold=0.3, high_threshold=0.9)
    b = batched(segments, scores, sigma=0.5, top_k=50, method=method, iou_threshold=0.3, high_threshold=-5.0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_checker_rejects_a_wrong_order(seed):
    gen = torch.Generator().manual_seed(seed)
    segments, scores = gtad_like_inputs(1, 30, seed, torch.float64)
    idx, out = batched_soft_nms_reference(segments, scores, top_k=20)
    assert assert_valid_selection(segments, scores, idx, out, 0.8, 20, "gaussian", 0.5) == 0
    swapped = idx.clone()
    swapped[0, [3, 4]] = idx[0, [4, 3]]
    with pytest.raises(AssertionError):
        assert_valid_selection(segments, scores, swapped, out, 0.8, 20, "gaussian", 0.5)


# ---------------------------------------------------------------------------------------------------------------------
# Hand-checked cases, through the public API (the kernel where built) and the reference

APIS = [pytest.param((soft_nms, batched_soft_nms), id="api"),
        pytest.param((soft_nms_reference, batched_soft_nms_reference), id="reference")]


@pytest.mark.parametrize("apis", APIS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hand_computed_methods(apis, dtype):
    single, _ = apis
    segments = torch.tensor([[0, 10], [0, 5], [2, 12], [20, 30]], dtype=dtype)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], dtype=dtype)
    idx, out = single(segments, scores, method="hard", iou_threshold=0.5)
    assert idx.tolist() == [0, 3] and out.dtype == dtype
    torch.testing.assert_close(out, torch.tensor([0.9, 0.6], dtype=dtype))
    idx, out = single(segments, scores, method="linear", iou_threshold=0.5)
    assert idx.tolist() == [0, 3, 1, 2]  # [0,5] vs [2,12]: IoU 0.25 < 0.5, no further decay
    torch.testing.assert_close(out, torch.tensor([0.9, 0.6, 0.4, 0.7 / 3], dtype=dtype))
    idx, out = single(segments, scores, sigma=0.5, top_k=3)
    assert idx.tolist() == [0, 3, 1]  # after the first pick: 0.6 > 0.8·exp(-0.5²/0.5) = 0.485 > 0.7·exp(-(2/3)²/0.5)
    torch.testing.assert_close(out, torch.tensor([0.9, 0.6, 0.8 * math.exp(-0.25 / 0.5)], dtype=dtype))


@pytest.mark.parametrize("apis", APIS)
def test_ties_go_to_the_lowest_index(apis):
    single, _ = apis
    # Identical segments, equal scores: each pick decays the rest equally, so every step is an exact tie.
    segments = torch.tensor([[0.2, 0.6]] * 6, dtype=torch.float32)
    idx, out = single(segments, torch.full((6,), 0.5), sigma=0.8)
    assert idx.tolist() == list(range(6))
    torch.testing.assert_close(out, 0.5 * torch.exp(-torch.arange(6.0) / 0.8))
    # Two disjoint clusters with tied scores: picks alternate between them, lowest index first.
    segments = torch.tensor([[0.5, 0.6], [0.0, 0.1], [0.5, 0.6], [0.0, 0.1]])
    idx, _ = single(segments, torch.ones(4))
    assert idx.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("apis", APIS)
def test_all_equal_scores(apis, seed):
    _, batched = apis
    gen = torch.Generator().manual_seed(seed)
    segments, _ = random_inputs(gen, 3, 200, grid=True)
    scores = torch.full((3, 200), 0.7, dtype=torch.float64)
    idx, out = batched(segments, scores, top_k=100)
    assert_valid_selection(segments, scores, idx, out, 0.8, 100, "gaussian", 0.5)  # decayed near ties: either
    for b in range(3):
        # Undecayed candidates tie exactly: first 0, then the lowest index that segment 0 does not overlap.
        s, e = segments[b, :, 0], segments[b, :, 1]
        disjoint = torch.nonzero((torch.minimum(e, e[0]) - torch.maximum(s, s[0]) <= 0) | (e == s) | (e[0] == s[0]))
        disjoint = disjoint[disjoint > 0]
        assert idx[b, 0] == 0 and (len(disjoint) == 0 or idx[b, 1] == disjoint[0])
        assert out[b, 0] == 0.7


@pytest.mark.parametrize("apis", APIS)
def test_zero_length_segments_overlap_nothing(apis):
    single, _ = apis
    segments = torch.tensor([[0.3, 0.3], [0.3, 0.3], [0.1, 0.5], [0.4, 0.2], [0.3, 0.3]], dtype=torch.float64)
    scores = torch.tensor([0.5, 0.9, 0.7, 0.8, 0.5], dtype=torch.float64)
    idx, out = single(segments, scores)
    assert idx.tolist() == [1, 3, 2, 0, 4]  # nothing decays: sorted by score, ties by index
    torch.testing.assert_close(out, scores[idx], rtol=0, atol=0)


@pytest.mark.parametrize("apis", APIS)
def test_fewer_candidates_than_top_k_and_last_one_is_emitted(apis):
    single, batched = apis
    idx, out = single(torch.tensor([[0.0, 1.0]]), torch.tensor([0.25]))
    assert idx.tolist() == [0] and out.tolist() == [0.25]  # G-TAD's loop would emit nothing here
    segments = torch.tensor([[[0.0, 0.4], [0.5, 0.9], [0.1, 0.3]]])
    scores = torch.tensor([[0.3, 0.6, 0.2]])
    idx, out = batched(segments, scores, top_k=5)
    assert idx.tolist() == [[1, 0, 2, -1, -1]] and out.shape == (1, 5) and (out[0, 3:] == 0).all()


@pytest.mark.parametrize("apis", APIS)
def test_non_positive_scores_are_never_emitted(apis):
    single, _ = apis
    segments = torch.tensor([[0.0, 0.5], [0.0, 0.5], [0.6, 0.7], [0.8, 0.9]])
    idx, out = single(segments, torch.tensor([0.7, 0.6, 0.0, -0.5]), method="hard", iou_threshold=0.9)
    assert idx.tolist() == [0] and out.tolist() == [pytest.approx(0.7)]


@pytest.mark.parametrize("apis", APIS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_empty_inputs(apis, dtype):
    single, batched = apis
    idx, out = single(torch.zeros(0, 2, dtype=dtype), torch.zeros(0, dtype=dtype))
    assert idx.shape == (0,) and idx.dtype == torch.int64 and out.shape == (0,) and out.dtype == dtype
    idx, out = batched(torch.zeros(3, 0, 2, dtype=dtype), torch.zeros(3, 0, dtype=dtype), top_k=4)
    assert idx.tolist() == [[-1] * 4] * 3 and out.shape == (3, 4) and not out.any()
    idx, out = batched(torch.zeros(0, 5, 2, dtype=dtype), torch.zeros(0, 5, dtype=dtype), top_k=4)
    assert idx.shape == (0, 4) and out.shape == (0, 4)


@pytest.mark.parametrize("apis", APIS)
def test_num_valid_ignores_padding(apis, seed):
    single, batched = apis
    gen = torch.Generator().manual_seed(seed)
    segments, scores = random_inputs(gen, 4, 50, torch.float32)
    num_valid = torch.tensor([50, 17, 0, 1], dtype=torch.int32)
    padded_scores = scores.clone()
    for b, n in enumerate(num_valid.tolist()):
        padded_scores[b, n:] = 10.0  # padding that would win every pick if it counted
    idx, out = batched(segments, padded_scores, num_valid, top_k=30)
    for b, n in enumerate(num_valid.tolist()):
        ref_idx, ref_out = single(segments[b, :n], scores[b, :n], top_k=30)
        k = len(ref_idx)
        assert idx[b, :k].tolist() == ref_idx.tolist() and (idx[b, k:] == -1).all()
        torch.testing.assert_close(out[b, :k], ref_out)


# ---------------------------------------------------------------------------------------------------------------------
# Bad input


def _bad_cases():
    seg, sc = torch.rand(5, 2), torch.rand(5)
    bseg, bsc = torch.rand(2, 5, 2), torch.rand(2, 5)
    nan_seg = seg.clone()
    nan_seg[1, 0] = math.nan
    inf_sc = sc.clone()
    inf_sc[2] = math.inf
    return [
        (soft_nms, (seg[None], sc), {}, "segments"),
        (soft_nms, (seg[:, :1], sc), {}, "segments"),
        (soft_nms, (seg, sc[:4]), {}, "scores"),
        (soft_nms, (seg.half(), sc.half()), {}, "segments"),
        (soft_nms, (seg.long(), sc), {}, "segments"),
        (soft_nms, (seg, sc.double()), {}, "dtype"),
        (soft_nms, (seg.tolist(), sc), {}, "segments"),
        (soft_nms, (nan_seg, sc), {}, "segments contains NaN"),
        (soft_nms, (seg, inf_sc), {}, "scores contains NaN or inf"),
        (soft_nms, (seg, sc), {"top_k": 0}, "top_k"),
        (soft_nms, (seg, sc), {"top_k": 2.0}, "top_k"),
        (soft_nms, (seg, sc), {"sigma": 0.0}, "sigma"),
        (soft_nms, (seg, sc), {"sigma": -1}, "sigma"),
        (soft_nms, (seg, sc), {"sigma": math.inf}, "sigma"),
        (soft_nms, (seg, sc), {"sigma": math.nan}, "sigma"),
        (soft_nms, (seg, sc), {"sigma": 1e-310}, "sigma"),  # subnormal: 1 / sigma overflows to inf
        (batched_soft_nms, (bseg, bsc), {"sigma": 5e-324}, "sigma"),
        (soft_nms, (seg, sc), {"method": "soft"}, "method"),
        (soft_nms, (seg, sc), {"iou_threshold": math.nan}, "iou_threshold"),
        (soft_nms, (seg, sc), {"high_threshold": math.inf}, "high_threshold"),
        (soft_nms, (seg, sc), {"method": "bmn", "high_threshold": math.nan}, "high_threshold"),
        (soft_nms, (seg, sc), {"high_threshold": "0.9"}, "high_threshold"),
        (batched_soft_nms, (bseg, bsc), {"high_threshold": True}, "high_threshold"),
        (batched_soft_nms, (seg, sc), {}, "segments"),
        (batched_soft_nms, (bseg, bsc[0]), {}, "scores"),
        (batched_soft_nms, (bseg, bsc, torch.tensor([5])), {}, "num_valid"),
        (batched_soft_nms, (bseg, bsc, torch.tensor([5.0, 1.0])), {}, "num_valid"),
        (batched_soft_nms, (bseg, bsc, torch.tensor([6, 1])), {}, "num_valid"),
        (batched_soft_nms, (bseg, bsc, torch.tensor([-1, 1])), {}, "num_valid"),
        (batched_soft_nms, (bseg, bsc), {"top_k": -3}, "top_k"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
@pytest.mark.parametrize("reference", [False, True])
def test_bad_input_raises_naming_the_argument(case, reference):
    fn, args, kwargs, words = _bad_cases()[case]
    if reference:
        fn = {soft_nms: soft_nms_reference, batched_soft_nms: batched_soft_nms_reference}[fn]
    with pytest.raises(ValueError, match=words):
        fn(*args, **kwargs)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("sigma", [1e-310, 5e-324, 0.0, -0.8, math.nan, math.inf])
def test_raw_op_rejects_a_sigma_without_finite_reciprocal(device, sigma):
    # Direct torch.ops calls bypass the Python checks; the kernels refuse such a sigma themselves.
    segments = torch.tensor([[[0.0, 1.0], [0.0, 1.0], [2.0, 3.0]]], dtype=torch.float64, device=device)
    scores = torch.tensor([[0.9, 0.8, 0.7]], dtype=torch.float64, device=device)
    with pytest.raises(RuntimeError, match="sigma must be a finite number > 0 with a finite reciprocal"):
        torch.ops.lofi.batched_soft_nms(segments, scores, None, sigma, 10, 0, 0.5)
    # The smallest normal sigma is accepted, and the kernel agrees with the reference there.
    got = torch.ops.lofi.batched_soft_nms(segments, scores, None, 2.3e-308, 10, 0, 0.5)
    ref = batched_soft_nms_reference(segments.cpu(), scores.cpu(), sigma=2.3e-308, top_k=10)
    assert got[0][0, :3].tolist() == ref[0][0, :3].tolist() == [0, 2, -1]  # the copy of the pick decays to 0
    assert torch.equal(got[1].cpu(), ref[1])


@pytest.mark.skipif(not KERNEL, reason="lofi._C is not built")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("low,high", [(math.nan, 0.9), (0.5, math.inf), (0.5, -math.inf), (0.5, math.nan)])
def test_raw_op_rejects_non_finite_thresholds(device, low, high):
    segments = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]], dtype=torch.float64, device=device)
    scores = torch.tensor([[0.9, 0.8]], dtype=torch.float64, device=device)
    with pytest.raises(RuntimeError, match="iou_threshold and high_threshold must be finite"):
        torch.ops.lofi.batched_soft_nms(segments, scores, None, 0.4, 10, 3, low, high)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs two devices")
def test_bad_device_raises():
    with pytest.raises(ValueError, match="scores is on"):
        soft_nms(torch.rand(5, 2), torch.rand(5, device="cuda"))
    with pytest.raises(ValueError, match="num_valid is on"):
        batched_soft_nms(torch.rand(1, 5, 2), torch.rand(1, 5), torch.tensor([5], device="cuda"))


def test_check_false_skips_the_finite_checks_and_stays_in_bounds(seed):
    gen = torch.Generator().manual_seed(seed)
    segments, scores = random_inputs(gen, 3, 40, torch.float32)
    segments[0, 3, 1] = math.nan
    segments[1, 5] = torch.tensor([-math.inf, math.inf])
    scores[0, 7] = math.nan
    scores[1, 9] = math.inf
    scores[2, 11] = -math.inf
    num_valid = torch.tensor([40, 100, -5])  # out of range: clamped to [0, N]
    for fn in (batched_soft_nms, batched_soft_nms_reference):
        idx, out = fn(segments, scores, num_valid, top_k=50, method="hard", check=False)
        assert ((idx >= -1) & (idx < 40)).all() and (idx[2] == -1).all()
        assert idx[1, 0] == 9 and out[1, 0] == math.inf  # +inf wins, then zeroes what it overlaps (inf*0 = NaN dies)
    ref = batched_soft_nms_reference(segments, scores, num_valid, top_k=50, method="hard", check=False)
    got = batched_soft_nms(segments, scores, num_valid, top_k=50, method="hard", check=False)
    assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])


def test_fallback_without_extension():
    code = (
        "import torch\n"
        "from lofi.ops import soft_nms, soft_nms_reference, extension\n"
        "g = torch.Generator().manual_seed(0); seg = torch.sort(torch.rand(30, 2, generator=g)).values\n"
        "sc = torch.rand(30, generator=g); got = soft_nms(seg, sc, top_k=10)\n"
        "ref = soft_nms_reference(seg, sc, top_k=10)\n"
        "assert not extension.available()\n"
        "assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]) and len(got[0]) == 10\n"
        "print('ok')"
    )
    env = dict(os.environ, LOFI_DISABLE_EXTENSION="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# ---------------------------------------------------------------------------------------------------------------------
# Kernels against the reference (random inputs, fresh seeds)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_matches_reference_on_random_inputs(seed, method, dtype):
    gen = torch.Generator().manual_seed(seed)
    # sigma 0.002: Gaussian weights underflow to 0 (exp(-500)^2), which must end a video as in the reference.
    for grid, quantize, n, top_k, sigma in [(False, False, 300, 100, 0.5), (True, True, 300, 100, 0.5),
                                            (True, False, 40, 100, 0.5), (False, True, 500, 7, 0.5),
                                            (True, True, 200, 100, 0.002)]:
        segments, scores = random_inputs(gen, 5, n, dtype, grid=grid, quantize=quantize)
        num_valid = torch.randint(0, n + 1, (5,), generator=gen)
        # bmn: a pick of width w in [0, 1] decays IoUs above 0.4 + 0.4·w
        ref_idx, ref_out = batched_soft_nms_reference(segments, scores, num_valid, sigma, top_k, method, 0.4, 0.8)
        assert_valid_selection(segments, scores, ref_idx, ref_out, sigma, top_k, method, 0.4, num_valid, 0.8)
        for device in kernel_devices():
            idx, out = batched_soft_nms(segments.to(device), scores.to(device), num_valid.to(device), sigma=sigma,
                                        top_k=top_k, method=method, iou_threshold=0.4, high_threshold=0.8)
            assert idx.device.type == device and out.device.type == device
            assert_valid_selection(segments, scores, idx, out, sigma, top_k, method, 0.4, num_valid, 0.8)
            # Both stop when nothing positive is left; only subnormal scores may round to 0 in one and not the other.
            count, ref_count = (idx >= 0).sum(1).cpu(), (ref_idx >= 0).sum(1)
            for b, (c, r) in enumerate(zip(count.tolist(), ref_count.tolist())):
                extra = out[b, r:c].cpu() if c > r else ref_out[b, c:r]
                assert (extra.double() <= TINY).all(), f"video {b}: {c} picks, reference {r}"


def test_non_contiguous_inputs(seed):
    gen = torch.Generator().manual_seed(seed)
    segments, scores = random_inputs(gen, 3, 150, torch.float32)
    strided_segments = segments.transpose(1, 2).contiguous().transpose(1, 2)  # (B, N, 2) with strides (2N, 1, N)
    strided_scores = torch.stack([scores, scores], -1)[..., 0]
    assert not strided_segments.is_contiguous() and not strided_scores.is_contiguous()
    for device in kernel_devices():
        got = batched_soft_nms(strided_segments.to(device), strided_scores.to(device), top_k=50)
        want = batched_soft_nms(segments.to(device), scores.to(device), top_k=50)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_matches_reference_on_gtad_maps(seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    segments, scores = gtad_like_inputs(4, 100, seed, dtype)  # 5050 anchors per video, as in G-TAD on ActivityNet
    ref_idx, ref_out = batched_soft_nms_reference(segments, scores, sigma=0.8, top_k=100)
    idx, out = batched_soft_nms(segments, scores, sigma=0.8, top_k=100)
    assert (ref_idx[:, -1] >= 0).all()
    same = (idx == ref_idx).all(1)
    torch.testing.assert_close(out[same], ref_out[same], rtol=rounding_rtol(dtype), atol=TINY)
    assert_valid_selection(segments, scores, idx, out, 0.8, 100, "gaussian", 0.5)
    single_idx, single_out = soft_nms(segments[1], scores[1], sigma=0.8, top_k=100)
    assert torch.equal(single_idx, idx[1]) and torch.equal(single_out, out[1])


# ---------------------------------------------------------------------------------------------------------------------
# CUDA against the CPU kernel


@pytest.mark.cuda
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(seed, method, dtype):
    assert lofi.ops.cuda_compiled()
    gen = torch.Generator().manual_seed(seed)
    cases = [gtad_like_inputs(16, 100, seed, dtype) + (None,)]
    segments, scores = random_inputs(gen, 33, 2000, dtype, grid=True, quantize=True)
    cases.append((segments, scores, torch.randint(0, 2001, (33,), generator=gen)))
    # A video's state takes about 24 bytes per candidate: 2,000 to 8,000 need the opt-in shared memory above 48 KB,
    # 40,000 exceed it and use the global-memory workspace; 300 fit in the default 48 KB.
    cases += [random_inputs(gen, 3, 8_000, dtype) + (None,), random_inputs(gen, 2, 40_000, dtype) + (None,),
              random_inputs(gen, 7, 300, dtype) + (None,)]
    for segments, scores, num_valid in cases:
        cpu = batched_soft_nms(segments, scores, num_valid, sigma=0.8, top_k=100, method=method)
        nv = None if num_valid is None else num_valid.cuda()
        gpu = batched_soft_nms(segments.cuda(), scores.cuda(), nv, sigma=0.8, top_k=100, method=method)
        assert_valid_selection(segments, scores, gpu[0], gpu[1], 0.8, 100, method, 0.5, num_valid)
        same = (gpu[0].cpu() == cpu[0]).all(1)
        torch.testing.assert_close(gpu[1].cpu()[same], cpu[1][same], rtol=rounding_rtol(dtype), atol=TINY)


@pytest.mark.cuda
def test_cuda_edge_cases():
    idx, out = soft_nms(torch.zeros(0, 2, device="cuda"), torch.zeros(0, device="cuda"))
    assert idx.shape == (0,) and idx.is_cuda
    segments = torch.tensor([[0.2, 0.6]] * 6, device="cuda")
    idx, out = soft_nms(segments, torch.full((6,), 0.5, device="cuda"))
    assert idx.tolist() == list(range(6))
    segments = torch.rand(2, 3000, 2, device="cuda").sort(-1).values
    scores = torch.rand(2, 3000, device="cuda")
    scores[0, 5] = math.nan
    idx, out = batched_soft_nms(segments, scores, torch.tensor([3000, 7000], device="cuda"), top_k=300, check=False)
    assert ((idx >= -1) & (idx < 3000)).all()
    with pytest.raises(ValueError, match="scores contains NaN"):
        batched_soft_nms(segments, scores)
