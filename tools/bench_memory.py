"""Per-video activation memory of the encoder and the G-TAD head (REFERENCE §1.4, issue 4).

Activation memory = bytes of the tensors autograd saves for backward, captured with
``torch.autograd.graph.saved_tensors_hooks``; every storage is counted once (by data pointer) and parameters are
excluded. This works on the CPU. With ``--device cuda`` the peak CUDA memory of forward + backward is reported too.

The encoder encodes every snippet independently, so its memory is linear in L: it is measured on 1 and 2 snippets at
the fidelity's T×H×W, the two are checked to scale linearly (within 1 %), and the per-snippet figure is scaled by L.
(Full fidelity does not fit this machine: ResNet-18 at 100×8×224² saves about 20 GB per video.)

``--budget-gib N`` adds the per-video training memory (encoder + fused head at that fidelity, fp32) of each LoFi
configuration and of full-fidelity end-to-end training, and the largest batch that fits N GiB next to the model state
(parameters, gradients and Adam moments).

    PYTHONPATH=. python tools/bench_memory.py [--encoders tsm_r18,tsm_r50] [--budget-gib 32] [--json PATH] [--no-record]
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lofi import benchmark, ops  # noqa: E402
from lofi.engine.memory import saved_bytes  # noqa: E402
from lofi.models import GTAD, build_encoder  # noqa: E402

GIB = 2 ** 30
# (name, L, T, H=W): full fidelity and the paper's LoFi configurations (r_t = 4, r_s = 2, ST: r_t = 2, r_s = √2).
FIDELITIES = [("full", 100, 8, 224), ("S-LoFi", 100, 8, 112), ("T-LoFi", 25, 8, 224), ("ST-LoFi", 50, 8, 158)]
HEAD_LENGTHS = (25, 50, 100)


def peak_cuda_bytes(model, fn) -> int:
    """Peak CUDA memory of forward + backward above what was allocated before (parameters, inputs)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    sum(v.float().sum() for v in (out.values() if isinstance(out, dict) else [out])).backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    model.zero_grad(set_to_none=True)
    return peak


def measure_encoder(name: str, L: int, T: int, size: int, device: str) -> dict:
    enc = build_encoder(name).to(device).train()

    def run(n):
        frames = torch.randint(0, 256, (1, n, T, 3, size, size), dtype=torch.uint8, device=device)
        return saved_bytes(lambda: enc(frames), enc.parameters())

    one, two = run(1), run(2)
    ratio = two / one
    if abs(ratio - 2.0) > 0.02:
        raise RuntimeError(f"{name} {T}x{size}²: saved bytes do not scale linearly with snippets (2/1 = {ratio:.3f})")
    row = {"encoder": name, "L": L, "T": T, "size": size, "per_snippet_bytes": one, "linear_ratio_2_to_1": ratio,
           "per_video_bytes": one * L}
    if device == "cuda":
        n = min(L, 4)
        frames = torch.randint(0, 256, (1, n, T, 3, size, size), dtype=torch.uint8, device=device)
        row["cuda_peak_bytes_per_video"] = peak_cuda_bytes(enc, lambda: enc(frames)) * L // n
    return row


def measure_head(in_dim: int, L: int, fused: bool, device: str) -> dict:
    torch.manual_seed(0)
    head = GTAD(in_dim, fused=fused).to(device)
    x = torch.randn(1, in_dim, L, device=device, requires_grad=True)
    row = {"in_dim": in_dim, "L": L, "fused": fused, "per_video_bytes": saved_bytes(lambda: head(x), head.parameters())}
    if device == "cuda":
        row["cuda_peak_bytes_per_video"] = peak_cuda_bytes(head, lambda: head(x))
    return row


def model_state_bytes(encoder: str) -> int:
    """fp32 parameters + gradients + two Adam moments of encoder + G-TAD head."""
    enc = build_encoder(encoder)
    params = sum(p.numel() for p in enc.parameters()) + sum(p.numel() for p in GTAD(enc.out_dim).parameters())
    return params * 4 * 4


def budget_rows(encoder_rows, head_rows, budget_gib: float) -> list:
    heads = {r["L"]: r["per_video_bytes"] for r in head_rows if r["fused"] and r["in_dim"] == 512}
    rows = []
    for name, L, T, size in FIDELITIES:
        for er in (r for r in encoder_rows if (r["L"], r["T"], r["size"]) == (L, T, size)):
            state = model_state_bytes(er["encoder"])
            per_video = er["per_video_bytes"] + heads[L]
            rows.append({"config": name, "encoder": er["encoder"], "fidelity": f"{L}x{T}x{size}²",
                         "per_video_bytes": per_video, "model_state_bytes": state,
                         "max_batch": max(0, int((budget_gib * GIB - state) // per_video))})
    return rows


def gib(b) -> str:
    return f"{b / GIB:.2f}"


def mib(b) -> str:
    return f"{b / 2**20:.1f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", default="tsm_r18", help="comma-separated encoder names (default tsm_r18)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--budget-gib", type=float, default=None, help="also report per-video training memory and "
                        "the largest batch that fits this many GiB")
    parser.add_argument("--json", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(True)

    head_rows = [measure_head(512, L, fused, args.device) for L in HEAD_LENGTHS for fused in (True, False)]
    encoder_rows = [measure_encoder(name, L, T, size, args.device)
                    for name in args.encoders.split(",") for _, L, T, size in FIDELITIES]
    path = "compiled kernel" if ops.available() else "pure-PyTorch reference"
    cuda = args.device == "cuda"

    tables = [f"G-TAD head (in_dim 512, fp32, batch 1; lofi.ops {path}):\n",
              benchmark.markdown_table(
                  ["L", "SGAlign", "saved for backward (MiB/video)"] + (["CUDA peak (MiB)"] if cuda else []),
                  [[r["L"], "fused" if r["fused"] else "unfused", mib(r["per_video_bytes"])]
                   + ([mib(r["cuda_peak_bytes_per_video"])] if cuda else []) for r in head_rows]),
              "\nEncoder (fp32, BN in training mode; measured on 1 and 2 snippets, scaled by L):\n",
              benchmark.markdown_table(
                  ["encoder", "L×T×H²", "per snippet (MiB)", "2:1 ratio", "per video (GiB)"]
                  + (["CUDA peak (GiB)"] if cuda else []),
                  [[r["encoder"], f"{r['L']}×{r['T']}×{r['size']}²", mib(r["per_snippet_bytes"]),
                    f"{r['linear_ratio_2_to_1']:.4f}", gib(r["per_video_bytes"])]
                   + ([gib(r["cuda_peak_bytes_per_video"])] if cuda else []) for r in encoder_rows])]
    result = {"device": args.device, "sgalign_path": path, "head": head_rows, "encoder": encoder_rows}
    if args.budget_gib is not None:
        result["budget_gib"] = args.budget_gib
        result["budget"] = budget_rows(encoder_rows, head_rows, args.budget_gib)
        tables += [f"\nEnd-to-end training memory per video (encoder + fused head, fp32 activations) and the largest "
                   f"batch within {args.budget_gib:g} GiB next to the model state (params + grads + Adam):\n",
                   benchmark.markdown_table(
                       ["config", "encoder", "L×T×H²", "per video (GiB)", "model state (GiB)",
                        f"max batch in {args.budget_gib:g} GiB"],
                       [[r["config"], r["encoder"], r["fidelity"], gib(r["per_video_bytes"]),
                         gib(r["model_state_bytes"]), r["max_batch"]] for r in result["budget"]])]
    body = "\n".join(tables)
    print(body)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    if not args.no_record:
        benchmark.record("Activation memory (tools/bench_memory.py)", body,
                         "python tools/bench_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    return result


if __name__ == "__main__":
    main()
