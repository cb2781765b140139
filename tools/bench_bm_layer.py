#!/usr/bin/env python
"""Memory and time of BMN's BM layer + Conv3d at L snippets: the public implementations' dense computation (the BM
features (B, C, N, L, L) as one matmul with the dense (L, N·L·L) mask, then the Conv3d) against lofi's fused one
(lofi.models.bmn.bm_conv3d: the Conv3d weight contracted with the features first, then the sparse BM weights).

Reported: the bytes of the fixed BM weights (dense mask vs the sparse COO matrix: indices + values), the bytes autograd
saves for backward per video (lofi.engine.memory.saved_bytes: unique storages, parameters and the fixed weights
excluded), and the median forward + backward time; the two outputs are checked to agree.

    PYTHONPATH=. python tools/bench_bm_layer.py [--L 100] [--batch 1] [--repeats 3] [--no-record]
"""
import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lofi import benchmark  # noqa: E402
from lofi.engine.memory import saved_bytes  # noqa: E402
from lofi.models.bmn import bm_conv3d, bm_weights, dense_bm_mask  # noqa: E402

MIB = 2 ** 20


def sparse_bytes(t: torch.Tensor) -> int:
    return t._indices().nbytes + t._values().nbytes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--L", type=int, default=100, help="snippets (default 100, BMN's ActivityNet setting)")
    parser.add_argument("--channels", type=int, default=256, help="BM feature channels (BMN: 256)")
    parser.add_argument("--out", type=int, default=512, help="Conv3d output channels (BMN: 512)")
    parser.add_argument("--samples", type=int, default=32, help="N bins (BMN: 32)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    L, C, O, N, B = args.L, args.channels, args.out, args.samples, args.batch

    torch.manual_seed(0)
    sparse = bm_weights(L, N).float()
    mask = dense_bm_mask(sparse, N)  # (L, N·L·L)
    conv = torch.nn.Conv3d(C, O, (N, 1, 1), stride=(N, 1, 1))
    x = torch.randn(B, C, L, requires_grad=True)
    fixed = [conv.weight, conv.bias, mask, sparse._indices(), sparse._values()]

    def fused():
        return F.relu(bm_conv3d(x, sparse, conv.weight, conv.bias))

    def dense():
        return F.relu(conv((x.reshape(B * C, L) @ mask).view(B, C, N, L, L)).squeeze(2))

    with torch.no_grad():
        diff = (fused() - dense()).abs().max().item()
    if diff > 1e-3:
        raise RuntimeError(f"fused and dense BM layer + Conv3d differ by {diff}")
    rows = []
    for name, fn in (("dense (public: mask matmul, then Conv3d)", dense), ("fused (lofi: sparse)", fused)):
        saved = saved_bytes(fn, fixed) / B

        def step():
            fn().sum().backward()
            x.grad = conv.weight.grad = conv.bias.grad = None

        seconds = benchmark.median_seconds(step, repeats=args.repeats)
        rows.append([name, f"{saved / MIB:.1f}", f"{seconds * 1e3:.0f}"])
    load = os.getloadavg()[0]
    body = (f"2-core CPU machine. BM layer + Conv3d + ReLU at L={L} (D={L}), C={C} → {O} channels, N={N} bins of 3 "
            f"points, batch {B}, float32, {torch.get_num_threads()} threads, median of {args.repeats}, load average "
            f"{load:.1f} at the end (other jobs shared the cores). Fused vs dense output: max |diff| {diff:.2g}.\n\n"
            f"Fixed BM weights: dense mask (L, N·D·L) {mask.nbytes / 1e6:.1f} MB ({mask.nbytes / MIB:.1f} MiB); "
            f"sparse COO {sparse._nnz():,} nonzeros (coalesced), {sparse_bytes(sparse) / 1e6:.1f} MB "
            f"({sparse_bytes(sparse) / MIB:.1f} MiB: int64 indices + float32 values), "
            f"{mask.nbytes / sparse_bytes(sparse):.0f}x less.\n\n"
            + benchmark.markdown_table(["layer", "saved for backward (MiB/video)", "forward + backward (ms)"], rows))
    print(body)
    command = "python tools/bench_bm_layer.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if not args.no_record:
        benchmark.record("BMN BM layer: dense vs fused (tools/bench_bm_layer.py)", body, command)
    return rows


if __name__ == "__main__":
    main()
