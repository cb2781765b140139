"""Small test shards in the issue-3 format: PyAV-encoded videos of moving patterns, packed with webdataset."""
import io
import json
import os
import tarfile
from typing import Dict, List, Sequence

import av
import numpy as np
import webdataset as wds

from lofi.data.packing import member_checksums

PIX_FMT = {"libvpx-vp9": "yuv420p", "mjpeg": "yuvj420p", "libx264": "yuv420p"}


def pattern(i: int, height: int, width: int, seed: int) -> np.ndarray:
    """Frame i (height, width, 3) uint8: smooth gradients that drift with i, different per seed."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = seed * 0.7 + i * 0.15
    r = 128 + 100 * np.sin(xx / 9.0 + phase)
    g = 128 + 100 * np.sin(yy / 7.0 - phase * 1.3)
    b = 128 + 100 * np.sin((xx + yy) / 13.0 + seed)
    return np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8)


def encode_video(num_frames: int, height: int, width: int, fps: int = 15, codec: str = "libvpx-vp9",
                 gop: int = 8, seed: int = 0) -> bytes:
    """An mp4 (bytes) of `num_frames` pattern frames, a keyframe every `gop` frames."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt, stream.gop_size = width, height, PIX_FMT[codec], gop
        if codec == "libvpx-vp9":
            stream.options = {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b:v": "0"}
        elif codec == "mjpeg":
            stream.options = {"q:v": "2"}
        for i in range(num_frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(pattern(i, height, width, seed), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def video_info(vid: str, num_frames: int, height: int, width: int, fps: int = 15, subset: str = "training",
               annotations: Sequence = (), **extra) -> Dict:
    return {"id": vid, "subset": subset, "duration": num_frames / fps, "fps": fps, "num_frames": num_frames,
            "width": width, "height": height, "orig_fps": fps, "orig_duration": num_frames / fps,
            "annotations": list(annotations), **extra}


def write_shards(out_dir: str, subset: str, samples: List[Dict], per_shard: int, codec: str = "libvpx-vp9",
                 manifest: bool = True, checksums: bool = True) -> List[str]:
    """samples: dicts with info (video_info) and optionally mp4 (bytes; default encoded from the info). checksums:
    record the mp4's sha256 in the json as make_shards does (False: a shard packed before checksums)."""
    os.makedirs(out_dir, exist_ok=True)
    paths, shard_info = [], {}
    for s in range(0, len(samples), per_shard):
        path = os.path.join(out_dir, f"{subset}-{s // per_shard:06d}.tar")
        with wds.TarWriter(path) as sink:
            for j, sample in enumerate(samples[s:s + per_shard]):
                info = sample["info"]
                mp4 = sample.get("mp4") or encode_video(info["num_frames"], info["height"], info["width"],
                                                        info["fps"], codec, seed=s + j)
                if checksums:
                    info = dict(info, sha256=member_checksums({"mp4": mp4}))
                sink.write({"__key__": info["id"], "mp4": mp4, "json": json.dumps(info).encode()})
        paths.append(path)
        shard_info[os.path.basename(path)] = {"num_samples": len(samples[s:s + per_shard]), "sha256": ""}
    if manifest:
        man = {"classes": ["a", "b"], "codec": codec, "fps": 15, "short_side": 48, "skipped": [],
               "splits": {subset: {"num_samples": len(samples), "shards": shard_info}}}
        with open(os.path.join(out_dir, "manifest.json"), "w") as f:
            json.dump(man, f)
    return paths


def zero_member_bytes(tar_path: str, member: str, start: float, count: int) -> None:
    """Zeroes `count` bytes of a tar member in place, from fraction `start` of its length: storage damage after
    packing (the tar and the container still parse)."""
    with tarfile.open(tar_path) as tar:
        info = tar.getmember(member)
    offset = info.offset_data + int(start * info.size)
    if offset + count > info.offset_data + info.size:
        raise ValueError(f"{member} holds {info.size} bytes; cannot zero {count} from {offset - info.offset_data}")
    with open(tar_path, "r+b") as f:
        f.seek(offset)
        f.write(bytes(count))


def damage_frame(mp4: bytes, frame: int, count: int = 64, start: float = 0.0) -> bytes:
    """A copy of `mp4` with `count` bytes zeroed in the packet of display frame `frame`, from fraction `start` of
    the packet (a source broken before packing; the container still parses)."""
    with av.open(io.BytesIO(mp4)) as container:
        packets = sorted((p.pts, p.pos, p.size) for p in container.demux(video=0) if p.size)
    _, pos, size = packets[frame]
    offset = pos + int(start * size)
    count = min(count, pos + size - offset)
    return mp4[:offset] + bytes(count) + mp4[offset + count:]
