"""SGAlign (G-TAD's Align1D) and the fused SGAlign + 1x1-conv projection of the G-TAD head.

Semantics: 1-D ROI align with ``aligned=False`` and the adaptive grid
``g = ceil(max(end - start, 1) / bins)``; feature index ``i`` sits at continuous position ``i``. Bin ``p`` of a ROI
averages the linear interpolation of ``x`` at ``start + p*bin + (i + 0.5)*bin/g``, ``i < g``; a sample outside
``[-1, T]`` contributes 0, one in ``[-1, 0)`` is clamped to 0 and one at or beyond ``T - 1`` reads ``x[T-1]``.
It equals ``torchvision.ops.roi_align(x[:, :, None], [b, start, 0, end, 1], (1, bins), 1.0, 0, aligned=False)``.

Both ops are linear in their inputs, so each is a *sampling plan*: a sparse matrix whose row ``(roi, bin)`` holds the
averaged interpolation weights over a contiguous run of snippets. The compiled kernels (``torch.ops.lofi.sg_align_*``)
build that plan (:func:`sampling_plan`) and apply it as a sparse product; a caller that reuses its ROIs builds the plan
once and passes it (the G-TAD head keeps one per snippet count L). Backward applies its transpose without atomics, so
gradients are deterministic (the only mode): CUDA sums over a transposed plan, one thread per input-gradient element;
the CPU threads own channel blocks. The pure-PyTorch references build the same matrix with ``torch.sparse`` and are
the tests' oracles.

ROIs are ``(R, 3)`` rows ``[batch_index, start, end]`` in snippet units (continuous positions, 0..T).
"""
from typing import NamedTuple, Optional, Sequence, Tuple

import torch

from .extension import _C, use_kernel

__all__ = ["sg_align", "sg_align_project", "sg_align_reference", "sg_align_project_reference", "sampling_plan",
           "SamplingPlan"]

_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------------------------------
# Argument validation
# ----------------------------------------------------------------------------------------------------------------------
def _check_bins(name: str, bins) -> int:
    if isinstance(bins, bool) or not isinstance(bins, int):
        raise ValueError(f"{name} must be an int, got {type(bins).__name__}")
    if bins < 1:
        raise ValueError(f"{name} must be >= 1, got {bins}")
    return bins


def _check_features(name: str, x, like: Optional[torch.Tensor] = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, C, T), got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape (B, C, T), got rank {x.dim()} shape {tuple(x.shape)}")
    allowed = _CUDA_DTYPES if x.is_cuda else _CPU_DTYPES
    if x.dtype not in allowed:
        names = [str(d) for d in allowed]
        raise ValueError(f"{name} has dtype {x.dtype}; on {x.device.type} it must be one of {names}")
    if x.shape[2] < 1:
        raise ValueError(f"{name} must have T >= 1 snippets, got shape {tuple(x.shape)}")
    if like is not None:
        if x.shape != like.shape:
            raise ValueError(f"{name} must have the shape of x {tuple(like.shape)}, got {tuple(x.shape)}")
        if x.dtype != like.dtype:
            raise ValueError(f"{name} must have the dtype of x ({like.dtype}), got {x.dtype}")
        if x.device != like.device:
            raise ValueError(f"{name} must be on the device of x ({like.device}), got {x.device}")


def _check_rois(rois, x: torch.Tensor, check: bool) -> None:
    if not isinstance(rois, torch.Tensor):
        raise ValueError(f"rois must be a torch.Tensor of shape (R, 3), got {type(rois).__name__}")
    if rois.dim() != 2 or rois.shape[1] != 3:
        raise ValueError(f"rois must have shape (R, 3) [batch_index, start, end], got shape {tuple(rois.shape)}")
    if not rois.is_floating_point():
        raise ValueError(f"rois must have a floating dtype, got {rois.dtype}")
    if rois.device != x.device:
        raise ValueError(f"rois must be on the device of x ({x.device}), got {rois.device}")
    if not check or rois.shape[0] == 0:
        return
    batch = rois[:, 0]
    flags = torch.stack([
        ~torch.isfinite(rois).all(),
        ((batch < 0) | (batch >= x.shape[0])).any(),
        (batch != torch.trunc(batch)).any(),
    ]).tolist()  # one host sync for all three checks
    if flags[0]:
        raise ValueError("rois contains NaN or inf")
    if flags[1]:
        raise ValueError(f"rois[:, 0] holds a batch index out of range [0, {x.shape[0]}) (x has B={x.shape[0]})")
    if flags[2]:
        raise ValueError("rois[:, 0] must hold integer batch indices")


def _check_projection(x, x_ctx, rois, weight, bias, inner_bins, ctx_bins, check) -> None:
    _check_features("x", x)
    _check_features("x_ctx", x_ctx, like=x)
    _check_rois(rois, x, check)
    _check_bins("inner_bins", inner_bins)
    _check_bins("ctx_bins", ctx_bins)
    channels = x.shape[1] * (inner_bins + ctx_bins)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] != channels:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"weight must have shape (O, C*(inner_bins+ctx_bins)) = (O, {channels}), got {shape}")
    if weight.dtype != x.dtype or weight.device != x.device:
        raise ValueError(f"weight must match x's dtype/device ({x.dtype}, {x.device}), "
                         f"got ({weight.dtype}, {weight.device})")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (weight.shape[0],):
            shape = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise ValueError(f"bias must have shape (O,) = ({weight.shape[0]},) or be None, got {shape}")
        if bias.dtype != x.dtype or bias.device != x.device:
            raise ValueError(f"bias must match x's dtype/device ({x.dtype}, {x.device}), "
                             f"got ({bias.dtype}, {bias.device})")


def _position_dtype(x: torch.Tensor) -> torch.dtype:
    """Sample positions and plan weights use x's precision (as torchvision does), fp32 for fp16/bf16."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------------------------------------------
# Pure-PyTorch references: the sampling matrix as a torch.sparse COO tensor
# ----------------------------------------------------------------------------------------------------------------------
def _sampling_entries(rois: torch.Tensor, length: int, bins: int, num_batches: int, dtype: torch.dtype):
    """Nonzeros of the sampling matrix of ``bins`` bins: (roi, bin, batch, snippet, weight), one per sample and side.

    Enumerates every sample point, so memory is O(R * bins * g); the reference is meant for checking and fallback.
    """
    rois = rois.to(dtype)
    batch = torch.trunc(rois[:, 0])
    start, end = rois[:, 1], rois[:, 2]
    roi_len = torch.clamp(end - start, min=1.0)
    bin_size = roi_len / bins
    grid = torch.ceil(roi_len / bins)
    ok = torch.isfinite(rois).all(1) & (batch >= 0) & (batch < num_batches)
    grid = torch.where(ok, grid, torch.ones_like(grid))
    samples = int(grid.max()) if rois.shape[0] else 1
    dev = rois.device
    p = torch.arange(bins, device=dev, dtype=dtype)[None, :, None]
    i = torch.arange(samples, device=dev, dtype=dtype)[None, None, :]
    g = grid[:, None, None]
    # the order of operations of torchvision's roi_align / G-TAD's Align1D
    pos = start[:, None, None] + p * bin_size[:, None, None] + (i + 0.5) * bin_size[:, None, None] / g
    valid = ok[:, None, None] & (i < g) & (pos >= -1.0) & (pos <= length)
    pos = torch.where(valid, pos, torch.zeros_like(pos)).clamp(min=0.0)
    lo = torch.floor(pos)
    edge = lo >= length - 1
    lo = torch.where(edge, torch.full_like(lo, length - 1), lo)
    pos = torch.where(edge, lo, pos)
    frac = pos - lo
    hi = torch.where(edge, lo, lo + 1)
    shape = valid.shape
    roi_idx = torch.arange(rois.shape[0], device=dev)[:, None, None].expand(shape)
    bin_idx = torch.arange(bins, device=dev)[None, :, None].expand(shape)
    b_idx = batch.long().clamp(0, max(num_batches - 1, 0))[:, None, None].expand(shape)
    sel = valid.flatten()

    def pick(t):
        return torch.cat([t.flatten()[sel], t.flatten()[sel]])

    weight = torch.cat([((1 - frac) / g).flatten()[sel], (frac / g).flatten()[sel]])
    snippet = torch.cat([lo.flatten()[sel], hi.flatten()[sel]]).long()
    return pick(roi_idx), pick(bin_idx), pick(b_idx), snippet, weight


def _apply_sparse(rows, cols, weight, shape, dense: torch.Tensor) -> torch.Tensor:
    # The plan's indices are in range by construction. The explicit global opt-out silences torch 2.11's one-time
    # "invariant checks are implicitly disabled" warning, which it gives even with check_invariants=False.
    with torch.sparse.check_sparse_tensor_invariants(enable=False):
        matrix = torch.sparse_coo_tensor(torch.stack([rows, cols]), weight.to(dense.dtype), shape, check_invariants=False)
    return torch.sparse.mm(matrix, dense)


def sg_align_reference(x: torch.Tensor, rois: torch.Tensor, bins: int, check: bool = True) -> torch.Tensor:
    """Pure-PyTorch SGAlign: x (B, C, T), rois (R, 3) [b, start, end] in snippets -> (R, C, bins).

    Differentiable w.r.t. ``x`` (sparse matrix product); fp16/bf16 are computed in fp32.
    """
    _check_features("x", x)
    _check_rois(rois, x, check)
    _check_bins("bins", bins)
    B, C, T = x.shape
    R = rois.shape[0]
    work = x if x.dtype in _CPU_DTYPES else x.float()
    roi_idx, bin_idx, b_idx, snippet, weight = _sampling_entries(rois, T, bins, B, _position_dtype(x))
    dense = work.transpose(1, 2).reshape(B * T, C)
    out = _apply_sparse(roi_idx * bins + bin_idx, b_idx * T + snippet, weight, (R * bins, B * T), dense)
    return out.view(R, bins, C).transpose(1, 2).to(x.dtype)


def _project_weight(weight: torch.Tensor, channels: int, bins: int, first: int, last: int) -> torch.Tensor:
    """weight (O, C*P) -> (C, (last-first)*O): the columns of bins first..last-1, laid out [c, bin, o]."""
    O = weight.shape[0]
    return weight.view(O, channels, bins)[:, :, first:last].permute(1, 2, 0).reshape(channels, (last - first) * O)


def _project_sources(x, x_ctx, weight, inner_bins, ctx_bins) -> torch.Tensor:
    """Z (B, P, T, O): bin p's 1x1-conv slice applied to its source (x for inner bins, x_ctx for context bins)."""
    B, C, T = x.shape
    O, P = weight.shape[0], inner_bins + ctx_bins
    z_in = x.transpose(1, 2).reshape(B * T, C) @ _project_weight(weight, C, P, 0, inner_bins)
    z_ctx = x_ctx.transpose(1, 2).reshape(B * T, C) @ _project_weight(weight, C, P, inner_bins, P)
    z = torch.cat([z_in.view(B, T, inner_bins, O), z_ctx.view(B, T, ctx_bins, O)], dim=2)
    return z.permute(0, 2, 1, 3)


def sg_align_project_reference(x, x_ctx, rois, weight, bias=None, inner_bins: int = 32, ctx_bins: int = 4,
                               check: bool = True) -> torch.Tensor:
    """Pure-PyTorch fused SGAlign + 1x1 conv: conv first (Z = W_p x_src(p)), then the summed sampling plan.

    x, x_ctx (B, C, T); rois (R, 3); weight (O, C*(inner_bins+ctx_bins)) with ``weight[o, c*P + p]`` for bin p of
    channel c (inner bins over x first, then context bins over x_ctx on the same window); bias (O,) or None
    -> (R, O), no activation.
    """
    _check_projection(x, x_ctx, rois, weight, bias, inner_bins, ctx_bins, check)
    B, C, T = x.shape
    R, O = rois.shape[0], weight.shape[0]
    P = inner_bins + ctx_bins
    half = x.dtype not in _CPU_DTYPES
    xs, cs, ws = (t.float() if half else t for t in (x, x_ctx, weight))
    z = _project_sources(xs, cs, ws, inner_bins, ctx_bins).reshape(B * P * T, O)
    dtype = _position_dtype(x)
    parts = [_sampling_entries(rois, T, n, B, dtype) for n in (inner_bins, ctx_bins)]
    rows = torch.cat([parts[0][0], parts[1][0]])
    bin_idx = torch.cat([parts[0][1], parts[1][1] + inner_bins])
    b_idx = torch.cat([parts[0][2], parts[1][2]])
    cols = (b_idx * P + bin_idx) * T + torch.cat([parts[0][3], parts[1][3]])
    out = _apply_sparse(rows, cols, torch.cat([parts[0][4], parts[1][4]]), (R, B * P * T), z)
    if bias is not None:
        out = out + (bias.float() if half else bias)
    return out.to(x.dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Compiled kernels: sampling plans (owned by the caller) and autograd wrappers
# ----------------------------------------------------------------------------------------------------------------------
class SamplingPlan(NamedTuple):
    """Compiled sampling plan of R ROIs over ``num_batches`` videos of ``length`` snippets, in CSR form: row r*P + p
    (ROI r, bin p of P = sum(bins)) covers snippets ``start[row] + k``, k < its length.

    batch (R,) int64 (-1 for an invalid ROI, which has no entries), row_ptr (R*P+1,) int64, start (R*P,) int64,
    weight (nnz,) float32 or float64. On CUDA also the transpose used by the backward: the CSR over rows (b, s, t),
    t_ptr (B*S*T+1,) int64, t_row (nnz,) int64 (the plan row r*P + p of each entry), t_weight (nnz,); source s is 0
    when ``sources`` == 1 (all bins read one input) and the bin when ``sources`` == P. On the CPU these three are
    empty: the CPU backward needs no transpose.
    """
    batch: torch.Tensor
    row_ptr: torch.Tensor
    start: torch.Tensor
    weight: torch.Tensor
    t_ptr: torch.Tensor
    t_row: torch.Tensor
    t_weight: torch.Tensor
    bins: Tuple[int, ...]
    num_batches: int
    length: int
    sources: int


def _transpose_plan(batch, row_ptr, start, weight, bins: int, num_batches: int, sources: int, length: int):
    """CSR of a plan's transpose: rows (b, s, t), entries (row r*P + p, weight); no host sync."""
    nnz, P = weight.numel(), bins
    dev = row_ptr.device
    lens = row_ptr[1:] - row_ptr[:-1]
    row = torch.repeat_interleave(torch.arange(lens.numel(), device=dev), lens, output_size=nnz)
    snippet = start[row] + torch.arange(nnz, device=dev) - row_ptr[:-1][row]
    source = row % P if sources > 1 else torch.zeros_like(row)
    key = (batch[row // P] * sources + source) * length + snippet
    key, order = torch.sort(key, stable=True)
    bounds = torch.arange(num_batches * sources * length + 1, device=dev)
    return torch.searchsorted(key, bounds), row[order], weight[order]


def _no_transpose(plan) -> Tuple[torch.Tensor, ...]:
    """Three distinct empty tensors in place of the transpose, which the CPU kernels do not read."""
    return plan[1].new_empty(0), plan[1].new_empty(0), plan[3].new_empty(0)


def sampling_plan(rois: torch.Tensor, length: int, num_batches: int, bins: Sequence[int], double: bool,
                  sources: int = 1) -> Optional[SamplingPlan]:
    """The compiled sampling plan of ``rois`` (R, 3) over T=``length`` snippets and B=``num_batches`` videos for the
    concatenated bin groups ``bins`` (e.g. [32, 4]); positions and weights in float64 when ``double``, else float32.
    ``sources``: 1 for :func:`sg_align` (one input), sum(bins) for :func:`sg_align_project` (one source per bin).

    None when no compiled kernel serves the ROIs' device (the pure-PyTorch references need no plan). Building one
    costs a device->host sync on CUDA; callers that reuse their ROIs build it once and pass it to the ops.
    """
    if not _kernels_serve(rois):
        return None
    bins = tuple(int(b) for b in bins)
    P = sum(bins)
    tensors = tuple(torch.ops.lofi.sg_align_plan(rois, length, num_batches, list(bins), double))
    if rois.is_cuda:
        transposed = _transpose_plan(*tensors, P, num_batches, sources, length)
    else:
        transposed = _no_transpose(tensors)
    return SamplingPlan(*tensors, *transposed, bins, num_batches, length, sources)


def _check_plan(plan, rois: torch.Tensor, x: torch.Tensor, bins: Tuple[int, ...], sources: int) -> None:
    """Raises ValueError when ``plan`` was not built for these ROIs' count, x's (B, T) and dtype, bins and sources."""
    if not isinstance(plan, SamplingPlan):
        raise ValueError(f"plan must be a SamplingPlan from lofi.ops.sampling_plan, got {type(plan).__name__}")
    want = dict(rois=rois.shape[0], num_batches=x.shape[0], length=x.shape[2], bins=bins, sources=sources,
                weight_dtype=_position_dtype(x), device=x.device)
    have = dict(rois=plan.batch.shape[0], num_batches=plan.num_batches, length=plan.length, bins=plan.bins,
                sources=plan.sources, weight_dtype=plan.weight.dtype, device=plan.weight.device)
    wrong = [f"{key}={have[key]} (needs {want[key]})" for key in want if have[key] != want[key]]
    if wrong:
        raise ValueError(f"plan does not fit the inputs: {', '.join(wrong)}")


def _scatter(grad_rows: torch.Tensor, tensors: Sequence[torch.Tensor], bins: int, num_batches: int, sources: int,
             length: int) -> torch.Tensor:
    """Transpose of the gather: grad (R, Q, D) -> (B, S, T, D) with the plan's 7 tensors (the transposed ones are
    read on CUDA only)."""
    return torch.ops.lofi.sg_align_scatter(grad_rows, *tensors, bins, num_batches, sources, length)


class _SGAlignFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, batch, row_ptr, start, weight, t_ptr, t_row, t_weight, bins: int):
        ctx.bins, ctx.shape = bins, x.shape
        ctx.save_for_backward(batch, row_ptr, start, weight, t_ptr, t_row, t_weight)
        source = x.transpose(1, 2).unsqueeze(1)  # (B, 1, T, C)
        return torch.ops.lofi.sg_align_gather(source, batch, row_ptr, start, weight, bins, False)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        B, C, T = ctx.shape
        grad_rows = grad.transpose(1, 2)  # (R, P, C) view
        if grad_rows.is_cuda:
            grad_rows = grad_rows.contiguous()  # coalesced reads in the CUDA gather
        g = _scatter(grad_rows, ctx.saved_tensors, ctx.bins, B, 1, T)
        return (g.view(B, T, C).transpose(1, 2).contiguous(),) + (None,) * 8


class _SGAlignProjectFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, x_ctx, weight, bias, batch, row_ptr, start, plan_weight, t_ptr, t_row, t_weight,
                inner_bins: int, ctx_bins: int):
        ctx.bins = (inner_bins, ctx_bins)
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, x_ctx, weight, batch, row_ptr, start, plan_weight, t_ptr, t_row, t_weight)
        z = _project_sources(x, x_ctx, weight, inner_bins, ctx_bins)  # (B, P, T, O)
        out = torch.ops.lofi.sg_align_gather(z, batch, row_ptr, start, plan_weight, inner_bins + ctx_bins, True)
        return out.add_(bias) if bias is not None else out  # out is a fresh tensor of ours

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, x_ctx, weight = ctx.saved_tensors[:3]
        inner_bins, ctx_bins = ctx.bins
        B, C, T = x.shape
        O, P = weight.shape[0], inner_bins + ctx_bins
        gz = _scatter(grad.unsqueeze(1), ctx.saved_tensors[3:], P, B, P, T)  # (B, P, T, O)
        gz = gz.permute(0, 2, 1, 3).reshape(B * T, P * O)  # rows (b, t), columns (bin, o)
        grads = []
        for src, first, last in ((x, 0, inner_bins), (x_ctx, inner_bins, P)):
            gz_src = gz[:, first * O:last * O]
            w = _project_weight(weight, C, P, first, last)
            gx = (gz_src @ w.t()).view(B, T, C).transpose(1, 2).contiguous()
            gw = (src.transpose(1, 2).reshape(B * T, C).t() @ gz_src).view(C, last - first, O)
            grads.append((gx, gw))
        grad_weight = torch.cat([grads[0][1], grads[1][1]], dim=1).permute(2, 0, 1).reshape(O, C * P)
        grad_bias = grad.sum(0) if ctx.has_bias else None
        return (grads[0][0], grads[1][0], grad_weight, grad_bias) + (None,) * 9


# ----------------------------------------------------------------------------------------------------------------------
# The ops' fake (meta) kernels and autograd, for torch.compile and torch.library.opcheck. sg_align_gather and
# sg_align_scatter are each other's transpose (the plan is not differentiated); the APIs below use their own
# autograd functions, which keep the CUDA transpose with the plan instead of rebuilding it every backward.
# ----------------------------------------------------------------------------------------------------------------------
def _fake_plan(rois, length, num_batches, bins, double_precision):
    R, P = rois.shape[0], sum(bins)
    nnz = torch.library.get_ctx().new_dynamic_size()
    weight = rois.new_empty(nnz, dtype=torch.float64 if double_precision else torch.float32)
    return (rois.new_empty(R, dtype=torch.int64), rois.new_empty(R * P + 1, dtype=torch.int64),
            rois.new_empty(R * P, dtype=torch.int64), weight)


def _fake_gather(input, batch, row_ptr, start, weight, bins, sum_bins):
    R, D = batch.shape[0], input.shape[3]
    return input.new_empty((R, D) if sum_bins else (R, D, bins))


def _fake_scatter(grad, batch, row_ptr, start, weight, t_ptr, t_row, t_weight, bins, num_batches, sources, length):
    return grad.new_empty(num_batches, sources, length, grad.shape[2])


def _gather_setup(ctx, inputs, output):
    input, batch, row_ptr, start, weight, bins, sum_bins = inputs
    ctx.save_for_backward(batch, row_ptr, start, weight)
    ctx.bins, ctx.sum_bins, ctx.shape = bins, sum_bins, input.shape


def _gather_backward(ctx, grad):
    B, S, T, _ = ctx.shape
    plan = ctx.saved_tensors
    grad_rows = grad.unsqueeze(1) if ctx.sum_bins else grad.transpose(1, 2)  # (R, Q, D)
    if grad.is_cuda:
        transposed = _transpose_plan(*plan, ctx.bins, B, S, T)
        grad_rows = grad_rows.contiguous()
    else:
        transposed = _no_transpose(plan)
    return (_scatter(grad_rows, plan + transposed, ctx.bins, B, S, T),) + (None,) * 6


def _scatter_setup(ctx, inputs, output):
    grad, batch, row_ptr, start, weight = inputs[:5]
    ctx.save_for_backward(batch, row_ptr, start, weight)
    ctx.bins, ctx.summed = inputs[8], grad.shape[1] == 1 and inputs[8] > 1


def _scatter_backward(ctx, grad_out):
    rows = torch.ops.lofi.sg_align_gather(grad_out, *ctx.saved_tensors, ctx.bins, ctx.summed)
    return (rows.unsqueeze(1) if ctx.summed else rows.transpose(1, 2),) + (None,) * 11


if _C is not None and hasattr(torch.ops.lofi, "sg_align_plan"):
    torch.library.register_fake("lofi::sg_align_plan", _fake_plan)
    torch.library.register_fake("lofi::sg_align_gather", _fake_gather)
    torch.library.register_fake("lofi::sg_align_scatter", _fake_scatter)
    torch.library.register_autograd("lofi::sg_align_gather", _gather_backward, setup_context=_gather_setup)
    torch.library.register_autograd("lofi::sg_align_scatter", _scatter_backward, setup_context=_scatter_setup)


def _kernels_serve(x: torch.Tensor) -> bool:
    return use_kernel(x) and hasattr(torch.ops.lofi, "sg_align_plan")


def sg_align(x: torch.Tensor, rois: torch.Tensor, bins: int, check: bool = True,
             plan: Optional[SamplingPlan] = None) -> torch.Tensor:
    """SGAlign / G-TAD Align1D: x (B, C, T), rois (R, 3) [batch_index, start, end] in snippets -> (R, C, bins).

    Differentiable w.r.t. ``x``. ``check=False`` skips the NaN/inf and batch-index checks (a host sync on CUDA);
    invalid ROIs then give zeros instead of an error, never an out-of-bounds access. ``plan``: these ROIs'
    ``sampling_plan(rois, T, B, [bins], x.dtype == torch.float64)``, built here when None (or unused without kernels).
    """
    _check_features("x", x)
    _check_rois(rois, x, check)
    _check_bins("bins", bins)
    if not _kernels_serve(x):
        return sg_align_reference(x, rois, bins, check=False)
    if plan is None:
        plan = sampling_plan(rois, x.shape[2], x.shape[0], [bins], x.dtype == torch.float64)
    _check_plan(plan, rois, x, (bins,), 1)
    return _SGAlignFunction.apply(x, *plan[:7], bins)


def sg_align_project(x: torch.Tensor, x_ctx: torch.Tensor, rois: torch.Tensor, weight: torch.Tensor,
                     bias: Optional[torch.Tensor] = None, inner_bins: int = 32, ctx_bins: int = 4,
                     check: bool = True, plan: Optional[SamplingPlan] = None) -> torch.Tensor:
    """Fused SGAlign + 1x1 conv (G-TAD's first localization layer, no ReLU) -> (R, O).

    Equals ``linear(cat([sg_align(x, rois, inner_bins), sg_align(x_ctx, rois, ctx_bins)], 2).flatten(1), weight, bias)``
    without materializing the (R, C*(inner_bins+ctx_bins)) tensor: x, x_ctx (B, C, T); rois (R, 3);
    weight (O, C*P), ``weight[o, c*P + p]``; bias (O,) or None. Gradients flow to x, x_ctx, weight and bias.
    Under autocast the floating inputs are cast to the autocast dtype (CUDA) or float32 (CPU), as for a conv.
    ``plan``: ``sampling_plan(rois, T, B, [inner_bins, ctx_bins], x.dtype == torch.float64, sources=P)`` for the
    compute dtype, built here when None (unused without kernels).
    """
    device_type = x.device.type if isinstance(x, torch.Tensor) else "cpu"
    if torch.is_autocast_enabled(device_type):  # like a conv: one compute dtype (fp32 on the CPU kernels)
        dtype = torch.get_autocast_dtype(device_type) if device_type == "cuda" else torch.float32
        x, x_ctx, weight = (t.to(dtype) if isinstance(t, torch.Tensor) else t for t in (x, x_ctx, weight))
        bias = bias.to(dtype) if isinstance(bias, torch.Tensor) else bias
        with torch.autocast(device_type, enabled=False):
            return sg_align_project(x, x_ctx, rois, weight, bias, inner_bins, ctx_bins, check, plan)
    _check_projection(x, x_ctx, rois, weight, bias, inner_bins, ctx_bins, check)
    if not _kernels_serve(x):
        return sg_align_project_reference(x, x_ctx, rois, weight, bias, inner_bins, ctx_bins, check=False)
    P = inner_bins + ctx_bins
    if plan is None:
        plan = sampling_plan(rois, x.shape[2], x.shape[0], [inner_bins, ctx_bins], x.dtype == torch.float64, P)
    _check_plan(plan, rois, x, (inner_bins, ctx_bins), P)
    return _SGAlignProjectFunction.apply(x, x_ctx, weight, bias, *plan[:7], inner_bins, ctx_bins)
