"""G-TAD head: shapes at any L, parameter count, fused vs unfused SGAlign projection, kNN graph, classifiers."""
import pytest
import torch

from lofi.models import GCNeXt, GTAD, VideoClassifier, valid_mask
from lofi.models.gcnext import knn_context, knn_indices
from lofi.models.gtad import proposal_cells

SMALL = dict(hidden_1d=32, hidden_2d=16, hidden_3d=32, groups=8)


def test_parameter_count_activitynet_config():
    count = sum(p.numel() for p in GTAD(400).parameters())
    assert count == 5_563_268  # from the layer shapes of G-TAD's ActivityNet model


@pytest.mark.parametrize("L", [25, 50, 100])
def test_shapes_and_invalid_cells(L):
    torch.manual_seed(L)
    head = GTAD(16, **SMALL)
    out = head(torch.randn(2, 16, L))
    assert out["start"].shape == out["end"].shape == (2, L)
    assert out["maps"].shape == (2, 2, L, L)
    valid = valid_mask(L)
    assert valid.sum() == L * (L + 1) // 2
    maps = out["maps"]
    assert (maps[:, :, ~valid] == 0).all()
    assert ((maps[:, :, valid] > 0) & (maps[:, :, valid] < 1)).all()
    assert ((out["start"] > 0) & (out["start"] < 1)).all()


def test_cells_cached_per_length():
    head = GTAD(16, **SMALL)
    a = head.cells(10, "cpu")
    assert head.cells(10, "cpu") is a and head.cells(12, "cpu") is not a
    flat, windows, _ = a
    d, s = flat // 10, flat % 10
    assert ((s + d) <= 9).all() and len(flat) == 55
    # window = [s − 0.5(d+1), s + d + 0.5(d+1)] snippets (G-TAD's expanded anchor)
    torch.testing.assert_close(windows[:, 0], s - 0.5 * (d + 1.0))
    torch.testing.assert_close(windows[:, 1], s + d + 0.5 * (d + 1.0))
    rois = head.rois(3, 10, "cpu")
    assert rois.shape == (165, 3) and rois[:55, 0].eq(0).all() and rois[110:, 0].eq(2).all()


def test_proposal_cells_order():
    d, s = proposal_cells(4)
    assert list(zip(d.tolist(), s.tolist()))[:5] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    assert ((s + d) <= 3).all() and len(d) == 10


@pytest.mark.parametrize("L", [7, 33])
def test_fused_matches_unfused(L):
    torch.manual_seed(0)
    fused = GTAD(16, fused=True, **SMALL).double()
    unfused = GTAD(16, fused=False, **SMALL).double()
    unfused.load_state_dict(fused.state_dict())
    x = torch.randn(2, 16, L, dtype=torch.float64, requires_grad=True)
    a, b = fused(x), unfused(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-10)
    ga = torch.autograd.grad(a["maps"].sum(), [x, fused.proj.weight])
    gb = torch.autograd.grad(b["maps"].sum(), [x, unfused.proj.weight])
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-8, atol=1e-9)


def test_knn_graph_includes_self_and_is_per_video():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 9)
    idx = knn_indices(x, 3)
    assert idx.shape == (2, 9, 3)
    assert (idx[..., 0] == torch.arange(9)).all()  # nearest is the snippet itself
    dist = torch.cdist(x.transpose(1, 2), x.transpose(1, 2))
    expected = dist.topk(3, largest=False).indices
    assert torch.equal(idx.sort(-1).values, expected.sort(-1).values)
    ctx = knn_context(x, 3)
    torch.testing.assert_close(ctx[1, :, 4], x[1][:, idx[1, 4]].mean(1))


def test_gcnext_block():
    block = GCNeXt(64, k=3, groups=32, width_group=4)
    x = torch.randn(2, 64, 11, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape and (y >= 0).all()
    y.sum().backward()
    assert x.grad.abs().sum() > 0


def test_video_classifier():
    clf = VideoClassifier(16, 7)
    feats = torch.randn(3, 16, 10)
    out = clf(feats)
    assert out.shape == (3, 7)
    torch.testing.assert_close(out, clf.fc(feats.mean(-1)))


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="divisible by 4"):
        GTAD(10)
    with pytest.raises(ValueError, match=r"\(B, C, L\)"):
        GTAD(16, **SMALL)(torch.randn(16, 10))


@pytest.mark.cuda
def test_cuda_fused_matches_unfused_and_cpu():
    torch.manual_seed(0)
    fused = GTAD(64, fused=True)
    unfused = GTAD(64, fused=False)
    unfused.load_state_dict(fused.state_dict())
    x = torch.randn(2, 64, 50)
    ref = fused(x)
    a, b = fused.cuda()(x.cuda()), unfused.cuda()(x.cuda())
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a[k].cpu(), ref[k], rtol=1e-4, atol=1e-5)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = fused(x.cuda())
    assert torch.isfinite(out["maps"]).all()
