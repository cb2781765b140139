"""BMN head: shapes at any L, the BM layer's sampling weights, the fused BM layer + Conv3d against the dense
computation of the public implementations, loss, targets, proposals, public checkpoint names, config section."""
import dataclasses
import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from lofi import ops
from lofi.config import BMNConfig, Config, ConfigError, PostprocessConfig, load_config, validate
from lofi.models import valid_mask
from lofi.models.bmn import BMN, bm_conv3d, bm_weights, dense_bm_mask

SMALL = dict(hidden_1d=16, hidden_2d=8, hidden_3d=16)


def reference_mask(L, num_samples=32, per_bin=3, ratio=0.5):
    """The BM layer's weights (L, N, D, L) [t, n, d, s] float64, point by point: cell (d, s) (s + d ≤ L − 1) samples
    N·per_bin points evenly over [s − ratio·(d+1), s + d + ratio·(d+1)], both ends included; a point x gives
    1 − f to trunc(x) and f to ceil(x) (math.modf's f, x's sign), on snippets within [0, L − 1]; a bin averages
    its points."""
    mask = torch.zeros(L, num_samples, L, L, dtype=torch.float64)
    K = num_samples * per_bin
    for d in range(L):
        for s in range(L - d):
            lo, hi = s - ratio * (d + 1), s + d + ratio * (d + 1)
            for k in range(K):
                x = lo + (hi - lo) / (K - 1) * k
                frac, whole = math.modf(x)
                for t, w in ((int(whole), 1 - frac), (math.ceil(x), frac)):
                    if 0 <= t <= L - 1:
                        mask[t, k // per_bin, d, s] += w / per_bin
    return mask


def dense_forward(head, features, mask):
    """The public implementations' computation: the BM features (B, C, N, D, L) as one matmul with the dense mask,
    then the Conv3d module itself; invalid cells zeroed at the end."""
    base = head.x_1d_b(features)
    x = head.x_1d_p(base)
    B, C, L = x.shape
    bm = (x.reshape(B * C, L) @ mask.reshape(L, -1)).view(B, C, mask.shape[1], L, L)
    maps = head.x_2d_p(head.x_3d_p(bm).squeeze(2))
    return {"start": head.x_1d_s(base).squeeze(1), "end": head.x_1d_e(base).squeeze(1),
            "maps": maps * valid_mask(L)}


def meta(*segments, duration=10.0):
    return {"id": "v", "duration": duration, "annotations": [{"segment": list(s), "label_id": 0} for s in segments]}


@pytest.mark.parametrize("L", [4, 16, 25, 50, 100])
def test_shapes_and_invalid_cells(L):
    torch.manual_seed(L)
    B = 1 if L == 100 else 2
    out = BMN(16, **SMALL)(torch.randn(B, 16, L))
    assert out["start"].shape == out["end"].shape == (B, L)
    assert out["maps"].shape == (B, 2, L, L)
    valid = valid_mask(L)
    assert (out["maps"][:, :, ~valid] == 0).all()
    assert ((out["maps"][:, :, valid] > 0) & (out["maps"][:, :, valid] < 1)).all()
    assert ((out["start"] > 0) & (out["start"] < 1) & (out["end"] > 0) & (out["end"] < 1)).all()


@pytest.mark.parametrize("L, N, per_bin, ratio", [(1, 32, 3, 0.5), (4, 32, 3, 0.5), (9, 32, 3, 0.5),
                                                  (16, 32, 3, 0.5), (7, 5, 2, 0.25), (6, 3, 4, 0.0)])
def test_bm_weights_match_pointwise_reference(L, N, per_bin, ratio):
    weights = bm_weights(L, N, per_bin, ratio)
    assert weights.is_coalesced() and weights.shape == (L * L, N * L)
    ref = reference_mask(L, N, per_bin, ratio)  # [t, n, d, s]
    torch.testing.assert_close(weights.to_dense().view(L, L, N, L), ref.permute(2, 3, 1, 0), rtol=0, atol=1e-15)
    torch.testing.assert_close(dense_bm_mask(weights, N), ref.reshape(L, -1), rtol=0, atol=1e-15)
    d, s = torch.nonzero(~valid_mask(L), as_tuple=True)
    assert weights.to_dense()[d * L + s].abs().sum() == 0  # invalid cells sample nothing


def test_bm_weights_by_hand():
    """L = 4, 96 points: cell (0, 0) samples [−0.5, 0.5], cell (3, 0) samples [−2, 5] (past both ends)."""
    L = 4
    w = bm_weights(L).to_dense().view(L, L, 32, L)  # [d, s, n, t]
    # cell (0, 0): bin 0's points −0.5, −0.489, −0.479 lie in (−1, 0): truncation puts 1 − f = 1 + |f| on snippet 0
    # and ceil puts f = −|f| there too, so the bin is snippet 0 with weight 1 (not the 1 − |x| of interpolation)
    assert w[0, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0], abs=1e-15)
    x = torch.tensor([-0.5 + k / 95 for k in (93, 94, 95)], dtype=torch.float64)  # bin 31: 0.479, 0.489, 0.5
    torch.testing.assert_close(w[0, 0, 31], torch.stack([(1 - x).mean(), x.mean(), x.new_zeros(()),
                                                          x.new_zeros(())]))
    # cell (3, 0): spacing 7/95; bin 0 (x = −2, −1.93, −1.85) and bin 31 (x = 4.85, 4.93, 5) fall outside [0, 3]
    assert w[3, 0, 0].abs().sum() == 0 and w[3, 0, 31].abs().sum() == 0
    x = [-2 + 7 * k / 95 for k in (66, 67, 68)]  # bin 22: 2.863, 2.937, 3.011 → snippet 4 of the last is dropped
    f = [v - math.trunc(v) for v in x]
    expected = [0.0, 0.0, ((1 - f[0]) + (1 - f[1])) / 3, (f[0] + f[1] + (1 - f[2])) / 3]
    assert w[3, 0, 22].tolist() == pytest.approx(expected, abs=1e-15)
    assert w[3, 0, 22].sum() < 1
    # a bin whose points all lie inside [0, L − 1] keeps the total weight 1
    torch.testing.assert_close(w[3, 0, 15].sum(), torch.tensor(1.0, dtype=torch.float64))
    assert bm_weights(100)._nnz() <= 6 * 32 * 5050


@pytest.mark.parametrize("L", [4, 9, 16])
def test_fused_bm_conv3d_equals_dense_conv3d(L):
    """Every cell, invalid ones included (they hold the bias, as in the public code): outputs and gradients."""
    torch.manual_seed(L)
    N = 32
    conv = torch.nn.Conv3d(6, 5, (N, 1, 1), stride=(N, 1, 1)).double()
    x = torch.randn(2, 6, L, dtype=torch.float64, requires_grad=True)
    mask = reference_mask(L, N)
    fused = bm_conv3d(x, bm_weights(L, N), conv.weight, conv.bias)
    dense = conv((x.reshape(12, L) @ mask.reshape(L, -1)).view(2, 6, N, L, L)).squeeze(2)
    torch.testing.assert_close(fused, dense, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(dense)
    grads_fused = torch.autograd.grad(fused, [x, conv.weight, conv.bias], g)
    grads_dense = torch.autograd.grad(dense, [x, conv.weight, conv.bias], g)
    for a, b in zip(grads_fused, grads_dense):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("L", [4, 9, 16])
def test_fused_head_equals_dense_head(L):
    """float64: the head's outputs and the gradients of the features and of every parameter; at every L the longest
    proposals' regions extend past both ends of the video."""
    torch.manual_seed(0)
    head = BMN(16, **SMALL).double()
    x = torch.randn(2, 16, L, dtype=torch.float64, requires_grad=True)
    fused, dense = head(x), dense_forward(head, x, reference_mask(L))
    for key in fused:
        torch.testing.assert_close(fused[key], dense[key], rtol=1e-10, atol=1e-10)
    weights = {key: torch.randn_like(v) for key, v in fused.items()}
    inputs = [x, *head.parameters()]

    def grads(out):
        return torch.autograd.grad(sum((out[k] * weights[k]).sum() for k in out), inputs)

    for name, a, b in zip(["features"] + [n for n, _ in head.named_parameters()], grads(fused), grads(dense)):
        assert a.abs().sum() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


def test_bm_weights_cached_per_length_device_dtype_and_not_state():
    head = BMN(16, **SMALL)
    a = head.bm_weights(10, "cpu", torch.float32)
    assert head.bm_weights(10, "cpu", torch.float32) is a
    assert head.bm_weights(12, "cpu", torch.float32) is not a
    assert head.bm_weights(10, "cpu", torch.float64)[0].dtype == torch.float64
    assert not any("mask" in k or "weights" in k for k in head.state_dict())


def test_inference_mode_first_then_training():
    """Weights first built under inference mode still serve a later training step."""
    torch.manual_seed(0)
    head = BMN(16, **SMALL)
    x = torch.randn(2, 16, 8)
    with torch.inference_mode():
        head(x)
    head(x)["maps"].sum().backward()
    assert head.x_3d_p[0].weight.grad.abs().sum() > 0


def test_bf16_autocast_cpu():
    torch.manual_seed(0)
    head = BMN(16, **SMALL)
    x = torch.randn(2, 16, 12, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x)
    reference = head(x.detach())
    assert (out["maps"][:, :, ~valid_mask(12)] == 0).all()
    torch.testing.assert_close(out["maps"].float(), reference["maps"], rtol=0, atol=0.03)
    loss = head.batch_loss(out, [meta((2, 5)), meta((1, 9))], 12, torch.Generator().manual_seed(0))["loss"]
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_loss_finite_without_annotations():
    torch.manual_seed(0)
    head = BMN(16, **SMALL)
    x = torch.randn(2, 16, 10, requires_grad=True)
    terms = head.batch_loss(head(x), [meta(), meta()], 10, torch.Generator().manual_seed(0))
    assert set(terms) == {"loss", "tem", "reg", "cls"}
    assert all(torch.isfinite(v) for v in terms.values())
    terms["loss"].backward()
    assert torch.isfinite(x.grad).all()


def test_gradients_reach_features_and_every_parameter():
    torch.manual_seed(0)
    head = BMN(16, **SMALL)
    x = torch.randn(2, 16, 10, requires_grad=True)
    loss = head.batch_loss(head(x), [meta((2, 5), (6, 9)), meta((0, 10))], 10,
                           torch.Generator().manual_seed(0))["loss"]
    loss.backward()
    assert x.grad.abs().sum() > 0
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_targets_by_hand():
    """L = 10 snippets of a 10 s video: snippet j is [j, j+1] s. A boundary x gets start/end target j's IoA of
    [x − 1.5, x + 1.5] s in the anchor [j − 0.5, j + 1.5] s; iou_map[d, s] = max IoU of [s, s+d+1] s with the GT."""
    head = BMN(16, **SMALL)
    t = head.targets([meta((2, 5)),            # boundaries on the snippet grid
                      meta((8, 14)),           # past the video's end: clipped to [8, 10]
                      meta((3, 3)),            # zero length
                      meta((1, 4), (2, 6))],   # overlapping
                     10)
    z = [0.0] * 10

    def vec(**values):
        return [values.get(f"j{j}", 0.0) for j in range(10)]

    assert t["start"][0].tolist() == pytest.approx(vec(j0=0.5, j1=1, j2=1, j3=0.5), abs=1e-6)
    assert t["end"][0].tolist() == pytest.approx(vec(j3=0.5, j4=1, j5=1, j6=0.5), abs=1e-6)
    assert t["start"][1].tolist() == pytest.approx(vec(j6=0.5, j7=1, j8=1, j9=0.5), abs=1e-6)
    assert t["end"][1].tolist() == pytest.approx(vec(j8=0.5, j9=1), abs=1e-6)
    assert t["start"][2].tolist() == pytest.approx(vec(j1=0.5, j2=1, j3=1, j4=0.5), abs=1e-6)
    assert t["end"][2].tolist() == t["start"][2].tolist()
    assert t["start"][3].tolist() == pytest.approx(vec(j0=1, j1=1, j2=1, j3=0.5), abs=1e-6)
    assert t["end"][3].tolist() == pytest.approx(vec(j2=0.5, j3=1, j4=1, j5=1, j6=1, j7=0.5), abs=1e-6)
    iou = t["iou_map"]  # [b, d, s]
    cells = {0: {(2, 2): 1.0, (3, 2): 0.3 / 0.4, (1, 2): 0.2 / 0.3, (0, 5): 0.0, (9, 0): 0.3},
             1: {(1, 8): 1.0, (0, 9): 0.5, (0, 8): 0.5, (2, 7): 2 / 3},
             3: {(2, 1): 1.0, (3, 2): 1.0, (4, 1): 0.8, (1, 2): 2 / 3, (0, 0): 0.0}}
    for b, expected in cells.items():
        for (d, s), value in expected.items():
            assert iou[b, d, s].item() == pytest.approx(value, abs=1e-6), (b, d, s)
    assert iou[2].abs().sum() == 0 and t["end"][2].tolist() != z  # a zero-length GT: boundaries but no IoU
    assert (iou[:, ~valid_mask(10)] == 0).all()


@pytest.mark.skipif("high_threshold" not in inspect.signature(ops.batched_soft_nms).parameters,
                    reason="needs the bmn soft-NMS rule")
@pytest.mark.parametrize("nms", ["gaussian", "bmn"])
def test_proposals(nms):
    torch.manual_seed(0)
    head = BMN(16, **SMALL).eval()
    with torch.no_grad():
        out = head(torch.randn(2, 16, 20))
    pp = PostprocessConfig(nms=nms, top_k=30)
    segments, scores, counts = head.proposals(out, pp)
    assert segments.shape == (2, 30, 2) and scores.shape == (2, 30) and segments.dtype == torch.float64
    for b in range(2):
        n = int(counts[b])
        assert 0 < n <= 30
        seg = segments[b, :n]
        assert ((seg[:, 0] >= 0) & (seg[:, 1] <= 1) & (seg[:, 0] < seg[:, 1])).all()
        assert (scores[b, :n] > 0).all()
    # BMN's score multiplies the boundary probabilities: the best proposal's score is at most cls × reg of its cell
    s0, e0 = (segments[0, 0] * 20).round().long().tolist()
    cell = out["maps"][0, :, e0 - 1 - s0, s0]
    assert scores[0, 0] <= cell[0] * cell[1] + 1e-6


# The public implementations' parameters (JJBOY/BMN-Boundary-Matching-Network models.py, mmaction2 BMN) for 400-d
# features with the default widths, and the fixed BM weights they store as the parameter ``sample_mask``.
PUBLIC_SHAPES = {
    "x_1d_b.0.weight": (256, 100, 3), "x_1d_b.0.bias": (256,), "x_1d_b.2.weight": (256, 64, 3), "x_1d_b.2.bias": (256,),
    "x_1d_s.0.weight": (256, 64, 3), "x_1d_s.0.bias": (256,), "x_1d_s.2.weight": (1, 256, 1), "x_1d_s.2.bias": (1,),
    "x_1d_e.0.weight": (256, 64, 3), "x_1d_e.0.bias": (256,), "x_1d_e.2.weight": (1, 256, 1), "x_1d_e.2.bias": (1,),
    "x_1d_p.0.weight": (256, 256, 3), "x_1d_p.0.bias": (256,),
    "x_3d_p.0.weight": (512, 256, 32, 1, 1), "x_3d_p.0.bias": (512,),
    "x_2d_p.0.weight": (128, 512, 1, 1), "x_2d_p.0.bias": (128,), "x_2d_p.2.weight": (128, 128, 3, 3),
    "x_2d_p.2.bias": (128,), "x_2d_p.4.weight": (128, 128, 3, 3), "x_2d_p.4.bias": (128,),
    "x_2d_p.6.weight": (2, 128, 1, 1), "x_2d_p.6.bias": (2,),
}


def test_public_state_dict_loads_one_to_one():
    head = BMN(400)
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == PUBLIC_SHAPES
    assert sum(p.numel() for p in head.parameters()) == 4_978_564
    torch.manual_seed(0)
    state = {k: torch.randn(shape) for k, shape in PUBLIC_SHAPES.items()}
    T = 16  # a public checkpoint has T = 100; the check reads T from the mask
    state["sample_mask"] = reference_mask(T).reshape(T, -1).float()
    head.load_state_dict(dict(state))  # strict
    for k, v in head.state_dict().items():
        assert torch.equal(v, state[k]), k
    other = dict(state, sample_mask=reference_mask(T, ratio=0.25).reshape(T, -1).float())
    with pytest.raises(ValueError, match="sample_mask differs .* T=16"):
        BMN(400).load_state_dict(other)
    with pytest.raises(ValueError, match=r"sample_mask has shape \(16, 100\)"):
        BMN(400).load_state_dict(dict(state, sample_mask=torch.zeros(16, 100)))


def test_in_dim_must_divide_by_four():
    with pytest.raises(ValueError, match="in_dim=18"):
        BMN(18)
    with pytest.raises(ValueError, match="hidden_1d=18"):
        BMN(16, hidden_1d=18)


def test_config_section_builds_the_head_and_is_validated():
    cfg = Config()
    head = BMN(400, **dataclasses.asdict(cfg.bmn))
    assert sum(p.numel() for p in head.parameters()) == 4_978_564
    assert dataclasses.asdict(BMNConfig()) == {k: v.default for k, v in inspect.signature(BMN).parameters.items()
                                               if k != "in_dim"}
    assert load_config(None, ["bmn.boundary_ratio=0.25"], check_paths=False).bmn.boundary_ratio == 0.25
    bad = dataclasses.replace(cfg, bmn=BMNConfig(hidden_1d=0, hidden_2d=-1, hidden_3d=6, num_samples=0,
                                                 num_samples_per_bin=3, boundary_ratio=-0.5))
    with pytest.raises(ConfigError) as err:
        validate(bad, check_paths=False)
    for key in ("bmn.hidden_1d: must be > 0", "bmn.hidden_2d: must be > 0", "bmn.num_samples: must be > 0",
                "bmn.num_samples: the BM layer needs", "bmn.boundary_ratio: must be ≥ 0"):
        assert key in str(err.value)
    assert "bmn.hidden_3d" not in str(err.value)
    with pytest.raises(ConfigError, match="bmn.hidden_1d: .*multiple of 4, got 6"):
        validate(dataclasses.replace(cfg, bmn=BMNConfig(hidden_1d=6)), check_paths=False)
    validate(cfg, check_paths=False)


@pytest.mark.cuda
def test_cuda_fused_equals_dense_and_is_deterministic():
    torch.manual_seed(0)
    head = BMN(16, **SMALL).cuda()
    x = torch.randn(2, 16, 25, device="cuda", requires_grad=True)
    fused, dense = head(x), dense_forward(head, x, reference_mask(25).float().cuda())
    for key in fused:
        torch.testing.assert_close(fused[key], dense[key], rtol=1e-4, atol=1e-5)
    runs = []
    for _ in range(2):
        out = head(x)
        runs.append(torch.autograd.grad(out["maps"].square().sum(), [x, head.x_3d_p[0].weight]))
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = head(x)
    F.relu(out["maps"]).sum().backward()
    assert torch.isfinite(x.grad).all()
