"""A synthetic temporal action localization benchmark whose classes are motions.

Design
------
*Scene.* Every video shows N identical objects (anti-aliased squares of one colour and size, drawn per video) on a
textured background that pans slowly (camera motion). One object is the *actor*; the other 1-3 are *distractors*.

*Actions are motions.* An action instance is the actor following a class's motion pattern for ``[start, end)``
seconds; the class is defined only by how the actor moves over time (see :data:`CLASSES`): the path (line, circle,
figure eight, square), its direction (horizontal, vertical, diagonal, rising, falling), and its rhythm (slow or fast
oscillation, bouncing, stop-and-go). Appearance never depends on the class (shape, colour and size are drawn per
video, independently of the labels), so a single frame does not give the class away; the patterns are also invariant
to a horizontal flip (direction-sensitive variants draw their sign at random), the reader's training augmentation.

*Hard boundaries.* Outside its instances the actor is present and either stands still or wanders like the
distractors (per video). Distractors wander for the whole video: smooth random paths (a few random low-frequency
sinusoids per axis, folded into the frame). The actor's path is continuous across boundaries: before an instance it
drifts from its wander path to the instance's anchor and after it drifts back (1.5 s smoothstep bridges), so a
boundary is marked only by the change of motion, never by a jump.

*Instances.* 1-3 per video (``instances``), non-overlapping, each lasting ``instance_fraction`` (default 5-80%) of
the video (fractions are redrawn until the instances fit in 90% of it), placed with random gaps (at least 1 s between
instances, or 5% of the video if less), classes uniform.

*Classification source set* (stage-1 pretraining, Kinetics' role): trimmed clips in which the actor performs one
action for the whole clip, no background class, drawn from a *shifted* distribution: striped backgrounds instead of
smooth textures, a disjoint (cool instead of warm) colour palette, larger objects and a different speed range.

*Determinism.* Everything about video ``i`` (or clip ``i``) comes from ``numpy.random.default_rng([seed, kind, i])``,
so output does not depend on the number of workers; the h264 encoder is deterministic, so the same config gives
identical files.

*Speed.* Paths are computed for all frames at once (vectorized NumPy); a frame is a slice of the background texture
plus, per object, one outer product over the object's own patch (squares have separable coverage). Frames are encoded
straight to h264 at the target fps with PyAV. See :data:`SYNTHETIC_PRESETS`.

Outputs of :func:`make_synthetic` (in ``out_dir``): ``videos/ID.mp4`` + ``annotations.json`` (ActivityNet format,
``training``/``validation`` subsets) and ``clips/ID.mp4`` + ``clips.csv`` (Kinetics-style clip list:
``video,start,end,label,split``, start/end empty: each file is one trimmed clip), ready for :func:`lofi.data.packing.make_shards` with ``fmt="activitynet"`` and
``fmt="clips"``.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import pathlib

import numpy as np

from ..atomic import write_bytes, write_json
from .packing import Encoding, VideoWriter, ordered_map

# name: (pattern kind, frequency in Hz (travel: speed in short sides per second), amplitude in short sides)
CLASSES = {
    "swing": ("sin_x", 0.6, 0.22),
    "bounce": ("bounce", 1.2, 0.25),
    "circle": ("circle", 0.5, 0.17),
    "rise": ("rise", 0.35, 0.0),
    "shake": ("sin_y", 2.2, 0.07),
    "figure_eight": ("figure8", 0.4, 0.22),
    "stop_and_go": ("stop_go", 0.8, 0.3),
    "square": ("square", 0.35, 0.28),
    "fall": ("fall", 0.35, 0.0),
    "zigzag": ("zigzag", 0.7, 0.2),
    "swing_fast": ("sin_x", 1.6, 0.12),
    "nod": ("sin_y", 0.6, 0.2),
}
WARM = np.array([[230, 80, 60], [240, 170, 40], [220, 60, 150], [250, 120, 90], [200, 200, 50], [240, 100, 200]],
                np.float32)
COOL = np.array([[60, 140, 230], [40, 200, 180], [90, 90, 220], [60, 200, 90], [140, 90, 230], [40, 170, 240]],
                np.float32)
# per domain: object colours, object half-size (short sides), speed factor, background style
DOMAINS = {
    "target": {"colours": WARM, "half_size": (0.05, 0.075), "speed": (0.9, 1.1), "background": "texture"},
    "source": {"colours": COOL, "half_size": (0.08, 0.11), "speed": (0.8, 1.25), "background": "stripes"},
}
_BRIDGE_S = 1.5
_MIN_GAP_S = 1.0


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Generator parameters. ``size``: (height, width) px; ``length``: video duration range (s); ``instances``: range
    of action instances per video; ``instance_fraction``: range of an instance's duration / the video's;
    ``distractors``: range of distractor objects; ``num_clips``/``clip_length``: the trimmed classification set."""
    seed: int = 0
    num_videos: int = 40
    num_classes: int = 5
    size: tuple[int, int] = (128, 160)
    fps: float = 15.0
    length: tuple[float, float] = (20.0, 40.0)
    instances: tuple[int, int] = (1, 3)
    instance_fraction: tuple[float, float] = (0.05, 0.8)
    distractors: tuple[int, int] = (1, 2)
    validation_fraction: float = 0.25
    num_clips: int = 200
    clip_length: tuple[float, float] = (2.0, 3.2)
    clip_validation_fraction: float = 0.15
    quality: int = 23

    def __post_init__(self):
        if not 1 <= self.num_classes <= len(CLASSES):
            raise ValueError(f"num_classes={self.num_classes} must be in 1..{len(CLASSES)}")
        if self.num_videos < 1 or self.num_clips < 0:
            raise ValueError(f"num_videos={self.num_videos} must be >= 1 and num_clips={self.num_clips} >= 0")
        if min(self.size) < 16 or any(v % 2 for v in self.size):
            raise ValueError(f"size={self.size} must be (height, width), even, at least 16 px")
        if not 1 <= self.instances[0] <= self.instances[1] <= 3:
            raise ValueError(f"instances={self.instances} must satisfy 1 <= min <= max <= 3")
        lo, hi = self.instance_fraction
        if not (0 < lo <= hi <= 1 and lo * self.instances[1] + 0.05 * (self.instances[1] - 1) <= 0.9):
            raise ValueError(f"instance_fraction={self.instance_fraction}: {self.instances[1]} instances of "
                             f"{lo} of the video must fit in 90% of it")
        if not 0 < self.length[0] <= self.length[1] or not 0 < self.clip_length[0] <= self.clip_length[1]:
            raise ValueError(f"length={self.length} and clip_length={self.clip_length} must be positive ranges")

    @property
    def classes(self) -> list[str]:
        """The first ``num_classes`` of :data:`CLASSES`, sorted by name: the label_id order of both the TAL
        annotations (their ``"classes"`` list) and the clip list (sorted labels), so the two agree by default."""
        return sorted(list(CLASSES)[:self.num_classes])


SYNTHETIC_PRESETS = {
    # the demo's data: 40 videos (30 training, 10 validation) of 20-40 s at 128x160, 5 classes, and 200 clips of
    # 2-3.2 s; ~8 MB of video; generates and packs in well under a minute on 2 CPU cores
    "demo": SyntheticSpec(),
    # the reproduction study's benchmark: 400 videos of 30-90 s at 224x288, all 12 classes, 1-3 distractors, and
    # 1600 clips of 2-4 s; ~430k frames, ~0.2 GB; about 12 CPU-core minutes to generate (about 1 minute on 16 cores)
    "bench": SyntheticSpec(num_videos=400, num_classes=12, size=(224, 288), length=(30.0, 90.0),
                             distractors=(1, 3), num_clips=1600, clip_length=(2.0, 4.0)),
}


# ---------------------------------------------------------------- motion
def _fold(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Reflect ``x`` into ``[lo, hi]`` (continuous: a path bounces off the walls)."""
    u = np.mod((x - lo) / (hi - lo), 2.0)
    return lo + (1.0 - np.abs(1.0 - u)) * (hi - lo)


def _wander(rng, t: np.ndarray, lo: np.ndarray, hi: np.ndarray, short: float) -> np.ndarray:
    """A smooth random path (F, 2) inside [lo, hi]: 3 random sinusoids per axis, 0.05-0.4 Hz."""
    centre = rng.uniform(lo, hi)
    amp = rng.uniform(0.05, 0.25, (3, 2)) * short
    freq = rng.uniform(0.05, 0.4, (3, 2))
    phase = rng.uniform(0, 2 * np.pi, (3, 2))
    path = centre + (amp * np.sin(2 * np.pi * freq * t[:, None, None] + phase)).sum(1)
    return _fold(path, lo, hi)


def pattern(kind: str, tau: np.ndarray, freq: float, amp: float, signs) -> np.ndarray:
    """Offsets (F, 2) [x, y] px of a motion pattern at times ``tau`` (s) since its start; zero at ``tau = 0``.

    ``freq``: Hz (travel: px/s), ``amp``: px, ``signs``: (sx, sy) in {-1, 1} for the mirror-image variants."""
    sx, sy = signs
    w = 2 * np.pi * freq * tau
    zero = np.zeros_like(tau)
    if kind == "sin_x":
        return np.stack([sx * amp * np.sin(w), zero], 1)
    if kind == "sin_y":
        return np.stack([zero, sy * amp * np.sin(w)], 1)
    if kind == "bounce":
        return np.stack([zero, -amp * np.abs(np.sin(w / 2))], 1)
    if kind == "circle":
        return np.stack([sx * amp * (1 - np.cos(w)), sy * amp * np.sin(w)], 1)
    if kind == "figure8":
        return np.stack([sx * amp * np.sin(w), sy * amp / 2 * np.sin(2 * w)], 1)
    if kind in ("rise", "fall"):
        return np.stack([zero, (1 if kind == "fall" else -1) * freq * tau], 1)
    if kind == "stop_go":  # move for half a cycle, pause for half, back and forth
        u = freq * tau
        k = np.floor(u) + np.minimum(1.0, 2 * (u - np.floor(u)))
        return np.stack([sx * amp * (1 - np.abs(1 - np.mod(k, 2))), zero], 1)
    if kind == "square":
        k = np.mod(4 * freq * tau, 4)
        corners = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]], np.float64) * amp * np.array([sx, sy])
        i = np.floor(k).astype(int)
        return corners[i] + (k - i)[:, None] * (corners[i + 1] - corners[i])
    if kind == "zigzag":
        tri = 1 - np.abs(1 - np.mod(2 * freq * tau, 2))
        return np.stack([sx * amp * tri, sy * amp * tri], 1)
    raise ValueError(f"unknown motion pattern {kind!r}")


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _action(rng, name: str, tau: np.ndarray, short: float, speed: float) -> tuple[np.ndarray, bool]:
    """Offsets of class ``name`` at ``tau`` with per-instance jitter; returns (offsets, travels)."""
    kind, freq, amp = CLASSES[name]
    freq = freq * speed * rng.uniform(0.88, 1.12)
    travels = kind in ("rise", "fall")
    freq, amp = (freq * short, 0.0) if travels else (freq, amp * short * rng.uniform(0.85, 1.15))
    return pattern(kind, tau, freq, amp, rng.choice([-1.0, 1.0], 2)), travels


def actor_path(rng, t, instances, lo, hi, short, speed, still: bool) -> np.ndarray:
    """The actor's positions (F, 2): idle (still or wandering) outside ``instances`` [(start, end, class)], the class
    pattern inside, joined by smooth bridges so the path never jumps (except wrap-around in rise/fall)."""
    idle = np.broadcast_to(rng.uniform(lo, hi), (len(t), 2)).copy() if still else _wander(rng, t, lo, hi, short)
    pos = idle.copy()
    margin = lo.copy()  # the object's half-size
    size = hi + lo
    ends, frames = [], np.arange(len(t))
    for start, end, name in instances:
        idx = frames[(t >= start) & (t < end)]
        offsets, travels = _action(rng, name, t[idx] - start, short, speed)
        low, high = lo - offsets.min(0), hi - offsets.max(0)
        anchor = np.clip(idle[idx[0]], low, np.maximum(low, high))
        path = anchor + offsets
        if travels:  # leave on one side, come back on the other
            path = np.mod(path + margin, size + 2 * margin) - margin
        pos[idx] = path
        ends.append((idx[0], idx[-1]))
    # bridges: gaps before, between and after the instances
    bounds = [(-1, None)] + ends + [(None, len(t))]
    for (_, a), (b, _) in zip(bounds[:-1], bounds[1:]):
        gap = frames[(a if a is not None else -1) + 1:b if b is not None else len(t)]
        if not len(gap):
            continue
        tg = t[gap]
        span = (t[b] if b is not None and b < len(t) else np.inf) - (t[a] if a is not None and a >= 0 else -np.inf)
        half = min(_BRIDGE_S, span / 2)
        low, high = lo.copy(), hi.copy()
        if a is not None and a >= 0:
            w = _smoothstep(1 - (tg - t[a]) / half)[:, None]
            pos[gap] += (pos[a] - idle[a]) * w
            low, high = np.minimum(low, pos[a]), np.maximum(high, pos[a])
        if b is not None and b < len(t):
            w = _smoothstep(1 - (t[b] - tg) / half)[:, None]
            pos[gap] += (pos[b] - idle[b]) * w
            low, high = np.minimum(low, pos[b]), np.maximum(high, pos[b])
        pos[gap] = np.clip(pos[gap], low, high)  # inside the frame, or no further out than the instance's ends
    return pos


# ---------------------------------------------------------------- specs
def _domain_look(rng, cfg: SyntheticSpec, domain: str) -> dict:
    d = DOMAINS[domain]
    short = min(cfg.size)
    return {"colour": d["colours"][rng.integers(len(d["colours"]))] * rng.uniform(0.85, 1.0),
            "half": short * rng.uniform(*d["half_size"]), "speed": rng.uniform(*d["speed"]),
            "background": d["background"],
            "n_distractors": int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1))}


def _instances(rng, cfg: SyntheticSpec, duration: float) -> list[tuple[float, float, str]]:
    """1-3 non-overlapping (start, end, label) in seconds, on frame times, at least ``_MIN_GAP_S`` apart (5% of the
    video if that is less) so that consecutive instances of one class stay separable."""
    n = int(rng.integers(cfg.instances[0], cfg.instances[1] + 1))
    min_gap = min(_MIN_GAP_S, 0.05 * duration)
    while True:
        frac = rng.uniform(*cfg.instance_fraction, n)
        if frac.sum() + (n - 1) * min_gap / duration <= 0.9:
            break
    free = (1 - frac.sum()) * duration
    gaps = rng.dirichlet(np.ones(n + 1)) * (free - (n - 1) * min_gap) + np.r_[0, np.full(n - 1, min_gap), 0]
    labels = rng.choice(cfg.classes, n)
    out, t = [], 0.0
    for i in range(n):
        t += gaps[i]
        start = round(t * cfg.fps) / cfg.fps  # on frame times, so annotations agree with the rendered frames
        end = max(round((t + frac[i] * duration) * cfg.fps), round(t * cfg.fps) + 1) / cfg.fps
        out.append((start, end, str(labels[i])))
        t += frac[i] * duration
    return out


def video_spec(cfg: SyntheticSpec, index: int) -> dict:
    """Everything about TAL video ``index``: ``{id, subset, num_frames, instances [(s, e, label)], paths (N, F, 2),
    look}``; the actor is object 0."""
    rng = np.random.default_rng([cfg.seed, 0, index])
    num_frames = int(round(rng.uniform(*cfg.length) * cfg.fps))
    duration = num_frames / cfg.fps
    look = _domain_look(rng, cfg, "target")
    instances = _instances(rng, cfg, duration)
    paths = _paths(rng, cfg, look, num_frames, instances, still=bool(rng.random() < 0.5))
    look["background_seed"] = int(rng.integers(2**32))
    n_val = int(round(cfg.num_videos * cfg.validation_fraction))
    subset = "validation" if index >= cfg.num_videos - n_val else "training"
    return {"id": f"syn_{index:05d}", "subset": subset, "num_frames": num_frames, "instances": instances,
            "paths": paths, "look": look}


def clip_spec(cfg: SyntheticSpec, index: int) -> dict:
    """Trimmed clip ``index`` of the shifted source set: the actor performs one action for the whole clip."""
    rng = np.random.default_rng([cfg.seed, 1, index])
    num_frames = int(round(rng.uniform(*cfg.clip_length) * cfg.fps))
    look = _domain_look(rng, cfg, "source")
    label = cfg.classes[index % cfg.num_classes]
    lead = rng.uniform(0, 2.0)  # the pattern started `lead` seconds before the clip: a random phase
    paths = _paths(rng, cfg, look, num_frames, [(-lead, num_frames / cfg.fps + 1, label)], still=True)
    look["background_seed"] = int(rng.integers(2**32))
    n_val = int(round(cfg.num_clips * cfg.clip_validation_fraction))
    split = "val" if index >= cfg.num_clips - n_val else "train"
    return {"id": f"clip_{index:05d}", "split": split, "label": label, "num_frames": num_frames,
            "paths": paths, "look": look}


def _paths(rng, cfg, look, num_frames, instances, still) -> np.ndarray:
    """Object centres (N, F, 2) [x, y] px; object 0 is the actor."""
    h, w = cfg.size
    short, half = min(cfg.size), look["half"]
    lo, hi = np.array([half, half]), np.array([w - half, h - half])
    t = np.arange(num_frames) / cfg.fps
    actor = actor_path(rng, t, instances, lo, hi, short, look["speed"], still)
    others = [_wander(rng, t, lo, hi, short) for _ in range(look["n_distractors"])]
    return np.stack([actor] + others)


# ---------------------------------------------------------------- rendering
def _background(rng, cfg: SyntheticSpec, style: str, num_frames: int):
    """A texture (H + 2p, W + 2p, 3) float32 and the panning window: frame f is ``tex[rows[f]][:, cols[f]]``."""
    h, w = cfg.size
    pad = max(4, min(cfg.size) // 8)
    yy, xx = np.mgrid[0:h + 2 * pad, 0:w + 2 * pad].astype(np.float32) / min(cfg.size)
    tint = rng.uniform(70, 160, 3).astype(np.float32)
    if style == "texture":  # smooth random gratings
        tex = np.zeros(yy.shape + (3,), np.float32)
        for _ in range(4):
            f = rng.uniform(0.5, 3.0, 2)
            g = np.cos(2 * np.pi * (f[0] * xx + f[1] * yy) + rng.uniform(0, 2 * np.pi))
            tex += g[..., None] * rng.uniform(5, 15, 3).astype(np.float32)
    else:  # stripes
        angle, period = rng.uniform(0, np.pi), rng.uniform(0.08, 0.2)
        g = np.sign(np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period))
        tex = g[..., None] * rng.uniform(10, 25, 3).astype(np.float32)
    tex += tint
    t = np.arange(num_frames) / cfg.fps
    pan = _wander(rng, t, np.zeros(2), np.full(2, 2.0 * pad), pad / 2).round().astype(int)
    rows = pan[:, 1, None] + np.arange(h)
    cols = pan[:, 0, None] + np.arange(w)
    return tex, rows, cols


def render(spec: dict, cfg: SyntheticSpec):
    """Yield the frames of ``spec`` as uint8 arrays (H, W, 3): the panning background window, then each object
    composited (anti-aliased square, separable coverage) over its own small patch."""
    h, w = cfg.size
    look, paths = spec["look"], spec["paths"]
    rng = np.random.default_rng(look["background_seed"])
    tex, rows, cols = _background(rng, cfg, look["background"], spec["num_frames"])
    tex = np.clip(tex + 0.5, 0, 255).astype(np.uint8)
    colour, half = look["colour"].astype(np.float32), look["half"] + 0.5
    lo = np.floor(paths - half).astype(int)
    hi = np.ceil(paths + half).astype(int) + 1
    for f in range(spec["num_frames"]):
        frame = tex[rows[f, 0]:rows[f, 0] + h, cols[f, 0]:cols[f, 0] + w].copy()
        for o in range(len(paths)):
            (x0, y0), (x1, y1) = np.maximum(lo[o, f], 0), np.minimum(hi[o, f], (w, h))
            if x0 >= x1 or y0 >= y1:
                continue
            cx, cy = paths[o, f]
            ay = np.clip(half - np.abs(np.arange(y0, y1) - cy), 0, 1).astype(np.float32)
            ax = np.clip(half - np.abs(np.arange(x0, x1) - cx), 0, 1).astype(np.float32)
            patch = frame[y0:y1, x0:x1].astype(np.float32)
            patch += (ay[:, None, None] * ax[None, :, None]) * (colour - patch)
            frame[y0:y1, x0:x1] = patch + 0.5
        yield frame


def _write_video(spec: dict, cfg: SyntheticSpec, path: pathlib.Path) -> None:
    writer = VideoWriter(Encoding(fps=cfg.fps, short_side=0, quality=cfg.quality, threads=1),
                         (cfg.size[1], cfg.size[0]))
    try:
        for frame in render(spec, cfg):
            writer.write(frame)
        data = writer.close()
    except BaseException:
        writer.abort()
        raise
    write_bytes(path, data)


def _video_task(args):
    cfg, index, folder = args
    spec = video_spec(cfg, index)
    _write_video(spec, cfg, pathlib.Path(folder) / f"{spec['id']}.mp4")
    return spec["id"], {"subset": spec["subset"], "duration": spec["num_frames"] / cfg.fps, "fps": cfg.fps,
                        "num_frames": spec["num_frames"], "resolution": f"{cfg.size[1]}x{cfg.size[0]}",
                        "annotations": [{"segment": [s, e], "label": c} for s, e, c in spec["instances"]]}


def _clip_task(args):
    cfg, index, folder = args
    spec = clip_spec(cfg, index)
    _write_video(spec, cfg, pathlib.Path(folder) / f"{spec['id']}.mp4")
    # empty start/end: the clip is the whole (already trimmed) file, whose id is then the file's name
    return {"video": spec["id"], "start": "", "end": "", "label": spec["label"], "split": spec["split"]}


def make_synthetic(out_dir, config: SyntheticSpec | str = "demo", *, workers: int | None = None,
                   progress: bool = True, **overrides) -> dict[str, pathlib.Path]:
    """Generate the benchmark in ``out_dir`` from ``config`` (a :class:`SyntheticSpec` or a :data:`SYNTHETIC_PRESETS` name)
    with ``overrides`` (e.g. ``seed=1, num_videos=8, size=(64, 80)``).

    Returns paths ``{"videos", "annotations", "clips", "clip_list"}`` (see the module docstring)."""
    import tqdm

    cfg = SYNTHETIC_PRESETS[config] if isinstance(config, str) else config
    cfg = dataclasses.replace(cfg, **overrides)
    out = pathlib.Path(out_dir)
    paths = {"videos": out / "videos", "annotations": out / "annotations.json", "clips": out / "clips",
             "clip_list": out / "clips.csv"}
    paths["videos"].mkdir(parents=True, exist_ok=True)
    paths["clips"].mkdir(parents=True, exist_ok=True)
    tasks = [(_video_task, (cfg, i, paths["videos"])) for i in range(cfg.num_videos)]
    tasks += [(_clip_task, (cfg, i, paths["clips"])) for i in range(cfg.num_clips)]
    database, clips = {}, []
    with ordered_map(_run, tasks, workers or os.cpu_count() or 1, chunksize=4) as results:
        for i, result in enumerate(tqdm.tqdm(results, total=len(tasks), desc="synthetic", unit="video",
                                             disable=not progress)):
            if i < cfg.num_videos:
                database[result[0]] = result[1]
            else:
                clips.append(result)
    meta = {"version": "lofi-synthetic-1", "config": dataclasses.asdict(cfg), "classes": cfg.classes,
            "database": database}
    write_json(meta, paths["annotations"], indent=1)
    tmp = paths["clip_list"].with_name("clips.csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["video", "start", "end", "label", "split"])
        writer.writeheader()
        writer.writerows(clips)
    os.replace(tmp, paths["clip_list"])
    return paths


def _run(task):
    fn, args = task
    return fn(args)
