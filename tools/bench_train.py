"""End-to-end training throughput: videos/s (decode + sample + encoder + G-TAD forward/backward + SGD step) and peak
CUDA memory per LoFi fidelity, on synthetic shards through the real reader; or, with ``--from-run``, the per-stage
throughput a finished ``lofi.train`` run logged (metrics.json).

    python tools/bench_train.py [--device cpu|cuda] [--L 16 --T 4 --size 64 --batch 4 --steps 3] [--json P] [--no-record]
    python tools/bench_train.py --from-run work_dirs/demo [--json P] [--no-record]

The default size runs in about a minute on 2 CPU cores. On a GPU, e.g. ``--device cuda --L 100 --T 8 --size 224
--batch 4`` gives the paper's fidelities (S 100x8@112, T 25x8@224, ST 50x8@158).
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lofi.benchmark import machine, markdown_table, record  # noqa: E402
from lofi.data import build_loader  # noqa: E402
from lofi.fidelity import Fidelity, LoFiSchedule  # noqa: E402
from lofi.models import GTAD, build_encoder, build_targets, gtad_loss  # noqa: E402


def synthetic_shards(root: Path, videos: int, fps: int) -> Path:
    from lofi.data.packing import make_shards
    from lofi.data.synthetic import make_synthetic
    paths = make_synthetic(root / "raw", "demo", seed=0, num_videos=videos, num_clips=0, progress=False)
    make_shards(paths["videos"], paths["annotations"], root / "shards", fps=fps, short_side=128, progress=False)
    return root / "shards"


def bench_fidelity(shards: Path, fid: Fidelity, args, device: torch.device) -> dict:
    """videos/s over ``args.steps`` timed training steps (after one warm-up step) at one fidelity."""
    torch.manual_seed(0)
    encoder = build_encoder(args.encoder, amp=args.amp)
    head = GTAD(encoder.out_dim)
    model = torch.nn.ModuleDict({"encoder": encoder, "head": head}).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.0, weight_decay=1e-4)
    loader = build_loader(str(shards), "training", batch_size=args.batch, schedule=lambda e, i: fid, train=True,
                          epoch=0, seed=0, backend="cpu", num_workers=args.workers)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    it, videos, start = iter(loader), 0, None
    for step in range(args.steps + 1):
        if step == 1:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        pred = head(encoder(batch["frames"].to(device, non_blocking=True)))
        loss = gtad_loss(pred, build_targets(batch["meta"], fid.L))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        videos += len(batch["meta"]) if step else 0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"fidelity": str(fid), "videos_per_s": videos / seconds, "peak_cuda_gib": peak,
            "per_video_cuda_gib": peak / args.batch if peak is not None else None, "loss": float(loss.detach())}


def from_run(run: Path) -> tuple:
    metrics = json.loads((run / "metrics.json").read_text())
    rows = [[k[len("time_"):], f"{v['videos_per_s']:.2f}" if v.get("videos_per_s") else "-", f"{v['seconds']:.0f}",
             v.get("processes", 1), v.get("device", "?")] for k, v in metrics.items() if k.startswith("time_")]
    table = markdown_table(["stage", "videos/s", "seconds", "processes", "device"], rows)
    return table, {"run": str(run), "stages": {k: v for k, v in metrics.items() if k.startswith("time_")},
                   "eval": metrics.get("eval", {}).get("average_mAP")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from-run", help="report the per-stage throughput of a finished run directory instead")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--encoder", default="tsm_r18")
    p.add_argument("--L", type=int, default=16)
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--videos", type=int, default=8, help="synthetic videos to generate when --shards is not given")
    p.add_argument("--shards", help="existing shards (training subset) instead of generating synthetic ones")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--amp", action="store_true", help="bf16 autocast in the encoder on CUDA")
    p.add_argument("--full", action="store_true", help="also the full fidelity (end to end; large on real sizes)")
    p.add_argument("--json", help="write the figures as JSON here")
    p.add_argument("--no-record", action="store_true", help="do not append to docs/BENCHMARKS.md")
    args = p.parse_args()
    if args.from_run:
        table, figures = from_run(Path(args.from_run))
        title, command = "End-to-end training throughput per stage (lofi.train)", \
            f"python tools/bench_train.py --from-run {args.from_run}"
    else:
        device = torch.device(args.device)
        full = Fidelity(args.L, args.T, args.size, args.size)
        fids = LoFiSchedule("long_cycle", full).fidelities() + ([full] if args.full else [])
        with tempfile.TemporaryDirectory() as tmp:
            shards = Path(args.shards) if args.shards else synthetic_shards(Path(tmp), args.videos, 15)
            results = [bench_fidelity(shards, f, args, device) for f in fids]
        names = ["S-LoFi", "T-LoFi", "ST-LoFi", "full"]
        rows = [[n, r["fidelity"], f"{r['videos_per_s']:.2f}",
                 "-" if r["peak_cuda_gib"] is None else f"{r['peak_cuda_gib']:.2f}",
                 "-" if r["per_video_cuda_gib"] is None else f"{r['per_video_cuda_gib']:.2f}"]
                for n, r in zip(names, results)]
        table = markdown_table(["config", "fidelity", "videos/s", "peak CUDA GiB", "GiB per video"], rows)
        figures = {"device": str(device), "encoder": args.encoder, "batch": args.batch, "amp": args.amp,
                   "results": results}
        title = f"LoFi training steps: videos/s and peak memory per fidelity ({args.encoder}, batch {args.batch}, " \
                f"{device.type}, cpu data backend)"
        command = "python tools/bench_train.py " + " ".join(sys.argv[1:])
    figures["machine"] = machine()
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    if not args.no_record:
        record(title, table, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
