"""PNG plots of a run: training curves from ``log.jsonl`` and per-video timelines of ground truth vs detections."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

from lofi.config import STAGES, stage_key

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .logger import read_log  # noqa: E402

Series = List[Tuple[float, float]]


def curve_data(log_path: Path, metrics_path: Optional[Path] = None
               ) -> Tuple[Dict[str, Series], Dict[str, Dict[str, Series]]]:
    """The series of ``plot_curves``: per stage, (optimizer step, loss) of every step record, and per stage and name,
    (epoch, value) for the per-epoch panel: the stage's epoch records (e.g. average mAP), its mean training loss per
    epoch (each step record holds the mean over the steps since the previous record of its epoch; a step logged
    again after a resume counts once), and the final validation accuracies of a stage that trains on clips (ACP,
    ACP+, the pretext stages: ``val_accuracy``, ``val_pretext_accuracy``) from ``metrics.json`` at its last epoch."""
    steps: Dict[str, Series] = {}
    epochs: Dict[str, Dict[str, Series]] = {}
    windows: Dict[str, Dict[int, Dict[int, float]]] = {}  # stage -> epoch -> iteration -> window mean loss
    for r in read_log(log_path):
        if r.get("kind") == "step" and "loss" in r:
            steps.setdefault(r["stage"], []).append((r["step"], r["loss"]))
            if "epoch" in r and "iteration" in r:
                windows.setdefault(r["stage"], {}).setdefault(r["epoch"], {})[r["iteration"]] = r["loss"]
        elif r.get("kind") == "epoch":
            for k, v in r.items():
                if k not in ("time", "stage", "kind", "step") and isinstance(v, (int, float)):
                    epochs.setdefault(r["stage"], {}).setdefault(k, []).append((r["step"], v))
    for stage, per_epoch in windows.items():
        series = epochs.setdefault(stage, {}).setdefault("train loss", [])
        for epoch, logged in sorted(per_epoch.items()):
            total = done = 0
            for iteration, loss in sorted(logged.items()):
                total, done = total + loss * (iteration - done), iteration
            series.append((epoch + 1, total / done))
    metrics_path = log_path.parent / "metrics.json" if metrics_path is None else metrics_path
    summary = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    for stage in windows:
        final = summary.get(stage_key(stage), {}) if stage in STAGES else {}
        for name, accuracy in final.items():
            if name.startswith("val_") and name.endswith("accuracy"):
                epochs.setdefault(stage, {})[name] = [(max(windows[stage]) + 1, accuracy)]
    return steps, epochs


def plot_curves(log_path: Path, out: Path) -> Path:
    """One row per stage: training loss per optimizer step, and the per-epoch values beside it (see curve_data)."""
    steps, epochs = curve_data(log_path)
    stages = sorted(set(steps) | set(epochs))
    fig, axes = plt.subplots(len(stages) or 1, 2, figsize=(10, 2.6 * max(1, len(stages))), squeeze=False)
    for row, stage in zip(axes, stages):
        if stage in steps:
            x, y = zip(*steps[stage])
            row[0].plot(x, y)
        row[0].set_title(f"{stage}: training loss")
        row[0].set_xlabel("optimizer step")
        for name, pts in sorted(epochs.get(stage, {}).items()):
            x, y = zip(*pts)
            row[1].plot(x, y, marker="o", label=name)
        row[1].set_title(f"{stage}: per epoch")
        row[1].set_xlabel("epoch")
        if stage in epochs:
            row[1].legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot_timelines(videos: Sequence[dict], detections: Dict[str, list], out: Path, top: int = 5) -> Path:
    """For each video (``{id, duration, annotations}``), ground-truth segments above its ``top`` detections
    (seconds on the x axis, detection score as bar opacity)."""
    fig, axes = plt.subplots(len(videos), 1, figsize=(10, 1.2 + 0.9 * len(videos)), squeeze=False)
    for ax, video in zip(axes[:, 0], videos):
        gt = video.get("annotations", [])
        dets = sorted(detections.get(video["id"], []), key=lambda d: -d["score"])[:top]
        for a in gt:
            s, e = a["segment"]
            ax.barh(1, e - s, left=s, height=0.6, color="tab:green")
            ax.text(s, 1.35, a["label"], fontsize=7)
        best = max((d["score"] for d in dets), default=1.0) or 1.0
        for i, d in enumerate(dets):
            s, e = d["segment"]
            ax.barh(-0.4 * i, e - s, left=s, height=0.3, color="tab:blue", alpha=max(0.15, d["score"] / best))
            ax.text(e, -0.4 * i, f" {d['label']} {d['score']:.2f}", fontsize=6, va="center")
        ax.set_xlim(0, float(video["duration"]))
        ax.set_yticks([1, -0.4 * (top - 1) / 2], ["GT", f"top {top}"])
        ax.set_title(video["id"], fontsize=8, loc="left")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
