"""SGAlign and the fused SGAlign-projection: torchvision identity, references, kernels, gradients, bad input."""
import subprocess
import sys

import pytest
import torch
import torchvision

import lofi.ops
from lofi.ops import sg_align, sg_align_project, sg_align_project_reference, sg_align_reference
from lofi.models.gtad import GTAD, anchor_rois, anchor_windows
from lofi.ops.sg_align import _scatter, _transpose_plan, sampling_plan
from subproc import child_env

KERNEL = lofi.ops.available() and hasattr(torch.ops.lofi, "sg_align_plan")
needs_kernel = pytest.mark.skipif(not KERNEL, reason="lofi._C with the sg_align kernels is not built")


def torchvision_align(x, rois, bins):
    """The exact oracle: roi_align on an H=1 image, boxes [b, start, 0, end, 1], aligned=False."""
    zeros, ones = torch.zeros_like(rois[:, :1]), torch.ones_like(rois[:, :1])
    boxes = torch.cat([rois[:, :2], zeros, rois[:, 2:], ones], 1).to(x.dtype)
    return torchvision.ops.roi_align(x[:, :, None], boxes, (1, bins), 1.0, 0, aligned=False)[:, :, 0]


def gtad_anchor_rois(B, T, dtype=torch.float32):
    """The G-TAD head's B·T(T+1)/2 SGAlign ROIs, then the dummy ROI [b, 0, 0] of each video (G-TAD's own head samples
    it for its invalid map cells)."""
    zeros = torch.zeros(B)
    dummies = torch.stack([torch.arange(B, dtype=torch.float32), zeros, zeros], 1)
    return torch.cat([anchor_rois(anchor_windows(T), B), dummies]).to(dtype)


def edge_rois(B, T, gen, n=40):
    """Random ROIs partly/wholly outside [0, T], zero-length, sub-unit, negative-length and integer-aligned."""
    b = torch.randint(0, B, (n,), generator=gen).double()
    start = torch.rand(n, generator=gen, dtype=torch.float64) * (T + 10) - 6
    length = torch.rand(n, generator=gen, dtype=torch.float64) * (2 * T + 2)
    length[: n // 4] = torch.rand(n // 4, generator=gen, dtype=torch.float64)  # sub-unit
    length[n // 4: n // 4 + 3] = 0  # zero-length
    length[-2] = -1.5  # end before start: treated as length 1
    start[-4] = T + 3  # wholly after
    start[-5], length[-5] = -12.0, 5.0  # wholly before
    start[-6], length[-6] = -1.0, T + 1.0  # exactly [-1, T]
    start[-7], length[-7] = 2.0, 3.0  # integer-aligned samples
    return torch.stack([b, start, start + length], 1)


def unfused(x, x_ctx, rois, weight, bias, inner_bins, ctx_bins, align=sg_align):
    """G-TAD's way: concatenated bins (R, C, P) flattened to channels c*P + p, then a 1x1 conv over the ROIs."""
    feats = torch.cat([align(x, rois, inner_bins), align(x_ctx, rois, ctx_bins)], 2).flatten(1)  # (R, C*P)
    return torch.nn.functional.conv1d(feats.t()[None], weight[:, :, None], bias)[0].t()


def project_inputs(B, C, T, O, gen, dtype=torch.float64, P=36):
    x = torch.randn(B, C, T, generator=gen, dtype=dtype)
    x_ctx = torch.randn(B, C, T, generator=gen, dtype=dtype)
    weight = torch.randn(O, C * P, generator=gen, dtype=dtype) / (C * P) ** 0.5
    bias = torch.randn(O, generator=gen, dtype=dtype)
    return x, x_ctx, weight, bias


# ---------------------------------------------------------------------------------------------------- semantics
@pytest.mark.parametrize("T", [1, 7, 100])
def test_reference_matches_torchvision_on_gtad_anchors(T, seed):
    gen = torch.Generator().manual_seed(seed)
    B, C = 2, (3 if T == 100 else 5)
    rois = gtad_anchor_rois(B, T, dtype=torch.float64)
    assert rois.shape == (B * (T * (T + 1) // 2 + 1), 3)
    x = torch.randn(B, C, T, generator=gen, dtype=torch.float64)
    for bins in (32, 4):
        expected = torchvision_align(x, rois, bins)
        torch.testing.assert_close(sg_align_reference(x, rois, bins), expected, rtol=0, atol=1e-12)
        torch.testing.assert_close(sg_align(x, rois, bins), expected, rtol=0, atol=1e-12)


def test_reference_matches_torchvision_on_edge_rois_float32(seed):
    gen = torch.Generator().manual_seed(seed)
    B, C, T = 3, 4, 13
    x = torch.randn(B, C, T, generator=gen)
    rois = edge_rois(B, T, gen).float()
    for bins in (1, 4, 32):
        expected = torchvision_align(x, rois, bins)
        torch.testing.assert_close(sg_align_reference(x, rois, bins), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sg_align(x, rois, bins), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_long_rois_match_torchvision(dtype, seed):
    # windows far longer than T: thousands of samples per bin, only a few inside [-1, T]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 11, generator=gen, dtype=dtype)
    rois = torch.tensor([[0, -1e5, 1e5], [1, -3e4 + 0.3, 50.7], [0, -0.5, 7.3e4], [1, 4.2, 2e3]], dtype=dtype)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    for bins in (1, 4, 32):
        expected = torchvision_align(x, rois, bins)
        torch.testing.assert_close(sg_align(x, rois, bins), expected, **tol)
        torch.testing.assert_close(sg_align_reference(x, rois, bins), expected, **tol)


def test_known_values_from_gtad():
    # the values G-TAD's own Align1D test expects
    x = torch.arange(1, 11, dtype=torch.float64).view(1, 1, 10)
    rois = torch.tensor([[0, -0.5, 9.5], [0, 0.1, 0.9], [0, 5, 5]], dtype=torch.float64)
    out = sg_align(x, rois, 10)[:, 0]
    torch.testing.assert_close(out[0], torch.arange(1, 11, dtype=torch.float64))
    torch.testing.assert_close(out[1], torch.linspace(1.15, 2.05, 10, dtype=torch.float64))
    torch.testing.assert_close(out[2], torch.linspace(6.05, 6.95, 10, dtype=torch.float64))


def test_wholly_outside_rois_give_zeros_and_zero_grad():
    x = torch.randn(1, 2, 6, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, -30.0, -1.5], [0, 6.5, 40.0]], dtype=torch.float64)
    out = sg_align(x, rois, 4)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


# ---------------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("impl", ["reference", "kernel"])
def test_gradcheck_sg_align(impl, seed):
    if impl == "kernel" and not KERNEL:
        pytest.skip("kernel not built")
    fn = sg_align_reference if impl == "reference" else sg_align
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = edge_rois(2, 9, gen, n=12)
    assert torch.autograd.gradcheck(lambda t: fn(t, rois, 5), (x,))


@pytest.mark.parametrize("impl", ["reference", "kernel"])
def test_gradcheck_sg_align_project(impl, seed):
    if impl == "kernel" and not KERNEL:
        pytest.skip("kernel not built")
    fn = sg_align_project_reference if impl == "reference" else sg_align_project
    gen = torch.Generator().manual_seed(seed)
    inputs = [t.requires_grad_() for t in project_inputs(2, 3, 8, 4, gen, P=5 + 2)]
    rois = edge_rois(2, 8, gen, n=10)
    assert torch.autograd.gradcheck(
        lambda x, c, w, b: fn(x, c, rois, w, b, inner_bins=5, ctx_bins=2), inputs)


@pytest.mark.parametrize("impl", ["reference", "kernel"])
def test_fused_matches_align_then_conv(impl, seed):
    if impl == "kernel" and not KERNEL:
        pytest.skip("kernel not built")
    fn = sg_align_project_reference if impl == "reference" else sg_align_project
    gen = torch.Generator().manual_seed(seed)
    B, C, T, O = 2, 6, 16, 10
    rois = torch.cat([gtad_anchor_rois(B, T), edge_rois(B, T, gen).float()])
    fused_in = [t.float().requires_grad_() for t in project_inputs(B, C, T, O, gen)]
    plain_in = [t.detach().clone().requires_grad_() for t in fused_in]
    fused = fn(fused_in[0], fused_in[1], rois, fused_in[2], fused_in[3])
    plain = unfused(plain_in[0], plain_in[1], rois, plain_in[2], plain_in[3], 32, 4, align=sg_align_reference)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    grad = torch.randn(fused.shape, generator=gen)
    fused.backward(grad)
    plain.backward(grad)
    for name, a, b in zip(["x", "x_ctx", "weight", "bias"], fused_in, plain_in):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5 * b.grad.abs().max().item(), msg=name)


def test_fused_without_bias_and_gtad_dummy_cells(seed):
    gen = torch.Generator().manual_seed(seed)
    B, C, T, O = 2, 4, 7, 5
    x, x_ctx, weight, _ = project_inputs(B, C, T, O, gen)
    rois = gtad_anchor_rois(B, T, dtype=torch.float64)
    out = sg_align_project(x, x_ctx, rois, weight, None)
    torch.testing.assert_close(out, unfused(x, x_ctx, rois, weight, None, 32, 4, align=sg_align_reference))
    # invalid map cells ([b, 0, 0]) all equal the dummy ROI's output of their video
    invalid = (rois[:, 1] == 0) & (rois[:, 2] == 0)
    dummy = sg_align_project(x, x_ctx, torch.tensor([[0, 0, 0], [1, 0, 0]], dtype=torch.float64), weight)
    torch.testing.assert_close(out[invalid], dummy[rois[invalid, 0].long()])


# ---------------------------------------------------------------------------------------------------- kernels
@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_kernel_matches_reference(dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    B, C, T = 3, 7, 23
    x = torch.randn(B, C, T, generator=gen, dtype=dtype, requires_grad=True)
    rois = torch.cat([gtad_anchor_rois(B, T, dtype=dtype), edge_rois(B, T, gen).to(dtype)])
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for bins in (32, 4, 3):
        out = sg_align(x, rois, bins)
        ref = sg_align_reference(x, rois, bins)
        torch.testing.assert_close(out, ref, **tol)
        grad = torch.randn(out.shape, generator=gen, dtype=dtype)
        (g_kernel,) = torch.autograd.grad(out, x, grad)
        (g_ref,) = torch.autograd.grad(ref, x, grad)
        # float32 gradients sum thousands of terms per snippet: compare at the gradient's scale
        scale = g_ref.abs().max().item()
        torch.testing.assert_close(g_kernel, g_ref, rtol=tol["rtol"] * 10, atol=tol["atol"] * scale)


@needs_kernel
def test_plan_is_passed_by_the_caller(seed):
    gen = torch.Generator().manual_seed(seed)
    B, C, T = 2, 3, 10
    x, x_ctx, weight, bias = project_inputs(B, C, T, 4, gen, P=6)
    rois = gtad_anchor_rois(B, T, dtype=torch.float64)
    plan = sampling_plan(rois, T, B, [4], True)
    assert torch.equal(sg_align(x, rois, 4, plan=plan), sg_align(x, rois, 4))
    fused = sampling_plan(rois, T, B, [4, 2], True, sources=6)
    assert torch.equal(sg_align_project(x, x_ctx, rois, weight, bias, 4, 2, plan=fused),
                       sg_align_project(x, x_ctx, rois, weight, bias, 4, 2))
    with pytest.raises(ValueError, match=r"plan does not fit the inputs: rois=.*\(needs 3\)"):
        sg_align(x, rois[:3], 4, plan=plan)
    with pytest.raises(ValueError, match=r"bins=\(4,\) \(needs \(4, 2\)\), sources=1 \(needs 6\)"):
        sg_align_project(x, x_ctx, rois, weight, bias, 4, 2, plan=plan)
    with pytest.raises(ValueError, match=r"weight_dtype=torch.float64 \(needs torch.float32\)"):
        sg_align(x.float(), rois, 4, plan=plan)
    with pytest.raises(ValueError, match="plan must be a SamplingPlan"):
        sg_align(x, rois, 4, plan=plan[:4])
    # without a plan the op plans the ROIs it is given, whatever happened to the tensor before (no stale cache)
    first = sg_align(x, rois, 4)
    rois[:, 1:] += 0.25
    torch.testing.assert_close(sg_align(x, rois, 4), sg_align_reference(x, rois, 4), rtol=0, atol=1e-12)
    assert not torch.allclose(first, sg_align(x, rois, 4))


@needs_kernel
@pytest.mark.parametrize("fused", [True, False])
def test_gtad_head_keeps_its_plans_per_length(fused):
    torch.manual_seed(0)
    head = GTAD(8, fused=fused, hidden_1d=8, hidden_2d=4, hidden_3d=6)
    features = torch.randn(2, 8, 7)
    out = head(features)["maps"]
    plans = dict(head._plans)
    assert len(plans) == (1 if fused else 2)
    assert all(plan.length == 7 and plan.num_batches == 2 for plan in plans.values())
    assert torch.equal(head(features)["maps"], out)
    assert all(head._plans[key] is plan for key, plan in plans.items())  # reused, not rebuilt
    head(torch.randn(2, 8, 9))
    assert len(head._plans) == 2 * len(plans)
    with torch.inference_mode():  # inference-mode plans are not kept (they could not be saved for backward)
        head(torch.randn(1, 8, 5))
    assert len(head._plans) == 2 * len(plans)
    assert not any("plan" in key for key in head.state_dict())
    head(features)["maps"].sum().backward()  # kept plans serve training


@needs_kernel
@pytest.mark.parametrize("bins,sources", [([7], 1), ([6, 3], 9)])
def test_transposed_plan_gives_the_cpu_scatter(bins, sources, seed):
    # The CUDA backward sums, for each (b, s, t), over the transposed plan's entries; emulate it with index_add.
    gen = torch.Generator().manual_seed(seed)
    B, D, T = 2, 5, 17
    P = sum(bins)
    rois = torch.cat([gtad_anchor_rois(B, T, dtype=torch.float64), edge_rois(B, T, gen)])
    plan = sampling_plan(rois, T, B, bins, True, sources)
    t_ptr, t_row, t_weight = _transpose_plan(*plan[:4], P, B, sources, T)
    Q = P if sources == 1 else 1
    grad = torch.randn(rois.shape[0], Q, D, generator=gen, dtype=torch.float64)
    rows = torch.repeat_interleave(torch.arange(B * sources * T), t_ptr.diff())
    q = t_row % P if Q > 1 else torch.zeros_like(t_row)
    emulated = torch.zeros(B * sources * T, D, dtype=torch.float64).index_add_(
        0, rows, t_weight[:, None] * grad[t_row // P, q])
    scattered = _scatter(grad, plan[:4] + (t_ptr, t_row, t_weight), P, B, sources, T)
    torch.testing.assert_close(emulated.view(B, sources, T, D), scattered)


def test_inference_mode_and_cpu_autocast(seed):
    gen = torch.Generator().manual_seed(seed)
    x, x_ctx, weight, bias = project_inputs(2, 3, 9, 4, gen, dtype=torch.float32)
    expected = sg_align_project(x, x_ctx, gtad_anchor_rois(2, 9), weight, bias)
    with torch.inference_mode():  # inference tensors have no version counter: planned without the cache
        rois = gtad_anchor_rois(2, 9)
        torch.testing.assert_close(sg_align_project(x, x_ctx, rois, weight, bias), expected)
        torch.testing.assert_close(sg_align(x, rois, 4), sg_align_reference(x, rois, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sg_align_project(x.bfloat16(), x_ctx.bfloat16(), gtad_anchor_rois(2, 9), weight, bias)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0.05, atol=0.05)


@needs_kernel
def test_internal_ops_reject_a_plan_reaching_outside_the_input():
    rois = torch.tensor([[0.0, 1.0, 4.0]])
    batch, row_ptr, start, weight = sampling_plan(rois, 6, 1, [2], False)[:4]
    x = torch.randn(1, 1, 6, 3)
    torch.ops.lofi.sg_align_gather(x, batch, row_ptr, start, weight, 2, False)
    with pytest.raises(RuntimeError, match="reaches outside"):
        torch.ops.lofi.sg_align_gather(x, batch, row_ptr, start + 3, weight, 2, False)
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.lofi.sg_align_gather(x, batch + 1, row_ptr, start, weight, 2, False)


def test_deterministic_backward(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 8, 30, generator=gen, requires_grad=True)
    rois = gtad_anchor_rois(2, 30)
    grad = torch.randn(rois.shape[0], 8, 32, generator=gen)
    grads = [torch.autograd.grad(sg_align(x, rois, 32), x, grad)[0] for _ in range(2)]
    threads = torch.get_num_threads()
    try:  # the summation order does not depend on how the work is split between threads
        torch.set_num_threads(1)
        grads.append(torch.autograd.grad(sg_align(x, rois, 32), x, grad)[0])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])


def test_fallback_path_without_extension(seed):
    code = (
        "import warnings, torch; warnings.simplefilter('ignore')\n"
        "from lofi.ops import sg_align, sg_align_project, extension\n"
        "from lofi.models.gtad import anchor_rois, anchor_windows\n"
        f"torch.manual_seed({seed}); x = torch.randn(2, 3, 9, dtype=torch.float64, requires_grad=True)\n"
        "rois = anchor_rois(anchor_windows(9), 2).double()\n"
        "out = sg_align(x, rois, 4); out.sum().backward()\n"
        "w = torch.randn(5, 3 * 36, dtype=torch.float64)\n"
        "y = sg_align_project(x, x, rois, w, None)\n"
        "print(extension.available(), tuple(out.shape), tuple(y.shape), float(x.grad.sum()))\n"
    )
    env = child_env(LOFI_DISABLE_EXTENSION="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    available, *_ = out.stdout.split()
    assert available == "False"
    assert "(90, 3, 4) (90, 5)" in out.stdout


# ---------------------------------------------------------------------------------------------------- bad input / empty
def test_empty_rois():
    x = torch.randn(2, 3, 5, requires_grad=True)
    rois = torch.zeros(0, 3)
    out = sg_align(x, rois, 4)
    assert out.shape == (0, 3, 4)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    w = torch.randn(6, 3 * 36, requires_grad=True)
    y = sg_align_project(x, x.detach(), rois, w, torch.zeros(6))
    assert y.shape == (0, 6)
    assert sg_align_reference(x, rois, 4).shape == (0, 3, 4)
    assert sg_align_project_reference(x, x, rois, w).shape == (0, 6)
    # no channels: zeros (plus the bias)
    x0, one = torch.zeros(2, 0, 5), torch.tensor([[1.0, 0.5, 3.0]])
    assert sg_align(x0, one, 4).shape == (1, 0, 4)
    assert torch.equal(sg_align_project(x0, x0, one, torch.zeros(3, 0), torch.ones(3)), torch.ones(1, 3))


@pytest.mark.parametrize("fn", [sg_align, sg_align_reference])
@pytest.mark.parametrize("x_shape,rois,bins,match", [
    ((2, 3), torch.zeros(1, 3), 4, "x must have shape"),
    ((2, 3, 0), torch.zeros(1, 3), 4, "T >= 1"),
    ((2, 3, 5), torch.zeros(1, 4), 4, "rois must have shape"),
    ((2, 3, 5), torch.zeros(3), 4, "rois must have shape"),
    ((2, 3, 5), torch.zeros(1, 3, dtype=torch.int64), 4, "rois must have a floating dtype"),
    ((2, 3, 5), torch.tensor([[2.0, 0, 1]]), 4, "batch index out of range"),
    ((2, 3, 5), torch.tensor([[-1.0, 0, 1]]), 4, "batch index out of range"),
    ((2, 3, 5), torch.tensor([[0.5, 0, 1]]), 4, "integer batch indices"),
    ((2, 3, 5), torch.tensor([[0.0, float("nan"), 1]]), 4, "NaN or inf"),
    ((2, 3, 5), torch.tensor([[0.0, 0, float("inf")]]), 4, "NaN or inf"),
    ((2, 3, 5), torch.zeros(1, 3), 0, "bins must be >= 1"),
    ((2, 3, 5), torch.zeros(1, 3), 2.0, "bins must be an int"),
])
def test_bad_input_raises(fn, x_shape, rois, bins, match):
    with pytest.raises(ValueError, match=match):
        fn(torch.zeros(x_shape), rois, bins)


def test_bad_dtype_and_device_raise():
    with pytest.raises(ValueError, match="x has dtype torch.float16"):
        sg_align(torch.zeros(1, 2, 3, dtype=torch.float16), torch.zeros(1, 3), 2)
    with pytest.raises(ValueError, match="rois must be on the device"):
        sg_align(torch.zeros(1, 2, 3), torch.zeros(1, 3, device="meta"), 2)


def test_unchecked_invalid_rois_give_zeros():
    x = torch.randn(2, 3, 5)
    rois = torch.tensor([[0.0, float("nan"), 2], [5.0, 0, 2], [-3.0, 0, 2], [1.0, 0, float("inf")]])
    assert torch.equal(sg_align(x, rois, 4, check=False), torch.zeros(4, 3, 4))
    w = torch.randn(2, 3 * 36)
    assert torch.equal(sg_align_project(x, x, rois, w, None, check=False), torch.zeros(4, 2))


@pytest.mark.parametrize("fn", [sg_align_project, sg_align_project_reference])
def test_bad_projection_input_raises(fn):
    x, rois, w = torch.zeros(2, 3, 5), torch.zeros(1, 3), torch.zeros(4, 3 * 36)
    with pytest.raises(ValueError, match="x_ctx must have the shape of x"):
        fn(x, torch.zeros(2, 3, 6), rois, w)
    with pytest.raises(ValueError, match="weight must have shape"):
        fn(x, x, rois, torch.zeros(4, 3 * 35))
    with pytest.raises(ValueError, match="bias must have shape"):
        fn(x, x, rois, w, torch.zeros(5))
    with pytest.raises(ValueError, match="weight must match"):
        fn(x, x, rois, w.double())
    with pytest.raises(ValueError, match="ctx_bins must be >= 1"):
        fn(x, x, rois, torch.zeros(4, 3 * 32), None, 32, 0)
    with pytest.raises(ValueError, match="batch index out of range"):
        fn(x, x, torch.tensor([[3.0, 0, 1]]), w)


# ---------------------------------------------------------------------------------------------------- CUDA vs CPU
cuda = pytest.mark.cuda


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cuda_sg_align_matches_cpu(dtype, seed):
    assert lofi.ops.cuda_compiled()
    gen = torch.Generator().manual_seed(seed)
    B, C, T = 3, 16, 100
    x = torch.randn(B, C, T, generator=gen, dtype=torch.float64)
    rois = torch.cat([gtad_anchor_rois(B, T, dtype=torch.float64), edge_rois(B, T, gen)])
    grad = torch.randn(rois.shape[0], C, 32, generator=gen, dtype=torch.float64)
    low = dtype in (torch.float16, torch.bfloat16)
    cpu_dtype = torch.float32 if low else dtype
    xc = x.to(dtype).to(cpu_dtype).requires_grad_()
    out_cpu = sg_align(xc, rois.to(cpu_dtype), 32)
    (g_cpu,) = torch.autograd.grad(out_cpu, xc, grad.to(dtype).to(cpu_dtype))
    xg = x.to(dtype).cuda().requires_grad_()
    out_gpu = sg_align(xg, rois.to(cpu_dtype).cuda(), 32)
    (g_gpu,) = torch.autograd.grad(out_gpu, xg, grad.to(dtype).cuda())
    tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(out_gpu.cpu().to(cpu_dtype), out_cpu, rtol=tol, atol=tol)
    torch.testing.assert_close(g_gpu.cpu().to(cpu_dtype), g_cpu, rtol=tol, atol=tol * g_cpu.abs().max().item())
    expected = torchvision_align(x.to(dtype).to(cpu_dtype).cuda(), rois.cuda(), 32)
    torch.testing.assert_close(out_gpu.to(cpu_dtype), expected, rtol=tol, atol=tol)
    # deterministic backward
    (g_again,) = torch.autograd.grad(sg_align(xg, rois.to(cpu_dtype).cuda(), 32), xg, grad.to(dtype).cuda())
    assert torch.equal(g_gpu, g_again)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cuda_sg_align_project_matches_cpu(dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    B, C, T, O = 2, 16, 40, 24
    rois = torch.cat([gtad_anchor_rois(B, T, dtype=torch.float64), edge_rois(B, T, gen)])
    low = dtype in (torch.float16, torch.bfloat16)
    cpu_dtype = torch.float32 if low else dtype
    inputs = [t.to(dtype).to(cpu_dtype) for t in project_inputs(B, C, T, O, gen)]
    grad = torch.randn(rois.shape[0], O, generator=gen, dtype=torch.float64).to(dtype)
    cpu_in = [t.clone().requires_grad_() for t in inputs]
    out_cpu = sg_align_project(cpu_in[0], cpu_in[1], rois.to(cpu_dtype), cpu_in[2], cpu_in[3])
    out_cpu.backward(grad.to(cpu_dtype))
    gpu_in = [t.to(dtype).cuda().requires_grad_() for t in inputs]
    out_gpu = sg_align_project(gpu_in[0], gpu_in[1], rois.to(cpu_dtype).cuda(), gpu_in[2], gpu_in[3])
    out_gpu.backward(grad.cuda())
    tol = {torch.float32: 1e-4, torch.float64: 1e-10, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    scale = out_cpu.abs().max().item()
    torch.testing.assert_close(out_gpu.cpu().to(cpu_dtype), out_cpu, rtol=tol, atol=tol * scale)
    for a, b in zip(gpu_in, cpu_in):
        torch.testing.assert_close(a.grad.cpu().to(cpu_dtype), b.grad, rtol=tol, atol=tol * b.grad.abs().max().item())


@cuda
def test_cuda_bad_and_empty_input():
    x = torch.randn(2, 3, 5, device="cuda")
    assert sg_align(x, torch.zeros(0, 3, device="cuda"), 4).shape == (0, 3, 4)
    with pytest.raises(ValueError, match="batch index out of range"):
        sg_align(x, torch.tensor([[2.0, 0, 1]], device="cuda"), 4)
    rois = torch.tensor([[0.0, float("nan"), 2], [7.0, 0, 2]], device="cuda")
    assert torch.equal(sg_align(x, rois, 4, check=False).cpu(), torch.zeros(2, 3, 4))
