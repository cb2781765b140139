#!/usr/bin/env python3
"""Microbenchmark of soft-NMS at G-TAD's ActivityNet size.

Default: 100 videos x 5,050 proposals (all anchors [s, e] of a T=100 map, normalized time) with G-TAD-like scores
cls x reg (smooth maps peaking on a few ground-truth segments), Gaussian, top_k=100, sigma=0.8, float32.
--method bmn: BMN's rule with its ActivityNet values (sigma 0.4, low 0.5, high 0.9) unless given.
Rows, all measured in this run (median of repeated runs; kernels with check=False, as hot paths call them):
  * lofi.ops.batched_soft_nms, the compiled kernel: C++ on the CPU (torch's intra-op threads) and, with
    --device cuda, CUDA (one launch for the batch);
  * the project's pure-PyTorch reference, lofi.ops.batched_soft_nms_reference, on the same device (all videos at once);
  * a vectorized NumPy O(top_k·N) loop, one video at a time (NumPy arrays over the N candidates);
  * G-TAD's (bmn: BMN's) per-video pure-Python loop (lofi.ops.soft_nms_baselines.gtad_style_soft_nms,
    bmn_style_soft_nms), timed on --gtad-videos videos and scaled linearly to the batch.
Each row's ratio is its time over the kernel's. Every baseline's picks are checked against the kernel's.
Usage: python tools/bench_soft_nms.py [--device cpu|cuda] [--method gaussian|bmn] [--videos B] [--json PATH]
       [--no-record]
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
from lofi import benchmark  # noqa: E402
from lofi.ops import batched_soft_nms, batched_soft_nms_reference, extension  # noqa: E402
from lofi.ops.soft_nms_baselines import bmn_style_soft_nms, gtad_like_inputs, gtad_style_soft_nms  # noqa: E402
from lofi.atomic import write_json  # noqa: E402


def numpy_soft_nms(segments: np.ndarray, scores: np.ndarray, sigma: float, top_k: int, bmn=None):
    """One video, vectorized over its N candidates with NumPy, O(top_k·N): the baseline a careful Python user writes.
    ``bmn``: (low, high) for BMN's rule, which decays only IoUs above low + (high - low)·(width of the pick)."""
    start = segments[:, 0].astype(np.float64)
    end = segments[:, 1].astype(np.float64)
    length = end - start
    cur = np.where(scores > 0, scores.astype(np.float64), -np.inf)
    picks, values = [], []
    for _ in range(min(top_k, len(cur))):
        i = int(np.argmax(cur))
        if not cur[i] > 0:
            break
        picks.append(i)
        values.append(cur[i])
        cur[i] = -np.inf
        inter = np.maximum(np.minimum(end, end[i]) - np.maximum(start, start[i]), 0)
        union = length + length[i] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        weight = np.exp(-(iou * iou) / sigma)
        if bmn is not None:
            low, high = bmn
            weight[iou <= low + (high - low) * length[i]] = 1.0
        cur *= weight
    return picks, values


def card_peak_gbs() -> float:
    """The current GPU's memory bandwidth from its memory clock (kHz, double data rate) and bus width (bits)."""
    props = torch.cuda.get_device_properties()
    clock, width = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    return 2 * clock * 1e3 * width / 8 / 1e9


def same_picks(a, b) -> bool:
    return list(a) == list(b)


def cpu_seconds(fn, repeats: int) -> float:
    """Median CPU time of ``fn()`` (all threads of this process): the work done, whatever else the machine runs."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return sorted(times)[len(times) // 2]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--videos", type=int, default=100)
    parser.add_argument("--snippets", type=int, default=100, help="T: T(T+1)/2 proposals per video")
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--method", default="gaussian", choices=["gaussian", "bmn"])
    parser.add_argument("--sigma", type=float, default=None, help="default 0.8 (gaussian), 0.4 (bmn)")
    parser.add_argument("--iou-threshold", type=float, default=0.5, help="bmn: the low threshold")
    parser.add_argument("--high-threshold", type=float, default=0.9, help="bmn only")
    parser.add_argument("--repeats", type=int, default=9, help="runs of the kernels (baselines: --slow-repeats)")
    parser.add_argument("--slow-repeats", type=int, default=3)
    parser.add_argument("--gtad-videos", type=int, default=3, help="videos the Python loop is timed on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the figures here as JSON")
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    bmn = args.method == "bmn"
    if args.sigma is None:
        args.sigma = 0.4 if bmn else 0.8
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a GPU")
    cuda = args.device == "cuda"
    if not extension.available() or (cuda and not extension.cuda_compiled()):
        print("warning: lofi._C is missing or lacks this device's kernel; 'kernel' rows time the reference")
    segments, scores = gtad_like_inputs(args.videos, args.snippets, args.seed)
    b, n = scores.shape
    kw = dict(sigma=args.sigma, top_k=args.top_k, method=args.method, iou_threshold=args.iou_threshold,
              high_threshold=args.high_threshold)
    rule = (f"{args.method}, top_k={args.top_k}, sigma={args.sigma}"
            + (f", low={args.iou_threshold}, high={args.high_threshold}" if bmn else ""))
    load = os.getloadavg()[0]
    print(f"soft-NMS: {b} videos x {n} proposals, {rule}, float32, "
          f"{torch.get_num_threads()} CPU threads, load average {load:.1f} on {os.cpu_count()} cores")

    rows = []  # (name, seconds for the batch, CPU seconds or None, note)
    cpu_idx, _ = batched_soft_nms(segments, scores, **kw)
    kernel_cpu = lambda: batched_soft_nms(segments, scores, check=False, **kw)  # noqa: E731
    t_cpu = benchmark.median_seconds(kernel_cpu, args.repeats)
    rows.append(("C++ kernel, CPU", t_cpu, cpu_seconds(kernel_cpu, args.repeats), f"{torch.get_num_threads()} threads"))
    agree = {}
    if cuda:
        seg_d, sc_d = segments.cuda(), scores.cuda()
        gpu_idx, _ = batched_soft_nms(seg_d, sc_d, **kw)
        agree["cuda_vs_cpu_videos"] = int((gpu_idx.cpu() == cpu_idx).all(1).sum())
        t_gpu = benchmark.median_seconds(lambda: batched_soft_nms(seg_d, sc_d, check=False, **kw), args.repeats,
                                         cuda=True)
        rows.append(("CUDA kernel", t_gpu, None, "one launch"))
        ref_args, ref_note = (seg_d, sc_d), "CUDA"
    else:
        ref_args, ref_note = (segments, scores), "CPU"
    ref_idx, _ = batched_soft_nms_reference(*ref_args, **kw)
    agree["reference_vs_cpu_videos"] = int((ref_idx.cpu() == cpu_idx).all(1).sum())
    t_ref = benchmark.median_seconds(lambda: batched_soft_nms_reference(*ref_args, check=False, **kw),
                                     args.slow_repeats, warmup=0, cuda=cuda)
    rows.append(("PyTorch reference", t_ref, None, ref_note + ", all videos at once"))

    seg_np, sc_np = segments.numpy(), scores.numpy()
    valid = [cpu_idx[v][cpu_idx[v] >= 0].tolist() for v in range(b)]
    thresholds = (args.iou_threshold, args.high_threshold) if bmn else None
    agree["numpy_vs_cpu_videos"] = sum(same_picks(numpy_soft_nms(seg_np[v], sc_np[v], args.sigma, args.top_k,
                                                                 thresholds)[0], valid[v]) for v in range(b))
    numpy_all = lambda: [numpy_soft_nms(seg_np[v], sc_np[v], args.sigma, args.top_k, thresholds)  # noqa: E731
                         for v in range(b)]
    t_np = benchmark.median_seconds(numpy_all, args.slow_repeats, warmup=0)
    rows.append(("NumPy loop, per video", t_np, cpu_seconds(numpy_all, 1), "vectorized over N"))

    g = min(args.gtad_videos, b)
    seg_list, sc_list = seg_np[:g].tolist(), sc_np[:g].tolist()
    loop, loop_name = ("bmn", "BMN") if bmn else ("gtad", "G-TAD")
    start = time.perf_counter()
    if bmn:
        picks = [bmn_style_soft_nms(seg_list[v], sc_list[v], args.sigma, args.iou_threshold, args.high_threshold,
                                    args.top_k) for v in range(g)]
    else:
        picks = [gtad_style_soft_nms(seg_list[v], sc_list[v], args.sigma, args.top_k) for v in range(g)]
    t_gtad_video = (time.perf_counter() - start) / g
    agree[f"{loop}_vs_cpu_videos_of_{g}"] = sum(same_picks(picks[v][0], valid[v]) for v in range(g))
    rows.append((f"{loop_name} Python loop", t_gtad_video * b, None, f"{t_gtad_video:.3f} s/video on {g} videos, x{b}"))

    kernel = rows[1][1] if cuda else t_cpu
    header = ["implementation", "seconds (batch)", "ms / video", f"x kernel ({'CUDA' if cuda else 'CPU'})",
              "x C++ CPU", "CPU seconds", "note"]
    table = [[name, f"{t:.4g}", f"{1e3 * t / b:.4g}", f"{t / kernel:.1f}", f"{t / t_cpu:.1f}",
              "" if c is None else f"{c:.4g}", note] for name, t, c, note in rows]
    figures = {
        "device": args.device, "machine": benchmark.machine(), "videos": b, "proposals": n, "top_k": args.top_k,
        "method": args.method, "sigma": args.sigma, "iou_threshold": args.iou_threshold,
        "high_threshold": args.high_threshold, "threads": torch.get_num_threads(), "load_average": load,
        "seconds": {name: t for name, t, _, _ in rows}, "cpu_seconds": {name: c for name, _, c, _ in rows if c},
        "gtad_seconds_per_video": t_gtad_video, "agreement": agree,
        "targets": {f"cpu_vs_{loop}_loop>=200": t_gtad_video * b / t_cpu, "cpu_vs_numpy>=20": t_np / t_cpu},
    }
    if cuda:
        figures["targets"]["cuda_vs_cpu>=20"] = t_cpu / kernel
        moved = segments.nbytes + scores.nbytes + b * args.top_k * 12
        peak = card_peak_gbs()
        figures["cuda_gbs"] = moved / kernel / 1e9
        figures["card_peak_gbs"] = peak
    text = (f"{b} videos x {n} proposals, {rule}; wall times are medians; CPU seconds "
            f"(process time, all threads) show the work when the machine is shared (load average {load:.1f} on "
            f"{os.cpu_count()} cores).\n\n")
    text += benchmark.markdown_table(header, table)
    text += "\n\nAgreement of the picks with the C++ kernel (videos with identical indices): " + ", ".join(
        f"{k} {v}" for k, v in agree.items())
    text += "\n\nTargets (ratios): " + ", ".join(f"{k.replace('>=', ' (>= ')}): {v:.1f}" for k, v in
                                                   figures["targets"].items())
    if cuda:
        card = f"{peak:.0f} GB/s" if peak > 0 else "(unknown) GB/s"
        text += (f"\n\nCUDA: {figures['cuda_gbs']:.2f} GB/s of compulsory traffic (inputs once, outputs once) of the "
                 f"card's {card}: soft-NMS is bound by its {args.top_k} dependent steps and float64 arithmetic, "
                 "not by memory")
    print(text)
    if args.json:
        write_json(figures, args.json)
    if not args.no_record:
        command = "python3 " + " ".join(["tools/bench_soft_nms.py"] + (sys.argv[1:] if argv is None else argv))
        benchmark.record(f"soft-NMS{' bmn' if bmn else ''} ({args.device})", text, command)
    return figures


if __name__ == "__main__":
    main()
