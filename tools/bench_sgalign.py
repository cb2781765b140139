#!/usr/bin/env python3
"""Microbenchmark of SGAlign and the fused SGAlign-projection at G-TAD's ActivityNet size.

All 5,050 G-TAD anchors per video (T=100, 0.5*len window expansion), C=256, 32 inner + 4 context bins, forward +
backward; B=2 videos on the CPU, 16 on CUDA. Baselines, measured in the same run:
  * SGAlign: torchvision.ops.roi_align (aligned=False, H=1) on the same device, same ROIs and bins;
  * fused SGAlign + 1x1 conv (C*36 -> 512): the unfused pair, lofi.ops.sg_align then the conv (a linear layer).
Activation memory = bytes of the tensors autograd saves for backward (torch.autograd.graph.saved_tensors_hooks),
each storage counted once, parameters excluded; on CUDA also the peak allocated memory of one forward + backward.
On CUDA, SGAlign's achieved GB/s counts the compulsory traffic (x, the (R, C, bins) output and its gradient, the
plan) against the card's memory bandwidth.

THP_MEM_ALLOC_ENABLE=1 is set (unless already set) so that PyTorch's CPU allocator backs the large (R, C, bins)
tensors with transparent huge pages; with 4 KiB pages, first-touch page faults dominate every CPU path here.
Usage: python tools/bench_sgalign.py [--device cpu|cuda] [--batch B] [--json PATH] [--no-record]
"""
import argparse
import os
import sys

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # read once by c10's CPU allocator: set before torch allocates

import torch  # noqa: E402
import torchvision  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from lofi import benchmark  # noqa: E402
from lofi.atomic import write_json  # noqa: E402
from lofi.ops import extension, sg_align, sg_align_project  # noqa: E402
from lofi.models.gtad import anchor_rois, anchor_windows  # noqa: E402
from lofi.ops.sg_align import sampling_plan  # noqa: E402

# Peak memory bandwidth (GB/s) by card name, for the achieved-bandwidth ratio.
BANDWIDTH_GBS = {"H100 SXM": 3350, "H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H100 NVL": 3900, "H200": 4800,
                 "A100-SXM4-80GB": 2039, "A100-SXM4-40GB": 1555, "A100-PCIE-40GB": 1555, "A100 80GB PCIe": 1935}


def saved_bytes(fn, exclude) -> int:
    """Bytes autograd saves for backward while running ``fn()``: each storage once, ``exclude`` (parameters) not."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(storages.values())


def peak_cuda_bytes(fn) -> int:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def card_bandwidth() -> float:
    name = torch.cuda.get_device_name()
    for key, value in BANDWIDTH_GBS.items():
        if key in name:
            return float(value)
    return float("nan")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=None, help="videos (default: 2 on cpu, 16 on cuda)")
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--length", type=int, default=100, help="T = D, snippets per video")
    parser.add_argument("--out-channels", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (default: 3 on cpu, 10 on cuda)")
    parser.add_argument("--json", default=None, help="write the figures here as JSON")
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/BENCHMARKS.md")
    args = parser.parse_args(argv)

    cuda = args.device == "cuda"
    load = os.getloadavg()[0]  # the CPU figures depend on what else runs on the machine
    if cuda and not torch.cuda.is_available():
        sys.exit("bench_sgalign: --device cuda but no GPU is visible")
    dev = torch.device(args.device)
    B = args.batch or (16 if cuda else 2)
    C, T, O = args.channels, args.length, args.out_channels
    repeats = args.repeats or (10 if cuda else 3)
    base_repeats = min(repeats, 5) if cuda else 2  # the baselines take seconds each on the CPU
    if not extension.use_kernel(torch.empty(0, device=dev)):
        sys.exit("bench_sgalign: lofi._C is not built for this device (run setup.py build_ext --inplace)")
    torch.backends.cuda.matmul.allow_tf32 = False  # full fp32 for both the fused op and the unfused conv

    gen = torch.Generator(device=dev).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=dev)

    x, x_ctx = randn(B, C, T).requires_grad_(), randn(B, C, T).requires_grad_()
    rois = anchor_rois(anchor_windows(T, device=dev), B)  # the T(T+1)/2 valid anchors per video, as the head has them
    # planned once, as the G-TAD head does for its L (the plan's cost is the last row)
    plans = {n: sampling_plan(rois, T, B, [n], False) for n in (32, 4)}
    fused_plan = sampling_plan(rois, T, B, [32, 4], False, 36)
    R = rois.shape[0]
    weight = torch.nn.Parameter(randn(O, C * 36) / (C * 36) ** 0.5)
    bias = torch.nn.Parameter(torch.zeros(O, device=dev))
    g_in, g_ctx, g_out = randn(R, C, 32), randn(R, C, 4), randn(R, O)
    boxes = torch.cat([rois[:, :2], torch.zeros_like(rois[:, :1]), rois[:, 2:], torch.ones_like(rois[:, :1])], 1)

    def ours():
        a = sg_align(x, rois, 32, check=False, plan=plans[32])
        c = sg_align(x_ctx, rois, 4, check=False, plan=plans[4])
        return torch.autograd.grad([a, c], [x, x_ctx], [g_in, g_ctx])

    def tv():
        a = torchvision.ops.roi_align(x[:, :, None], boxes, (1, 32), 1.0, 0, aligned=False)[:, :, 0]
        c = torchvision.ops.roi_align(x_ctx[:, :, None], boxes, (1, 4), 1.0, 0, aligned=False)[:, :, 0]
        return torch.autograd.grad([a, c], [x, x_ctx], [g_in, g_ctx])

    def fused_forward():
        return sg_align_project(x, x_ctx, rois, weight, bias, check=False, plan=fused_plan)

    def unfused_forward():
        feats = torch.cat([sg_align(x, rois, 32, check=False, plan=plans[32]),
                           sg_align(x_ctx, rois, 4, check=False, plan=plans[4])], 2)
        return torch.nn.functional.linear(feats.flatten(1), weight, bias)

    def fused():
        return torch.autograd.grad(fused_forward(), [x, x_ctx, weight, bias], g_out)

    def unfused():
        return torch.autograd.grad(unfused_forward(), [x, x_ctx, weight, bias], g_out)

    # correctness guard: the timed paths agree
    torch.testing.assert_close(ours()[0], tv()[0], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(fused_forward(), unfused_forward(), rtol=1e-4, atol=1e-4)

    def plan_build():  # what new ROIs cost (with the transpose on CUDA): the G-TAD head pays it once per (B, L)
        return sampling_plan(rois, T, B, [32, 4], False, 36)

    t_plan = benchmark.median_seconds(plan_build, repeats=repeats, warmup=1, cuda=cuda)
    t_ours = benchmark.median_seconds(ours, repeats=repeats, warmup=1, cuda=cuda)
    t_tv = benchmark.median_seconds(tv, repeats=base_repeats, warmup=1 if cuda else 0, cuda=cuda)
    t_fused = benchmark.median_seconds(fused, repeats=repeats, warmup=1, cuda=cuda)
    t_unfused = benchmark.median_seconds(unfused, repeats=base_repeats, warmup=1 if cuda else 0, cuda=cuda)
    mem_fused = saved_bytes(fused_forward, [weight, bias])
    mem_unfused = saved_bytes(unfused_forward, [weight, bias])

    figures = {
        "device": benchmark.machine(), "B": B, "C": C, "T": T, "O": O, "R": R, "repeats": repeats,
        "thp": os.environ.get("THP_MEM_ALLOC_ENABLE"), "load_average": load,
        "sgalign_s": t_ours, "torchvision_s": t_tv, "sgalign_speedup": t_tv / t_ours,
        "fused_s": t_fused, "unfused_s": t_unfused, "fused_speedup": t_unfused / t_fused,
        "fused_saved_MB": mem_fused / 1e6, "unfused_saved_MB": mem_unfused / 1e6,
        "saved_memory_ratio": mem_unfused / mem_fused, "plan_build_s": t_plan,
    }
    rows = [
        ["SGAlign 32+4 bins, fwd+bwd", f"{t_ours * 1e3:.1f} ms", "torchvision roi_align", f"{t_tv * 1e3:.1f} ms",
         f"{t_tv / t_ours:.1f}x"],
        [f"fused SGAlign + 1x1 conv ({C}*36->{O}), fwd+bwd", f"{t_fused * 1e3:.1f} ms", "sg_align + conv",
         f"{t_unfused * 1e3:.1f} ms", f"{t_unfused / t_fused:.1f}x"],
        ["fused: saved activations", f"{mem_fused / 1e6:.1f} MB", "sg_align + conv", f"{mem_unfused / 1e6:.1f} MB",
         f"{mem_unfused / mem_fused:.1f}x less"],
        ["sampling plan for new ROIs (32+4 bins)", f"{t_plan * 1e3:.1f} ms", "-", "-",
         "once per ROI set (kept by the caller)"],
    ]
    if cuda:
        peak_fused, peak_unfused = peak_cuda_bytes(fused), peak_cuda_bytes(unfused)
        plan_bytes = sum(t.nbytes for p in plans.values() for t in p[:7])
        traffic = 4 * (4 * B * C * T + 2 * R * C * 36) + plan_bytes  # x, x_ctx and their grads; output and its grad
        gbs, peak_bw = traffic / t_ours / 1e9, card_bandwidth()
        figures.update({"fused_peak_MB": peak_fused / 1e6, "unfused_peak_MB": peak_unfused / 1e6,
                        "sgalign_GBps": gbs, "card_GBps": peak_bw, "bandwidth_fraction": gbs / peak_bw})
        rows.append(["fused: peak CUDA memory", f"{peak_fused / 1e6:.1f} MB", "sg_align + conv",
                     f"{peak_unfused / 1e6:.1f} MB", f"{peak_unfused / peak_fused:.1f}x less"])
        rows.append(["SGAlign achieved bandwidth", f"{gbs:.0f} GB/s", "card peak", f"{peak_bw:.0f} GB/s",
                     f"{100 * gbs / peak_bw:.0f}%"])
    table = benchmark.markdown_table(["op", "lofi", "baseline", "baseline time", "ratio"], rows)
    body = (f"B={B} videos, C={C}, T={T}, R={R} ROIs (all G-TAD anchors), {args.device}, float32, median of "
            f"{repeats} runs (baselines {base_repeats}), THP_MEM_ALLOC_ENABLE={figures['thp']}, "
            f"load average {load:.1f} at start.\n\n{table}")
    print(body)
    if args.json:
        write_json(figures, args.json, indent=1)
    if not args.no_record:
        command = " ".join(["python3", "tools/bench_sgalign.py"] + (argv or sys.argv[1:]))
        benchmark.record(f"SGAlign ({args.device})", body, command)
    return figures


if __name__ == "__main__":
    main()
