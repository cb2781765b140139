"""The compiled ops as the torch dispatcher sees them: schemas, fake kernels and autograd pass torch.library.opcheck,
and torch.compile traces the G-TAD head into one graph whose outputs and gradients equal eager mode."""
import pytest
import torch

import lofi.ops
from lofi.models.gtad import GTAD, anchor_rois, anchor_windows
from lofi.ops.sg_align import _no_transpose, _transpose_plan, sampling_plan
from lofi.ops.soft_nms_baselines import gtad_like_inputs

KERNEL = lofi.ops.available() and hasattr(torch.ops.lofi, "sg_align_plan")
pytestmark = pytest.mark.skipif(not KERNEL, reason="lofi._C is not built")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def plan_inputs(dtype, device="cpu", B=2, T=9, bins=(5, 2)):
    """ROIs of the G-TAD anchors plus a few partly outside [0, T], and their plan."""
    extra = torch.tensor([[0, -3.0, 2.5], [1, 6.0, 14.0], [1, 4.0, 4.0]])
    rois = torch.cat([anchor_rois(anchor_windows(T), B), extra]).to(device, dtype)
    plan = sampling_plan(rois, T, B, bins, dtype == torch.float64, sum(bins))
    return rois, plan


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_sg_align_plan(dtype, device):
    rois, _ = plan_inputs(dtype, device)
    torch.library.opcheck(torch.ops.lofi.sg_align_plan.default, (rois, 9, 2, [5, 2], dtype == torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sources,sum_bins", [(1, False), (7, False), (7, True)])
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_sg_align_gather(dtype, sources, sum_bins, device, seed):
    gen = torch.Generator().manual_seed(seed)
    _, plan = plan_inputs(dtype, device)
    x = torch.randn(2, sources, 9, 4, generator=gen, dtype=dtype).to(device).requires_grad_()
    torch.library.opcheck(torch.ops.lofi.sg_align_gather.default, (x, *plan[:4], 7, sum_bins))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows,sources", [(7, 1), (7, 7), (1, 7)])
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_sg_align_scatter(dtype, rows, sources, device, seed):
    # the backward of sg_align (rows=P, one source) and of the fused projection (rows summed, one source per bin)
    gen = torch.Generator().manual_seed(seed)
    rois, plan = plan_inputs(dtype, device)
    grad = torch.randn(rois.shape[0], rows, 4, generator=gen, dtype=dtype).to(device).requires_grad_()
    transposed = _transpose_plan(*plan[:4], 7, 2, sources, 9) if device == "cuda" else _no_transpose(plan)
    torch.library.opcheck(torch.ops.lofi.sg_align_scatter.default, (grad, *plan[:4], *transposed, 7, 2, sources, 9))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", [0, 1, 2, 3])
@pytest.mark.parametrize("with_num_valid", [False, True])
@pytest.mark.parametrize("high_threshold", [(), (0.7,)], ids=["default_high", "high"])
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_batched_soft_nms(dtype, method, with_num_valid, high_threshold, device, seed):
    segments, scores = (t.to(device) for t in gtad_like_inputs(3, 12, seed, dtype))
    num_valid = torch.tensor([78, 40, 0], device=device) if with_num_valid else None
    args = (segments, scores, num_valid, 0.8, 20, method, 0.5) + high_threshold  # high_threshold defaults to 0.9
    torch.library.opcheck(torch.ops.lofi.batched_soft_nms.default, args)


# torch 2.11's AOTAutograd returns zero gradients for everything behind the fused SGAlign projection of a compiled
# head (outputs are equal); torch 2.14 gets them right. There, compile the head with model.gtad_fused=false.
OLD_COMPILE = tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 14)


@pytest.mark.parametrize("fused", [pytest.param(True, marks=pytest.mark.skipif(
    OLD_COMPILE, reason="torch < 2.14 drops the fused projection's gradients under torch.compile")), False])
def test_compiled_gtad_head_equals_eager(fused):
    # aot_eager: Dynamo and AOTAutograd trace the whole head (fake kernels, autograd) without inductor's C++ compile
    torch.manual_seed(0)
    eager = GTAD(16, fused=fused, hidden_1d=16, hidden_2d=8, hidden_3d=12)
    head = GTAD(16, fused=fused, hidden_1d=16, hidden_2d=8, hidden_3d=12)
    head.load_state_dict(eager.state_dict())
    compiled = torch.compile(head, backend="aot_eager", fullgraph=True)
    for L in (10, 10, 7):  # the second call reads the plan the first one kept
        features = torch.randn(2, 16, L, requires_grad=True)
        want, got = eager(features), compiled(features)
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
        params = [features] + list(eager.parameters())
        g_want = torch.autograd.grad(sum(v.sum() for v in want.values()), params)
        g_got = torch.autograd.grad(sum(v.sum() for v in got.values()), [features] + list(head.parameters()))
        assert all(torch.equal(a, b) for a, b in zip(g_want, g_got))
    assert len(head._plans) == (2 if fused else 4)
