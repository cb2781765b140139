"""Per-video activation memory of the encoder and the localization heads (lofi.benchmark_memory), as markdown tables.

Activation memory = bytes of the tensors autograd saves for backward; this works on the CPU. With ``--device cuda``
the peak CUDA memory of forward + backward is reported too. ``--budget-gib N`` adds the per-video training memory
(encoder + head at that fidelity, fp32) of each LoFi configuration and of full-fidelity end-to-end training, and the
largest batch that fits N GiB next to the model state (parameters, gradients and Adam moments), per encoder and head.

    PYTHONPATH=. python tools/bench_memory.py [--encoders tsm_r18,tsm_r50] [--heads gtad,bmn,actionformer]
        [--budget-gib 32] [--json PATH] [--no-record]
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lofi import benchmark  # noqa: E402
from lofi.benchmark_memory import GIB, measure  # noqa: E402


def gib(b) -> str:
    return f"{b / GIB:.2f}"


def mib(b) -> str:
    return f"{b / 2**20:.1f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", default="tsm_r18", help="comma-separated encoder names (default tsm_r18)")
    parser.add_argument("--heads", default="gtad", help="comma-separated head names (default gtad)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--budget-gib", type=float, default=None, help="also report per-video training memory and "
                        "the largest batch that fits this many GiB")
    parser.add_argument("--json", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/BENCHMARKS.md")
    args = parser.parse_args(argv)

    result = measure(args.encoders.split(","), args.device, args.budget_gib, args.heads.split(","))
    cuda = args.device == "cuda"
    tables = [f"Localization heads (in_dim 512, fp32, batch 1, each with its config section's defaults; G-TAD's "
              f"SGAlign fused with its projection or not; lofi.ops {result['sgalign_path']}):\n",
              benchmark.markdown_table(
                  ["head", "L", "variant", "saved for backward (MiB/video)"] + (["CUDA peak (MiB)"] if cuda else []),
                  [[r["head"], r["L"], ("fused" if r["fused"] else "unfused") if r["head"] == "gtad" else "",
                    mib(r["per_video_bytes"])]
                   + ([mib(r["cuda_peak_bytes_per_video"])] if cuda else []) for r in result["head"]]),
              "\nEncoder (fp32, BN in training mode; measured on 1 and 2 snippets, scaled by L):\n",
              benchmark.markdown_table(
                  ["encoder", "L×T×H²", "per snippet (MiB)", "2:1 ratio", "per video (GiB)"]
                  + (["CUDA peak (GiB)"] if cuda else []),
                  [[r["encoder"], f"{r['L']}×{r['T']}×{r['size']}²", mib(r["per_snippet_bytes"]),
                    f"{r['linear_ratio_2_to_1']:.4f}", gib(r["per_video_bytes"])]
                   + ([gib(r["cuda_peak_bytes_per_video"])] if cuda else []) for r in result["encoder"]])]
    if args.budget_gib is not None:
        tables += [f"\nEnd-to-end training memory per video (encoder + head, G-TAD fused, fp32 activations) and the "
                   f"largest batch within {args.budget_gib:g} GiB next to the model state (params + grads + Adam):\n",
                   benchmark.markdown_table(
                       ["config", "encoder", "head", "L×T×H²", "head (MiB)", "per video (GiB)", "model state (GiB)",
                        f"max batch in {args.budget_gib:g} GiB"],
                       [[r["config"], r["encoder"], r["head"], r["fidelity"], mib(r["head_bytes"]),
                         gib(r["per_video_bytes"]), gib(r["model_state_bytes"]), r["max_batch"]]
                        for r in result["budget"]])]
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
