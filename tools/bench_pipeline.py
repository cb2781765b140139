"""Throughput of the data pipeline in unique frames per second, per backend, codec and fidelity.

Real-length videos (minutes, so frames are not repeated) are generated procedurally (moving gradients, a drifting
noise texture and moving boxes), encoded with libx264, and packed by `lofi.data.packing.make_shards` into h264, vp9
and mjpeg shards (15 fps, short side 256, a keyframe every second), cached in --cache.

Per codec and fidelity (full 100×8@224², S 100×8@112², T 25×8@224², ST 50×8@158²) it measures, on one core each:
  ceiling-ffmpeg  `ffmpeg -benchmark -threads 1` decoding the whole stream (frames per CPU second, utime+stime)
  ceiling-gops    PyAV decoding exactly the GOPs the sampled frames need (seek to each needed keyframe, decode to the
                  last needed frame, RGB conversion of the needed ones), the index precomputed outside the timing
  decode          the backend's decoder on the sampled unique frames (cpu: lofi.data.backend_cpu.decode_frames)
  resize+crop     the backend's resize (antialias) + centre crop of those frames (cpu: backend_cpu.crop_into)
  delivery-serial build_loader with num_workers=0 (cpu) or one DALI thread: decode, sample, resize, collate
  delivery        build_loader with --workers DataLoader workers (cpu) or --workers DALI threads
Stage and serial figures are per CPU-second of this process (the least of --repeats runs, interleaved), so they
are per core and robust to other load; the parallel deliveries are per wall-clock second. Unique frames = distinct
frame indices the sampler asks for. The bottleneck of the serial cpu delivery is named with its share of the time
(decode / resize+crop / the rest: reading, planning, gathering, collating).

    PYTHONPATH=. python tools/bench_pipeline.py [--videos 1] [--seconds 60] [--codecs vp9] [--fidelities full,t]
        [--backends cpu,dali] [--workers 2] [--repeats 2] [--json PATH] [--no-record]
The default (one 60 s vp9 video, full and T-LoFi) takes about a minute once the shards are cached; the recorded run:
    --videos 2 --seconds 120 --repeats 3 --codecs h264,vp9,mjpeg --fidelities full,s,t,st

With --shards SOURCE (a base URL or pipe: template of a shard directory, see lofi.data.remote) it measures instead
the delivered frames/s (B·L·T per wall second, --workers DataLoader workers, cpu backend) of one epoch of --subset:
from SOURCE with an empty cache (every shard downloaded, checked and decoded), from SOURCE again (the cache warm),
and from the local directory the fetched shards form, beside each other:
    PYTHONPATH=. python tools/bench_pipeline.py --shards http://HOST/shards/anet --subset validation --fidelities t
"""
import argparse
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
import webdataset as wds

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lofi import benchmark  # noqa: E402
from lofi.atomic import write_json  # noqa: E402
from lofi.data import build_loader  # noqa: E402
from lofi.data.backend_cpu import crop_into, decode_frames, gop_runs, stream_index  # noqa: E402
from lofi.data.sampling import snippet_frame_indices  # noqa: E402
from lofi.data.spatial import crop_params  # noqa: E402
from lofi.fidelity import Fidelity, LoFiSchedule  # noqa: E402

FIDELITIES = {"full": Fidelity(100, 8, 224, 224), "s": Fidelity(100, 8, 112, 112), "t": Fidelity(25, 8, 224, 224),
              "st": Fidelity(50, 8, 158, 158)}
SIZE = (256, 320)  # (height, width) of the generated videos: short side 256 as in the shards
FPS = 15


def source_frame(i: int, rng_tex: np.ndarray, seed: int) -> np.ndarray:
    """Frame i (256, 320, 3): gradients drifting with time, a scrolling noise texture and two moving boxes."""
    h, w = SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = i / FPS
    img = np.empty((h, w, 3), np.float32)
    img[..., 0] = 120 + 80 * np.sin(xx / 23 + t * 0.9 + seed)
    img[..., 1] = 120 + 80 * np.sin(yy / 17 - t * 0.7)
    img[..., 2] = 120 + 80 * np.sin((xx + yy) / 31 + t * 0.3)
    img += np.roll(rng_tex, (i * 3) % w, axis=1)[:h, :w, None]
    for k, (speed, colour) in enumerate(((40, (250, 40, 40)), (-65, (30, 240, 60)))):
        x = int((w / 2 + (w / 2 - 40) * np.sin(t * speed / 100 + k)) - 20)
        y = int((h / 2 + (h / 2 - 40) * np.cos(t * speed / 130 + 2 * k)) - 20)
        img[max(0, y):y + 40, max(0, x):x + 40] = colour
    return img.clip(0, 255).astype(np.uint8)


def make_sources(out: Path, videos: int, seconds: float) -> Path:
    """`videos` procedural h264 mp4s of `seconds` each in out/videos and an ActivityNet-format out/annotations.json."""
    ann = out / "annotations.json"
    if ann.exists():
        return ann
    (out / "videos").mkdir(parents=True, exist_ok=True)
    database = {}
    for v in range(videos):
        tex = np.random.default_rng(v).normal(0, 18, (SIZE[0], SIZE[1] * 2)).astype(np.float32)
        path = out / "videos" / f"bench{v}.mp4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=FPS)
            stream.width, stream.height, stream.pix_fmt = SIZE[1], SIZE[0], "yuv420p"
            stream.options = {"preset": "veryfast", "crf": "20", "bf": "0", "g": str(FPS)}
            for i in range(int(seconds * FPS)):
                frame = av.VideoFrame.from_ndarray(source_frame(i, tex, v), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        database[f"bench{v}"] = {"subset": "validation", "duration": seconds,
                                 "annotations": [{"segment": [0.2 * seconds, 0.6 * seconds], "label": "move"}]}
    write_json({"database": database}, ann)
    return ann


def ffmpeg_fps(mp4: bytes, num_frames: int) -> float:
    """Frames per CPU second of `ffmpeg -benchmark -threads 1` decoding the whole stream (nan without ffmpeg)."""
    if shutil.which("ffmpeg") is None:
        return float("nan")
    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(mp4)
        f.flush()
        run = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-benchmark", "-threads", "1", "-i", f.name,
                              "-f", "null", "-"], capture_output=True, text=True)
    match = re.search(r"bench: utime=([\d.]+)s stime=([\d.]+)s rtime=([\d.]+)s", run.stderr)
    return num_frames / (float(match.group(1)) + float(match.group(2))) if match else float("nan")


def gop_ceiling(mp4: bytes, unique: np.ndarray, pts, keyframes) -> None:
    """PyAV on exactly the needed GOPs, with the stream index given (the ceiling of backend_cpu.decode_frames)."""
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        for key, wanted in gop_runs(unique, keyframes):
            container.seek(pts[key], stream=stream, backward=True, any_frame=False)
            last, wanted_pts = pts[wanted[-1]], {pts[i] for i in wanted}
            for frame in container.decode(stream):
                if frame.pts in wanted_pts:
                    frame.to_ndarray(format="rgb24")
                if frame.pts >= last:
                    break


def dali_decode_and_resize(mp4: bytes, unique: np.ndarray, crop, threads: int, repeats: int):
    """Seconds of DALI (CPU) decoding `unique` frames, and of decoding + resizing + cropping them."""
    from nvidia.dali import fn, pipeline_def, types

    encoded = np.frombuffer(mp4, np.uint8)
    frames = unique.astype(np.int32)

    @pipeline_def(batch_size=1, num_threads=threads, device_id=None)
    def graph(resize: bool):
        video = fn.decoders.video(fn.external_source(source=lambda: [encoded], batch=True), device="cpu",
                                  frames=fn.external_source(source=lambda: [frames], batch=True))
        if resize:
            video = fn.resize(video, size=[crop.resize_h, crop.resize_w], antialias=True,
                              interp_type=types.INTERP_LINEAR)
            video = fn.slice(video, [crop.top, crop.left], [crop.H, crop.W], axis_names="HW")
        return video

    seconds = []
    for resize in (False, True):
        pipe = graph(resize)
        pipe.build()
        pipe.run()  # warm-up: the first run also builds DALI's frame index
        seconds.append(best_seconds([pipe.run], repeats)[0])
    return seconds


def cpu_seconds(fn) -> float:
    """CPU seconds of this process (all its threads) running fn(): per-core work, unlike wall time on a shared
    machine."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def best_seconds(fns, repeats: int) -> list:
    """The least CPU seconds of each of `fns` over `repeats` rounds, the functions interleaved within a round."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for t, fn in zip(times, fns):
            t.append(cpu_seconds(fn))
    return [min(t) for t in times]


def delivery_seconds(shards: str, fid: Fidelity, backend: str, workers: int, dali_threads: int = 1,
                     clock=time.perf_counter) -> float:
    """Seconds (`clock`) of one epoch of build_loader over `shards`, loader construction included."""
    start = clock()
    for _ in build_loader(shards, "validation", batch_size=1, schedule=LoFiSchedule("full", fid), train=True,
                          epoch=0, seed=0, backend=backend, num_workers=workers, dali_threads=dali_threads):
        pass
    return clock() - start


def delivered_per_second(shards: str, subset: str, fid: Fidelity, workers: int, cache_dir: str) -> float:
    """Delivered frames (B·L·T summed over the batches) per wall second of one epoch of build_loader (cpu)."""
    start, frames = time.perf_counter(), 0
    for batch in build_loader(shards, subset, batch_size=1, schedule=LoFiSchedule("full", fid), train=True,
                              epoch=0, seed=0, backend="cpu", num_workers=workers, cache_dir=cache_dir):
        frames += batch["frames"].shape[0] * fid.L * fid.T
    return frames / (time.perf_counter() - start)


def remote_vs_local(args, fids) -> None:
    """The --shards mode (see the module docstring): prints, and records unless --no-record, the three figures."""
    from lofi.data.remote import index_remote, read_manifest
    rows = []
    with tempfile.TemporaryDirectory(prefix="lofi-bench-cache-") as cache:
        for name in fids:
            fid = FIDELITIES[name]
            shutil.rmtree(cache, ignore_errors=True)
            cold = delivered_per_second(args.shards, args.subset, fid, args.workers, cache)
            warm = delivered_per_second(args.shards, args.subset, fid, args.workers, cache)
            local = Path(index_remote(args.shards, args.subset, cache_dir=cache)[0].remote.local()).parent
            write_json(read_manifest(args.shards), local / "manifest.json")
            here = delivered_per_second(str(local), args.subset, fid, args.workers, cache)
            rows.append([f"{name} {fid}", f"{cold:,.0f}", f"{warm:,.0f}", f"{here:,.0f}"])
    table = benchmark.markdown_table(["fidelity", "URL, cold cache (frames/s)", "URL, warm cache (frames/s)",
                                      "local directory (frames/s)"], rows)
    notes = (f"Source `{args.shards}`, subset {args.subset}: delivered frames (B·L·T) per wall second of one epoch, "
             f"cpu backend, {args.workers} DataLoader workers, batch 1, torch 1 thread. The cold figure includes "
             "downloading every shard and checking its sha256.")
    print(table + "\n\n" + notes)
    if not args.no_record:
        benchmark.record("Data pipeline from a URL: delivered frames/s (tools/bench_pipeline.py --shards)",
                         table + "\n\n" + notes, "python " + " ".join(sys.argv))


def bottleneck(decode: float, resize: float, serial: float) -> str:
    """The largest part of the serial cpu delivery and every part's share; the stage times are best-of-N and the
    delivery one run, so the shares are of max(serial, decode + resize)."""
    parts = {"decode": decode, "resize+crop": resize, "rest": max(0.0, serial - decode - resize)}
    total = sum(parts.values())
    top = max(parts, key=parts.get)
    listed = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in parts.items())
    return f"bottleneck **{top}** {100 * parts[top] / total:.0f}% of the serial cpu delivery ({listed})"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=int, default=1)
    p.add_argument("--seconds", type=float, default=60.0, help="length of each generated video")
    p.add_argument("--codecs", default="vp9", help="comma-separated from h264,vp9,mjpeg")
    p.add_argument("--fidelities", default="full,t", help="comma-separated from full,s,t,st")
    p.add_argument("--backends", default="cpu,dali")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (cpu) / DALI threads for 'delivery'")
    p.add_argument("--repeats", type=int, default=2, help="stage timings: the best of this many runs")
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "lofi_bench_pipeline"))
    p.add_argument("--json", help="write the figures as JSON to this path")
    p.add_argument("--no-record", action="store_true", help="do not append to docs/BENCHMARKS.md")
    p.add_argument("--shards", help="a base URL or pipe: template of shards: delivery from it beside the local one")
    p.add_argument("--subset", default="validation", help="the subset read with --shards")
    args = p.parse_args()
    torch.set_num_threads(1)
    codecs, fids = args.codecs.split(","), args.fidelities.split(",")
    if args.shards:
        return remote_vs_local(args, fids)
    backends = [b for b in args.backends.split(",") if b != "dali" or importlib.util.find_spec("nvidia.dali")]

    cache = Path(args.cache) / f"{args.videos}x{args.seconds:g}s"
    ann = make_sources(cache / "source", args.videos, args.seconds)
    from lofi.data.packing import make_shards
    rows, records, shares = [], [], []
    for codec in codecs:
        shard_dir = cache / codec
        make_shards(cache / "source" / "videos", ann, shard_dir, codec=codec, short_side=SIZE[0], fps=FPS,
                    shard_size=1, workers=min(2, os.cpu_count() or 1), progress=False)
        samples = list(wds.WebDataset(sorted(str(p) for p in shard_dir.glob("validation-*.tar")), shardshuffle=False))
        infos = [json.loads(s["json"]) for s in samples]
        total_frames = sum(i["num_frames"] for i in infos)
        ff = total_frames / sum(i["num_frames"] / ffmpeg_fps(s["mp4"], i["num_frames"]) for s, i in zip(samples, infos))
        for name in fids:
            fid = FIDELITIES[name]
            uniques = [np.unique(snippet_frame_indices(i["num_frames"], fid.L, fid.T)) for i in infos]
            n_unique = sum(len(u) for u in uniques)
            crops = [crop_params(i["height"], i["width"], fid.H, fid.W, False, None) for i in infos]
            t = {"ceiling-gops": 0.0, "decode": 0.0, "resize+crop": 0.0}
            for s, u, crop in zip(samples, uniques, crops):
                with av.open(io.BytesIO(s["mp4"])) as c:
                    pts, keyframes = stream_index(c)
                ceiling, decode = best_seconds([lambda: gop_ceiling(s["mp4"], u, pts, keyframes),
                                                lambda: decode_frames(s["mp4"], u)], args.repeats)
                decoded = decode_frames(s["mp4"], u)
                out = torch.empty((len(u), 3, fid.H, fid.W), dtype=torch.uint8)
                t["ceiling-gops"] += ceiling
                t["decode"] += decode
                t["resize+crop"] += best_seconds([lambda: crop_into(decoded, np.arange(len(u)), crop, out)],
                                                 args.repeats)[0]
            figures = {("ffmpeg", "ceiling-ffmpeg (whole stream)"): ff,
                       ("pyav", "ceiling-gops"): n_unique / t["ceiling-gops"],
                       ("cpu", "decode"): n_unique / t["decode"], ("cpu", "resize+crop"): n_unique / t["resize+crop"]}
            if "cpu" in backends:
                serial = delivery_seconds(str(shard_dir), fid, "cpu", 0, clock=time.process_time)
                figures[("cpu", "delivery-serial")] = n_unique / serial
                figures[("cpu", f"delivery ({args.workers} workers)")] = (
                    n_unique / delivery_seconds(str(shard_dir), fid, "cpu", args.workers))
                shares.append(f"{codec} {name}: " + bottleneck(t["decode"], t["resize+crop"], serial))
            if "dali" in backends and codec in ("vp9", "mjpeg"):
                dec = res = 0.0
                for s, u, crop in zip(samples, uniques, crops):
                    a, b = dali_decode_and_resize(s["mp4"], u, crop, 1, args.repeats)
                    dec, res = dec + a, res + max(b - a, 1e-9)
                figures[("dali-cpu", "decode")] = n_unique / dec
                figures[("dali-cpu", "resize+crop")] = n_unique / res
                figures[("dali-cpu", "delivery-serial (1 thread)")] = (
                    n_unique / delivery_seconds(str(shard_dir), fid, "dali", 0, 1, clock=time.process_time))
                figures[("dali-cpu", f"delivery ({args.workers} threads)")] = (
                    n_unique / delivery_seconds(str(shard_dir), fid, "dali", 1, args.workers))
            ratio = figures[("cpu", "decode")] / figures[("pyav", "ceiling-gops")]
            for (backend, stage), fps in figures.items():
                note = f"{ratio:.2f}× ceiling-gops" if (backend, stage) == ("cpu", "decode") else ""
                rows.append([codec, f"{name} {fid}", backend, stage, f"{fps:,.0f}", note])
                records.append({"codec": codec, "fidelity": name, "L": fid.L, "T": fid.T, "size": fid.H,
                                "backend": backend, "stage": stage, "unique_frames_per_s": fps,
                                "unique_frames": n_unique})
            print(f"{codec} {name}: decode {ratio:.2f}× the PyAV GOP ceiling", flush=True)

    header = ["codec", "fidelity", "backend", "stage", "unique frames/s", "note"]
    table = benchmark.markdown_table(header, rows)
    notes = ("Stage and serial figures are per CPU-second (one core); parallel deliveries per wall second. "
             f"{args.videos} video(s) × {args.seconds:g} s, {SIZE[1]}×{SIZE[0]}, {FPS} fps, keyframe every 1 s; "
             f"torch 1 thread. 'delivery' uses {args.workers} DataLoader workers (cpu) or {args.workers} DALI threads "
             "(dali-cpu) on a shared 2-core machine, so it is not a per-core figure. DALI 'mixed' (GPU) has not been "
             "run here: no machine here has both a GPU and DALI.\n\n" + "\n".join(f"- {s}" for s in shares))
    print(table + "\n\n" + notes)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "machine": benchmark.machine(),
                                               "figures": records, "bottlenecks": shares}, indent=1))
    if not args.no_record:
        benchmark.record("Data pipeline: unique frames/s (tools/bench_pipeline.py)", table + "\n\n" + notes,
                         "python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
