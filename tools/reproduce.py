"""The reproduction study (issue 6): the paper's Tables 1, 2 and 6 and its memory claim, re-run on the synthetic TAL
benchmark with several seeds; writes one JSON per cell (row × seed) and ``docs/RESULTS.md`` with its plots.

    PYTHONPATH=. python tools/reproduce.py --preset cpu|gpu [--smoke] [--seeds 0,1,2] [--rows acp,long_c_lofi]
        [--tables 1,2,6,control,control6] [--out DIR] [--imagenet PATH] [--max-minutes M] [--no-report] [--aggregate-only]

Each cell runs the project's own training (``python -m lofi.train``, one subprocess per cell, config = the demo
config + the preset's and the row's overrides) into ``work_dirs/repro/<preset>/seed<k>/<row>`` (``/tmp`` for the gpu
preset) and writes ``<out>/<row>-seed<k>.json`` atomically; a cell whose JSON exists is skipped, so an interrupted
study resumes where it stopped (a half-finished cell resumes its stages with ``--resume auto``). Each cell records
the part of its resolved config its result depends on (``recipe``); a cell recorded under another definition of its
row or another recipe (the demo config or a preset changed since) is re-run in a fresh run directory, and so is a
shared ACP encoder trained with another ACP config.

Reuse of identical upstream stages: the ACP pretraining of an encoder depends only on (encoder, seed), so it runs
once per (encoder, seed) into ``seed<k>/_acp_<encoder>`` and every row of that seed starts from its ``encoder.pt``
(``model.weights``). Everything downstream of ACP (ACP+, LoFi, the frozen-encoder head, eval) runs per row and seed.
The stage-3 head (features at full fidelity, fresh G-TAD + video classifier, G-TAD's recipe) is identical for every row.
The benchmark's data (``lofi.data.synthetic``) is the same for every seed: a seed changes initialisation and data order.

Several processes may run the same command at once: each cell (and each shared ACP) is claimed by a lock file, so
they split the cells. On a busy machine, processes with ``OMP_NUM_THREADS=1`` were faster than torch's default threads.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lofi.atomic import write_bytes, write_json  # noqa: E402
from lofi.config import RESUME_FREE, config_changes, load_config, to_dict  # noqa: E402

METRIC_TIOUS = (0.5, 0.75, 0.95)
METRICS = ("mAP@0.5", "mAP@0.75", "mAP@0.95", "avg")


@dataclass(frozen=True)
class Row:
    """One row of the study: the stages it runs after the shared ACP (``upstream``) and its config overrides."""
    label: str
    stages: tuple
    overrides: tuple = ()
    encoder: str = "tsm_r18"
    upstream: Optional[str] = "acp"  # None: no pretraining (the ICP analogue)
    baseline: str = "acp"  # the frozen-ACP row of the same encoder, which the row's Δ is taken against


def _lofi(mode: str, *settings: str) -> tuple:
    return (f"lofi.schedule.mode={mode}", *settings)


LOFI_STAGES = ("lofi", "head", "eval")
# Control (not in the paper): the LoFi stage with a vanishing learning rate, so only the encoder's BN running
# statistics move (re-estimated on the target videos at the LoFi fidelities): what LoFi gains without learning.
BN_ONLY = _lofi("long_cycle", "lofi.schedule.c_l=1", "lofi.optim.lr=1e-12")
ROWS: Dict[str, Row] = {
    "icp": Row("ICP analogue (random init, frozen)", ("head", "eval"), upstream=None),
    "icp_imagenet": Row("ICP (ImageNet weights, frozen)", ("head", "eval"), upstream="imagenet"),
    "acp": Row("ACP (frozen)", ("head", "eval")),
    "acp_plus": Row("ACP+ (fine-tuned on foreground segments, frozen)", ("acp+", "head", "eval")),
    "s_lofi": Row("S-LoFi (r_s = 2)", LOFI_STAGES, _lofi("s", "lofi.schedule.r_s=2.0")),
    "t_lofi": Row("T-LoFi (r_t = 4)", LOFI_STAGES, _lofi("t", "lofi.schedule.r_t=4")),
    "st_lofi": Row("ST-LoFi (r_t = 2, r_s = √2)", LOFI_STAGES,
                   _lofi("st", "lofi.schedule.st_r_t=2", f"lofi.schedule.st_r_s={math.sqrt(2)!r}")),
    "short_c_lofi": Row("Short C-LoFi (c_s = 16)", LOFI_STAGES, _lofi("short_cycle", "lofi.schedule.c_s=16")),
    "long_c_lofi": Row("LoFi = Long C-LoFi (c_l = 1)", LOFI_STAGES,
                       _lofi("long_cycle", "lofi.schedule.c_l=1")),
    "acp_bn_only": Row("control: ACP + target BN statistics only (LoFi stage, lr 1e-12)", LOFI_STAGES, BN_ONLY),
    "r34_acp": Row("TSM-R34 ACP (frozen)", ("head", "eval"), encoder="tsm_r34"),
    "r34_long_c_lofi": Row("TSM-R34 Long C-LoFi", LOFI_STAGES, _lofi("long_cycle"), encoder="tsm_r34",
                           baseline="r34_acp"),
    "r50_acp": Row("TSM-R50 ACP (frozen)", ("head", "eval"), encoder="tsm_r50"),
    "r50_long_c_lofi": Row("TSM-R50 Long C-LoFi", LOFI_STAGES, _lofi("long_cycle"), encoder="tsm_r50",
                           baseline="r50_acp"),
    "r34_acp_bn_only": Row("control: TSM-R34 ACP + target BN statistics only", LOFI_STAGES, BN_ONLY,
                           encoder="tsm_r34", baseline="r34_acp"),
    "r50_acp_bn_only": Row("control: TSM-R50 ACP + target BN statistics only", LOFI_STAGES, BN_ONLY,
                           encoder="tsm_r50", baseline="r50_acp"),
}
TABLE_ROWS = {"1": ("icp", "icp_imagenet", "acp", "acp_plus", "long_c_lofi"),
              "2": ("acp", "s_lofi", "t_lofi", "st_lofi", "short_c_lofi", "long_c_lofi"),
              "6": ("acp", "long_c_lofi", "r34_acp", "r34_long_c_lofi", "r50_acp", "r50_long_c_lofi"),
              "control": ("acp", "acp_bn_only", "long_c_lofi"),
              "control6": ("r34_acp", "r34_acp_bn_only", "r34_long_c_lofi", "r50_acp", "r50_acp_bn_only",
                           "r50_long_c_lofi")}
CONTROL_TABLES = ("control", "control6")  # ours, with no counterpart in the paper
TABLE_TITLES = {"1": "Table 1 analogue: encoder pretraining", "2": "Table 2 analogue: LoFi configurations",
                "6": "Table 6 analogue: encoder depth (TSM-R18 / R34 / R50)",
                "control": "Control (ours, not in the paper): is LoFi's gain learning, or BN statistics on the target?",
                "control6": "The same control for the deeper encoders (ours, not in the paper)"}
# The paper's numbers (mAP %, ActivityNet-1.3 validation and HACS-1.1) for [0.5, 0.75, 0.95, avg]; Table 6: avg only.
PAPER = {
    "icp": ([48.45, 32.40, 6.89, 32.16], [31.74, 19.64, 5.67, 20.18]),
    "icp_imagenet": ([48.45, 32.40, 6.89, 32.16], [31.74, 19.64, 5.67, 20.18]),
    "acp": ([49.64, 34.16, 7.68, 33.59], [35.68, 22.79, 6.51, 23.00]),
    "acp_plus": ([49.87, 34.58, 7.85, 33.84], [36.31, 22.96, 6.62, 23.31]),
    "s_lofi": ([50.47, 34.71, 7.57, 34.12], [37.16, 24.23, 6.84, 24.25]),
    "t_lofi": ([50.28, 35.21, 8.09, 34.32], [37.30, 24.18, 7.07, 24.36]),
    "st_lofi": ([50.36, 34.79, 7.59, 34.12], [37.13, 24.27, 7.08, 24.36]),
    "short_c_lofi": ([50.57, 35.12, 8.14, 34.38], [37.63, 24.45, 6.95, 24.60]),
    "long_c_lofi": ([50.68, 35.16, 8.16, 34.49], [37.78, 24.40, 7.29, 24.64]),
    "r34_acp": ([None, None, None, 33.90], None), "r34_long_c_lofi": ([None, None, None, 34.74], None),
    "r50_acp": ([None, None, None, 34.26], None), "r50_long_c_lofi": ([None, None, None, 34.96], None),
}


@dataclass(frozen=True)
class Preset:
    """A scale of the study: lofi.train overrides applied to lofi/configs/demo.yaml for every cell (the benchmark's
    data.synthetic.* and the training recipe), the default seeds/tables/rows, and where work directories go."""
    description: str
    overrides: tuple
    seeds: tuple = (0, 1, 2)
    tables: tuple = ("1", "2")
    rows: Optional[tuple] = None  # None: every row of ``tables``
    smoke_seeds: tuple = (0,)
    work_root: str = "work_dirs/repro"
    max_minutes: Optional[float] = None  # default --max-minutes
    # Rows whose schedule this preset re-scales to its epoch length (label and overrides replace ROWS[row]'s).
    rescaled_rows: Dict[str, Row] = field(default_factory=dict)


PRESETS = {
    "cpu": Preset(
        description=("lofi/configs/demo.yaml's benchmark and recipe: lofi.data.synthetic preset `demo` with 120 "
                     "videos of 20-40 s (90 training / 30 validation), 5 motion classes, no distractor objects, "
                     "128x160 px stored at short side 128, 15 fps; ACP source set: 2000 trimmed clips (1700 "
                     "training). Full fidelity 16 snippets x 4 frames (frame stride 2) at 64x64 (the paper: 100 x 8 "
                     "at 224x224); LoFi fidelities 16x4@32 (S), 4x4@64 (T), 8x4@46 (ST). ACP 8 epochs (batch 16, "
                     "1x4@64, Adam 1e-3); LoFi 3 epochs = one I->II->III cycle (batch 8 -> 11 steps per epoch, SGD "
                     "lr 0.1, momentum 0, wd 1e-4: the paper's); head 20 epochs (Adam 1e-3, batch 4), best epoch by "
                     "validation average mAP."),
        overrides=("lofi.epochs=3",),
        tables=("1", "2", "control", "6", "control6"), smoke_seeds=(0,),
        # The paper's c_s = 16: an ActivityNet epoch (~10k videos at batch 16, ~600 steps) holds ~13 I->II->III
        # cycles. Here an epoch has 11 steps and the short cycle restarts each epoch, so c_s = 16 never left I (the
        # row equalled S-LoFi exactly). c_s = 1 is the nearest that cycles within an epoch (3.7 cycles; multigrid's
        # short cycle also alternates every batch).
        rescaled_rows={"short_c_lofi": Row("Short C-LoFi (c_s = 1: an epoch has 11 steps here)", LOFI_STAGES,
                                           _lofi("short_cycle", "lofi.schedule.c_s=1"))}),
    "gpu": Preset(
        description=("lofi.data.synthetic preset `demo` enlarged to 160 videos (120 training / 40 validation), "
                     "8 classes, 800 clips; full fidelity 32 snippets x 8 frames at 112x112; LoFi 12 epochs "
                     "(batch 16), ACP 6 epochs, head 30 epochs."),
        overrides=("data.synthetic.num_videos=160", "data.synthetic.num_classes=8", "data.synthetic.num_clips=800",
                   "data.synthetic.short_side=128", "data.num_workers=6",
                   "fidelity.L=32", "fidelity.T=8", "fidelity.size=112", "acp.fidelity.T=8", "acp.fidelity.size=112",
                   "acp.epochs=6", "lofi.epochs=12", "lofi.batch_size=16", "head.batch_size=8", "device=cuda"),
        tables=("2",), rows=("acp", "long_c_lofi", "t_lofi"), smoke_seeds=(0,), work_root="/tmp/lofi_repro",
        max_minutes=4.5),
}


# ---------------------------------------------------------------------------------------------------------- cells

def preset_row(preset_name: str, row: str) -> Row:
    """``row`` as ``preset_name`` runs it: ROWS[row] unless the preset re-scales it."""
    preset = PRESETS.get(preset_name)
    return preset.rescaled_rows.get(row, ROWS[row]) if preset else ROWS[row]


def cell_path(out: Path, row: str, seed: int) -> Path:
    return Path(out) / f"{row}-seed{seed}.json"


def cell_done(path: Path) -> bool:
    """A cell is finished when its JSON parses and holds metrics (a torn or foreign file is re-run)."""
    try:
        cell = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return "metrics" in cell


# Keys a cell's result does not depend on: how it runs and logs (as for --resume) and paths, which differ per clone.
RECIPE_FREE = (*RESUME_FREE, "data.shards", "data.clip_shards", "model.weights")
STAGE_SECTIONS = {"acp": "acp", "acp+": "acp_plus", "lofi": "lofi", "head": "head"}


def recipe(tree: dict, row: Row) -> dict:
    """The part of a cell's resolved config (a ``to_dict`` tree) that its result depends on: all but RECIPE_FREE
    and the sections of stages the row neither runs nor starts from (its upstream ACP's section is kept)."""
    used = set(row.stages) | ({"acp"} if row.upstream == "acp" else set())
    out = json.loads(json.dumps(tree))
    for stage, section in STAGE_SECTIONS.items():
        if stage not in used:
            out.pop(section, None)
    for key in RECIPE_FREE:
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    return out


def cell_overrides(preset_name: str, row_name: str, seed: int, shards: Path, seed_dir: Path,
                   weights: Optional[str]) -> List[str]:
    """The lofi.train overrides of one cell: the preset's, then the row's."""
    preset, row = PRESETS[preset_name], preset_row(preset_name, row_name)
    return [f"name={row_name}", f"stages=[{','.join(row.stages)}]", f"model.encoder={row.encoder}",
            f"model.weights={weights or 'null'}", *common_overrides(preset, shards, seed, seed_dir), *row.overrides]


def cell_recipe(preset_name: str, row_name: str, seed: int) -> dict:
    """``recipe`` of the config the cell would run with now."""
    cfg = load_config(None, cell_overrides(preset_name, row_name, seed, Path("shards"), Path("work"), None),
                      check_paths=False)
    return recipe(to_dict(cfg), preset_row(preset_name, row_name))


def pending(path: Path, label: str, current: dict) -> Optional[str]:
    """Why the cell at ``path`` must run: "" when it is unfinished (absent or torn), a reason when it ran as another
    definition of its row (``label``) or with a config whose recipe differs from ``current`` (it is re-run afresh);
    None when it is finished and current."""
    if not cell_done(path):
        return ""
    cell = json.loads(Path(path).read_text())
    if cell.get("label") != label:
        return f"was run as another definition of its row ({cell.get('label')!r}, now {label!r})"
    if "recipe" not in cell:
        return "records no config recipe"
    changes = config_changes(cell["recipe"], current)
    return f"was run with another config ({'; '.join(changes)})" if changes else None


@contextlib.contextmanager
def claim(path: Path):
    """An exclusive claim across concurrent reproduce.py processes (so several can share one study): a lock file
    holding the owner's pid, created atomically (link of a written temp file). Yields False while another live
    process holds it; a stale lock (its process is gone) is taken over. The lock is removed on exit."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}")
    tmp.write_text(str(os.getpid()))
    try:
        for _ in range(2):
            try:
                os.link(tmp, path)
                break
            except FileExistsError:
                try:
                    os.kill(int(path.read_text()), 0)
                    yield False  # held by a live process
                    return
                except (ValueError, ProcessLookupError, FileNotFoundError):
                    path.unlink(missing_ok=True)  # stale: its owner is gone
        else:
            yield False
            return
    finally:
        tmp.unlink(missing_ok=True)
    try:
        yield True
    finally:
        path.unlink(missing_ok=True)


def select_rows(preset: Preset, tables: Sequence[str], rows: Optional[Sequence[str]],
                imagenet: Optional[str]) -> List[str]:
    """The rows to run, in table order: ``rows`` if given, else the preset's rows or every row of ``tables``.
    The ICP row is the random-init analogue unless ``imagenet`` (a local state dict) gives the true ICP row."""
    if rows:
        unknown = [r for r in rows if r not in ROWS]
        if unknown:
            raise SystemExit(f"--rows: unknown row(s) {unknown}; valid: {', '.join(ROWS)}")
        return list(rows)
    wanted = preset.rows or tuple(r for t in tables for r in TABLE_ROWS[t])
    skip = "icp" if imagenet else "icp_imagenet"
    out: List[str] = []
    for r in wanted:
        if r != skip and r not in out:
            out.append(r)
    return out


def train_command(overrides: Sequence[str]) -> List[str]:
    return [sys.executable, "-m", "lofi.train", "--resume", "auto", *overrides]


def common_overrides(preset: Preset, shards: Path, seed: int, work_dir: Path) -> List[str]:
    return [f"seed={seed}", f"work_dir={work_dir}", f"data.shards={shards}", f"data.clip_shards={shards}/clips",
            "data.synthetic.build=true", "log.progress=false", "log.tensorboard=false", *preset.overrides]


def run_logged(cmd: List[str], log: Path) -> float:
    """Runs ``cmd`` in the repository root with stdout/stderr appended to ``log``; returns its wall time (s)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit status {rc}; see {log}")
    return time.perf_counter() - t0


def acp_overrides(preset: Preset, shards: Path, seed: int, encoder: str, seed_dir: Path) -> List[str]:
    return [f"name=_acp_{encoder}", "stages=[acp]", f"model.encoder={encoder}", "model.weights=null",
            *common_overrides(preset, shards, seed, seed_dir)]


def acp_stale(run_dir: Path, overrides: List[str]) -> Optional[str]:
    """How the config of the finished ACP run in ``run_dir`` differs from the one ``overrides`` give, or None."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return f"{saved} is missing"
    row = Row("ACP pretraining", ("acp",), upstream=None)
    old = recipe(yaml.safe_load(saved.read_text()), row)
    new = recipe(to_dict(load_config(None, overrides, check_paths=False)), row)
    changes = config_changes(old, new)
    return "; ".join(changes) if changes else None


def ensure_acp(preset: Preset, shards: Path, seed: int, encoder: str, seed_dir: Path,
               say: Callable[[str], None] = print) -> dict:
    """The ACP encoder of (encoder, seed), trained once and shared by every row of this seed; an encoder trained
    with another ACP config is trained again."""
    name = f"_acp_{encoder}"
    path = seed_dir / name / "acp" / "encoder.pt"
    overrides = acp_overrides(preset, shards, seed, encoder, seed_dir)
    info = {"encoder_file": str(path), "reused": path.is_file()}
    while True:
        with claim(seed_dir / f"{name}.lock") as mine:
            if mine:
                why = acp_stale(seed_dir / name, overrides) if path.is_file() else None
                if why:
                    say(f"[stale] {path} was trained with another config ({why}); training it again")
                    shutil.rmtree(seed_dir / name)
                    info["reused"] = False
                if not path.is_file():
                    info["seconds"] = run_logged(train_command(overrides), seed_dir / name / "stdout.log")
                break
        time.sleep(10)  # another process is training this ACP encoder
    metrics = json.loads((seed_dir / name / "metrics.json").read_text())
    info["acp_seconds"] = metrics.get("time_acp", {}).get("seconds")
    info["acp_val_accuracy"] = metrics.get("acp", {}).get("val_accuracy")
    return info


def run_cell(preset_name: str, row_name: str, seed: int, imagenet: Optional[str] = None, fresh: bool = False) -> dict:
    """Trains and evaluates one cell through ``python -m lofi.train``; returns its record (metrics, times, curves).
    ``fresh``: first delete the cell's run directory (it holds a run of an older definition of the row)."""
    preset, row = PRESETS[preset_name], preset_row(preset_name, row_name)
    root = Path(preset.work_root) if Path(preset.work_root).is_absolute() else REPO / preset.work_root
    root = root / preset_name
    shards, seed_dir = root / "shards", root / f"seed{seed}"
    upstream = {}
    if row.upstream == "acp":
        upstream = ensure_acp(preset, shards, seed, row.encoder, seed_dir)
        weights = upstream["encoder_file"]
    elif row.upstream == "imagenet":
        if not imagenet:
            raise SystemExit(f"row {row_name} needs --imagenet PATH (a local ImageNet state dict)")
        weights = imagenet
    else:
        weights = None
    overrides = cell_overrides(preset_name, row_name, seed, shards, seed_dir, weights)
    run_dir = seed_dir / row_name
    if fresh:
        shutil.rmtree(run_dir, ignore_errors=True)
    seconds = run_logged(train_command(overrides), run_dir / "stdout.log")
    return cell_record(preset_name, row_name, seed, run_dir, seconds, upstream, overrides,
                       ground_truth(shards))


def cell_record(preset: str, row: str, seed: int, run_dir: Path, seconds: float, upstream: dict,
                overrides: Sequence[str], gt: Dict[str, dict]) -> dict:
    """The small JSON of a finished cell, read from its run directory: metrics, stage times, curves, timelines."""
    from lofi.engine.logger import read_log
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ev = metrics["eval"]
    tious = [round(t, 4) for t in ev["tiou_thresholds"]]
    at = {f"mAP@{t:g}": 100 * ev["mAP"][tious.index(t)] for t in METRIC_TIOUS}
    curves: Dict[str, list] = {"lofi_loss": [], "head_val_mAP": []}
    for r in read_log(run_dir / "log.jsonl"):
        if r.get("stage") == "lofi" and r.get("kind") == "step":
            curves["lofi_loss"].append([r["step"], round(r["loss"], 5), r.get("fidelity")])
        elif r.get("stage") == "head" and r.get("kind") == "epoch" and "average_mAP" in r:
            curves["head_val_mAP"].append([r["step"], round(100 * r["average_mAP"], 3)])
    return {"preset": preset, "row": row, "seed": seed, "label": preset_row(preset, row).label,
            "metrics": {**at, "avg": 100 * ev["average_mAP"], "mAP": [100 * v for v in ev["mAP"]],
                        "tiou_thresholds": tious, "AR@AN": ev.get("AR@AN"), "AUC": ev.get("AUC"),
                        "baseline_avg": 100 * ev["baseline_average_mAP"], "num_videos": ev["num_videos"]},
            "seconds": {"cell": round(seconds, 1),
                        **{k[5:]: round(v["seconds"], 1) for k, v in metrics.items() if k.startswith("time_")}},
            "upstream": upstream, "encoder_change": stage_changes(run_dir, upstream.get("encoder_file")),
            "head_lr": metrics.get("head", {}).get("lr"),
            "curves": curves, "timelines": timelines(run_dir, gt), "overrides": list(overrides),
            "recipe": recipe(yaml.safe_load((run_dir / "config.yaml").read_text()), preset_row(preset, row)),
            "command": f"python tools/reproduce.py --preset {preset} --rows {row} --seeds {seed}"}


def stage_changes(run_dir: Path, start: Optional[str]) -> dict:
    """encoder_change of each encoder-training stage of this cell (acp+, lofi) from the encoder it started from."""
    out = {}
    for stage in ("acp_plus", "lofi"):
        path = run_dir / stage / "encoder.pt"
        if start and path.is_file():
            out[stage] = encoder_change(start, str(path))
    return out


def encoder_change(before: str, after: str) -> dict:
    """How far a stage moved the encoder (the issue's "do gradients reach the encoder?" check): relative L2 change
    ||after - before|| / ||before|| of the conv weights, of the BN affine weights and of the BN running variances."""
    import torch
    a = torch.load(before, map_location="cpu", weights_only=True)
    b = torch.load(after, map_location="cpu", weights_only=True)

    def rel(keys):
        num = sum(float((b[k].float() - a[k].float()).pow(2).sum()) for k in keys)
        den = sum(float(a[k].float().pow(2).sum()) for k in keys)
        return math.sqrt(num / den) if den else None
    conv = [k for k in a if k.endswith(".weight") and a[k].dim() == 4]
    bn = [k for k in a if k.endswith(".weight") and a[k].dim() == 1]
    var = [k for k in a if k.endswith("running_var")]
    return {"conv_weight": rel(conv), "bn_weight": rel(bn), "bn_running_var": rel(var)}


def timelines(run_dir: Path, gt: Dict[str, dict], videos: int = 3, top: int = 5) -> List[dict]:
    """The first ``videos`` validation videos (sorted ids): duration, GT segments and the top detections."""
    dets = json.loads((run_dir / "eval" / "detections.json").read_text())["results"]
    return [{"id": vid, "duration": gt[vid]["duration"], "annotations": gt[vid]["annotations"],
             "detections": sorted(dets[vid], key=lambda d: -d["score"])[:top]}
            for vid in sorted(v for v in dets if v in gt)[:videos]]


# ---------------------------------------------------------------------------------------------------------- study

def run_study(preset_name: str, seeds: Sequence[int], rows: Sequence[str], out: Path,
              runner: Callable[..., dict] = run_cell, imagenet: Optional[str] = None,
              say: Callable[[str], None] = print, max_minutes: Optional[float] = None) -> List[Path]:
    """Runs every unfinished cell (rows × seeds, seed-major so each seed's shared ACP is reused at once);
    returns the cell files written now. A failing cell is reported and the study goes on with the next one.
    With ``max_minutes``, no cell starts when the time used plus the longest cell so far would pass it."""
    written = []
    start, longest = time.perf_counter(), 0.0
    for seed in seeds:
        for row in rows:
            path, label = cell_path(out, row, seed), preset_row(preset_name, row).label
            current = cell_recipe(preset_name, row, seed)
            stale = pending(path, label, current)
            if stale is None:
                say(f"[skip] {path} exists")
                continue
            if stale:
                say(f"[stale] {path} {stale}; re-running it afresh")
            if max_minutes is not None and time.perf_counter() - start + longest > 60 * max_minutes:
                say(f"[stop] the next cell might not finish within --max-minutes {max_minutes:g}; re-run to go on")
                return written
            with claim(path.with_name(f".{path.stem}.lock")) as mine:
                if not mine or pending(path, label, current) is None:
                    say(f"[skip] {row} seed {seed}: another process has it")
                    continue
                say(f"[run] {row} seed {seed} ...")
                t0 = time.perf_counter()
                try:
                    record = runner(preset_name, row, seed, imagenet=imagenet, **({"fresh": True} if stale else {}))
                    if record.get("recipe") != current:  # the cell would be stale at once
                        raise RuntimeError(f"the run's config differs from the one the study asked for: "
                                           f"{'; '.join(config_changes(current, record.get('recipe') or {}))}")
                except (RuntimeError, FileNotFoundError, KeyError) as e:
                    say(f"[fail] {row} seed {seed}: {e}")
                    continue
                write_json(record, path)
            written.append(path)
            longest = max(longest, time.perf_counter() - t0)
            say(f"[done] {row} seed {seed}: avg mAP {record['metrics']['avg']:.2f} in {time.perf_counter() - t0:.0f} s"
                f" -> {path}")
    return written


def ensure_memory(out: Path, encoders: Sequence[str], budget_gib: float = 32.0) -> Optional[dict]:
    """``<out>/memory.json`` from tools/bench_memory.py's budget mode (measured once, then reused)."""
    path = Path(out) / "memory.json"
    if path.is_file():
        return json.loads(path.read_text())
    spec = importlib.util.spec_from_file_location("bench_memory", REPO / "tools" / "bench_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--encoders", ",".join(encoders), "--budget-gib", str(budget_gib), "--no-record",
                         "--json", str(path)])
    return result


# ---------------------------------------------------------------------------------------------------------- aggregate

def load_cells(out: Path) -> List[dict]:
    cells = []
    for p in sorted(Path(out).glob("*-seed*.json")):
        if cell_done(p):
            cells.append(json.loads(p.read_text()))
    return cells


def mean_std(values: Sequence[float]) -> tuple:
    """(mean, sample std; 0 for one value)."""
    n = len(values)
    m = sum(values) / n
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return m, s


def summarize(cells: Sequence[dict]) -> Dict[str, dict]:
    """{row: {label, n, seeds, by_seed {seed: avg}, mean {metric}, std {metric}, mAP_curve (mean per tIoU),
    seconds (mean cell wall time)}}. The cells of a row must share its label (one definition of the row)."""
    by_row: Dict[str, List[dict]] = {}
    for c in cells:
        by_row.setdefault(c["row"], []).append(c)
    out = {}
    for row, cs in by_row.items():
        labels = {c["label"] for c in cs}
        if len(labels) > 1:
            raise ValueError(f"row {row}: cells of different definitions {sorted(labels)}; re-run or remove the "
                             "old ones")
        stats = {k: mean_std([c["metrics"][k] for c in cs]) for k in METRICS}
        curve = [mean_std([c["metrics"]["mAP"][i] for c in cs]) for i in range(len(cs[0]["metrics"]["mAP"]))]
        out[row] = {"label": labels.pop(), "n": len(cs), "seeds": sorted(c["seed"] for c in cs),
                    "by_seed": {c["seed"]: c["metrics"]["avg"] for c in cs},
                    "mean": {k: v[0] for k, v in stats.items()}, "std": {k: v[1] for k, v in stats.items()},
                    "curve": curve, "tiou": cs[0]["metrics"]["tiou_thresholds"],
                    "seconds": mean_std([c["seconds"]["cell"] for c in cs])[0],
                    "baseline": mean_std([c["metrics"]["baseline_avg"] for c in cs])[0]}
    return out


def versus(summary: Dict[str, dict], row: str, ref: str = "acp", metric: str = "avg") -> Optional[dict]:
    """Difference of ``row`` from ``ref`` in ``metric`` and whether it exceeds the seed spread: |Δ| > std_row +
    std_ref (both over seeds). With fewer than 2 seeds on either side there is no spread: ``exceeds`` is None."""
    if row not in summary or ref not in summary or row == ref:
        return None
    a, b = summary[row], summary[ref]
    diff = a["mean"][metric] - b["mean"][metric]
    spread = a["std"][metric] + b["std"][metric]
    exceeds = abs(diff) > spread if min(a["n"], b["n"]) >= 2 else None
    return {"diff": diff, "spread": spread, "exceeds": exceeds}


def paired(summary: Dict[str, dict], row: str, ref: str) -> List[float]:
    """avg mAP of ``row`` minus ``ref`` seed by seed, over their common seeds (a seed's rows share its ACP encoder,
    so these differences do not carry the ACP-to-ACP variation that the spread rule includes)."""
    a, b = summary[row]["by_seed"], summary[ref]["by_seed"]
    return [a[k] - b[k] for k in sorted(a) if k in b]


def _pm(mean: float, std: float, n: int) -> str:
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def ours_table(summary: Dict[str, dict], rows: Sequence[str]) -> str:
    lines = ["| row | seeds | mAP@0.5 | mAP@0.75 | mAP@0.95 | average mAP | Δ avg vs ACP | exceeds seed spread? | "
             "paired Δ per seed |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r not in summary:
            continue
        s = summary[r]
        ref = ROWS[r].baseline
        v = versus(summary, r, ref)
        delta = "—" if v is None else f"{v['diff']:+.2f} (spread {v['spread']:.2f})" + (
            "" if ref == "acp" else f" vs {summary[ref]['label']}")
        exceeds = "—" if v is None else {None: "n/a (1 seed)", True: "yes", False: "no"}[v["exceeds"]]
        d = [] if v is None else paired(summary, r, ref)
        pairs = f"{', '.join(f'{x:+.2f}' for x in d)} ({sum(x > 0 for x in d)} of {len(d)} > 0)" if d else "—"
        cells = " | ".join(_pm(s["mean"][k], s["std"][k], s["n"]) for k in METRICS)
        lines.append(f"| {s['label']} | {s['n']} | {cells} | {delta} | {exceeds} | {pairs} |")
    return "\n".join(lines)


def paper_table(rows: Sequence[str], table: str) -> str:
    def fmt(v):
        return "–" if v is None else f"{v:.2f}"
    if table == "6":
        lines = ["| row (paper, ActivityNet-1.3) | average mAP |", "|---|---|"]
        lines += [f"| {ROWS[r].label} | {fmt(PAPER[r][0][3])} |" for r in rows if r in PAPER]
        return "\n".join(lines)
    lines = ["| row (paper) | ANet @0.5 | @0.75 | @0.95 | avg | HACS @0.5 | @0.75 | @0.95 | avg |",
             "|---|" + "---|" * 8]
    for r in rows:
        if r in PAPER:
            anet, hacs = PAPER[r]
            label = "ICP (ImageNet weights)" if r == "icp" else ROWS[r].label
            lines.append(f"| {label} | " + " | ".join(fmt(v) for v in anet + (hacs or [None] * 4)) + " |")
    return "\n".join(lines)


def memory_rows(memory: dict) -> List[dict]:
    """bench_memory's budget rows plus C-LoFi (its per-video memory is the largest of S/T/ST's, batch constant)."""
    rows = list(memory.get("budget", []))
    for enc in sorted({r["encoder"] for r in rows}):
        lofi = [r for r in rows if r["encoder"] == enc and r["config"] in ("S-LoFi", "T-LoFi", "ST-LoFi")]
        if len(lofi) == 3:
            worst = max(lofi, key=lambda r: r["per_video_bytes"])
            rows.append({**worst, "config": "C-LoFi (long/short)", "fidelity": f"cycles S/T/ST (max {worst['config']})",
                         "max_batch": min(r["max_batch"] for r in lofi)})
    return rows


def memory_table(memory: dict) -> str:
    gib = 2 ** 30
    full = {r["encoder"]: r["per_video_bytes"] for r in memory.get("budget", []) if r["config"] == "full"}
    budget = memory["budget_gib"]
    lines = [f"| config | encoder | L×T×H² | per video (GiB) | × full | largest batch in {budget:g} GiB |",
             "|---|---|---|---|---|---|"]
    for r in memory_rows(memory):
        ratio = r["per_video_bytes"] / full[r["encoder"]] if r["encoder"] in full else float("nan")
        lines.append(f"| {r['config']} | {r['encoder']} | {r['fidelity']} | {r['per_video_bytes'] / gib:.2f} | "
                     f"{ratio:.2f} | {r['max_batch']} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------- plots

def plot_all(cells: Sequence[dict], summary: Dict[str, dict], memory: Optional[dict], out: Path) -> List[Path]:
    """The study's PNGs in ``out``: mAP vs tIoU per row, memory per configuration, training curves, and the
    GT-vs-detection timelines of ACP and LoFi on the same videos (first seed that has both)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from lofi.engine.plots import plot_timelines
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4))
    for row in (r for r in ROWS if r in summary):
        s = summary[row]
        ax.errorbar(s["tiou"], [m for m, _ in s["curve"]], yerr=[sd for _, sd in s["curve"]], marker="o",
                    markersize=3, capsize=2, label=f"{s['label']} (n={s['n']})")
    ax.set_xlabel("tIoU threshold")
    ax.set_ylabel("mAP (%)")
    ax.set_title("mAP vs tIoU (mean ± std over seeds)")
    ax.legend(fontsize=6)
    paths.append(_save(fig, out / "map_vs_tiou.png"))

    if memory:
        rows = [r for r in memory_rows(memory) if r["encoder"] == "tsm_r18"] or memory_rows(memory)
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.bar([r["config"] for r in rows], [r["per_video_bytes"] / 2 ** 30 for r in rows], color="tab:blue")
        for i, r in enumerate(rows):
            ax.text(i, r["per_video_bytes"] / 2 ** 30, f"batch {r['max_batch']}", ha="center", va="bottom", fontsize=7)
        ax.set_ylabel("training memory per video (GiB)")
        ax.set_title(f"{rows[0]['encoder']}: per-video memory, largest batch in {memory['budget_gib']:g} GiB")
        ax.tick_params(axis="x", labelsize=7)
        paths.append(_save(fig, out / "memory.png"))

    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 3.8))
    for c in sorted(cells, key=lambda c: (c["row"], c["seed"])):
        lab = f"{c['row']} s{c['seed']}"
        if c["curves"]["lofi_loss"]:
            x, y, _ = zip(*c["curves"]["lofi_loss"])
            a0.plot(x, y, label=lab, linewidth=1)
        if c["curves"]["head_val_mAP"]:
            x, y = zip(*c["curves"]["head_val_mAP"])
            a1.plot(x, y, label=lab, linewidth=1)
    a0.set(title="LoFi stage: training loss (TAL)", xlabel="optimizer step")
    a1.set(title="head stage: validation average mAP (%)", xlabel="epoch")
    for a in (a0, a1):
        if a.lines:
            a.legend(fontsize=5, ncol=2)
    paths.append(_save(fig, out / "training_curves.png"))

    by = {(c["row"], c["seed"]): c for c in cells}
    seeds = sorted(s for (r, s) in by if r == "acp" and ("long_c_lofi", s) in by)
    if seeds:  # the same videos (first validation ids) for both rows, the first seed that has both
        for row in ("acp", "long_c_lofi"):
            tl = by[(row, seeds[0])]["timelines"]
            paths.append(plot_timelines(tl, {t["id"]: t["detections"] for t in tl}, out / f"timelines_{row}.png"))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def ground_truth(shards: Path) -> Dict[str, dict]:
    """{id: {duration (s), annotations}} of the synthetic videos behind ``shards`` (the ActivityNet-format
    annotations.json that lofi.train's ensure_synthetic generates next to them)."""
    path = Path(shards).parent / f".{Path(shards).name}-videos" / "annotations.json"
    db = json.loads(path.read_text())["database"]
    return {k: {"duration": v["duration"], "annotations": v["annotations"]} for k, v in db.items()}


# ---------------------------------------------------------------------------------------------------------- report

def render_results(sections: Dict[str, dict], memory: Optional[dict]) -> str:
    """docs/RESULTS.md: one section per preset (``{preset: {summary, cells, notes, plots}}``), the memory table."""
    lines = ["# Reproduction study: LoFi on the synthetic TAL benchmark",
             "",
             "Generated by `tools/reproduce.py` from the cell JSONs under `docs/results/<preset>/` "
             "(one per row × seed); "
             "do not edit by hand: notes go in `docs/results/<preset>/NOTES.md`, which is copied here.",
             "",
             "**Our numbers are on the synthetic benchmark (`lofi.data.synthetic`), not on ActivityNet or HACS.** The "
             "paper's numbers are shown beside them, labelled, for reference only: they are ActivityNet-1.3 / HACS-1.1 "
             "numbers from the paper (../shared/docs/PAPER.md) and are not comparable in absolute value.",
             "",
             "mAP in %; mean ± sample std over seeds (a seed re-runs every stage of its row after the shared ACP "
             "pretraining of that seed). *Exceeds seed spread* = |Δ avg mAP vs ACP| > std(row) + std(ACP); "
             "a deeper encoder's LoFi row is compared with the frozen ACP of the same encoder. *Paired Δ per seed*: "
             "the row minus that ACP within each seed (rows of a seed start from the same ACP encoder).",
             ""]
    for preset, sec in sections.items():
        summary, cells = sec["summary"], sec["cells"]
        p = PRESETS.get(preset)
        lines += [f"## Preset `{preset}`", ""]
        lines += [f"Scale: {p.description}", ""] if p else [
            f"Archived: cells of an earlier recipe, kept for the record; `{preset}` is not a current preset, so they "
            "cannot be re-run as they are. The notes below give the recipe and the investigation.", ""]
        secs = [c["seconds"]["cell"] for c in cells]
        if secs:
            lines += [f"{len(cells)} cells; wall time per cell {min(secs):.0f}-{max(secs):.0f} s "
                      f"(mean {sum(secs) / len(secs):.0f} s) on {sec.get('machine', 'this machine')}; "
                      "validation videos "
                      f"per cell: {sorted({c['metrics']['num_videos'] for c in cells})}; uniform-random-proposal "
                      f"baseline avg mAP {sum(c['metrics']['baseline_avg'] for c in cells) / len(cells):.2f}."]
            acp = sorted({round(c["upstream"]["acp_seconds"]) for c in cells if c["upstream"].get("acp_seconds")})
            if acp:
                lines[-1] += (f" The shared ACP pretraining (once per seed and encoder, not in the cell times) took "
                              f"{', '.join(map(str, acp))} s.")
            accs = {(ROWS[c["row"]].encoder, c["seed"], c["upstream"]["acp_val_accuracy"]) for c in cells
                    if c["upstream"].get("acp_val_accuracy") is not None}
            if accs:
                lines[-1] += (" Its validation accuracy on the source clips: "
                              f"{', '.join(f'{100 * a:.1f}% ({e} seed {s})' for e, s, a in sorted(accs))}.")
            lines.append("")
        shown: set = set()
        for t in TABLE_ROWS:
            rows = [r for r in TABLE_ROWS[t] if r in summary]
            lines += [f"### {TABLE_TITLES[t]}", ""]
            if len(rows) < 2 or set(rows) <= shown:
                lines += [f"Not run on this preset (its rows present here: {', '.join(rows) or 'none'}, "
                          "all shown above).", ""]
                continue
            shown |= set(rows)
            lines += ["Ours (synthetic benchmark):", "", ours_table(summary, rows), ""]
            if t not in CONTROL_TABLES:
                lines += ["The paper's numbers (ActivityNet-1.3 / HACS-1.1, from the paper, **not ours**):", "",
                          paper_table(rows, t), ""]
        if p:  # an archived folder has no command that would re-run its recipe
            lines += ["### Commands (one per number)", "",
                      "Every row (all its seeds) is reproduced by one command; a single number (one cell) by the same "
                      "command with one seed. Finished cells are skipped, unless the config keys their result depends "
                      "on (recorded in each cell as `recipe`) have changed since: then they are re-run afresh. Delete "
                      "a cell's JSON to re-run it anyway.", ""]
            for row in (r for r in ROWS if r in summary):
                lines.append(f"- {summary[row]['label']}: `PYTHONPATH=. python tools/reproduce.py --preset {preset} "
                             f"--rows {row} --seeds {','.join(str(s) for s in summary[row]['seeds'])}`")
            lines.append("")
        for png in sec.get("plots", []):
            lines += [f"![{png.stem}](results/{preset}/{png.name})", ""]
        if sec.get("notes"):
            lines += ["### Notes and investigation", "", sec["notes"].strip(), ""]
    if memory:
        lines += ["## Memory: per-video training memory and the largest batch in "
                  f"{memory['budget_gib']:g} GiB (paper's settings: L=100, T=8, 224²)", "",
                  f"From `tools/bench_memory.py --budget-gib {memory['budget_gib']:g}` on {memory['device']} "
                  f"(saved-activation bytes of encoder + fused G-TAD head, fp32; SGAlign: {memory['sgalign_path']}); "
                  "C-LoFi cycles through S/T/ST at a constant batch, so its memory is their maximum. "
                  "Command: `PYTHONPATH=. python tools/bench_memory.py --budget-gib 32`.", "",
                  memory_table(memory), "", claim_one(memory), ""]
    return "\n".join(lines)


def claim_one(memory: dict, gpus: int = 4, batch: int = 16) -> str:
    """The paper's claim 1 checked on the memory table: does a global batch of 16 fit 4 GPUs of the budget?"""
    out = []
    for r in memory_rows(memory):
        fits = r["max_batch"] * gpus
        out.append(f"{r['config']} ({r['encoder']}): {fits} videos on {gpus} GPUs "
                   f"({'fits' if fits >= batch else 'does not fit'} the paper's batch {batch})")
    return (f"The paper's claim 1 on {gpus} × {memory['budget_gib']:g} GiB (4 V100s): " + "; ".join(out) + ".")


def write_results(results_root: Path, doc: Path, memory_file: Optional[Path] = None) -> str:
    """Aggregates every preset under ``results_root`` (docs/results) into ``doc`` (docs/RESULTS.md) with plots."""
    sections = {}
    memory = None
    for d in sorted(p for p in Path(results_root).iterdir() if p.is_dir()):
        cells = load_cells(d)
        mem_path = d / "memory.json"
        mem = json.loads(mem_path.read_text()) if mem_path.is_file() else None
        memory = memory or mem
        if not cells:
            continue
        summary = summarize(cells)
        notes = (d / "NOTES.md").read_text() if (d / "NOTES.md").is_file() else ""
        machine = (d / "machine.txt").read_text().strip() if (d / "machine.txt").is_file() else None
        plots = plot_all(cells, summary, mem, d)
        sections[d.name] = {"summary": summary, "cells": cells, "notes": notes, "plots": plots,
                            **({"machine": machine} if machine else {})}
    text = render_results(sections, memory)
    write_bytes(doc, text)
    return text


# ---------------------------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--smoke", action="store_true", help="one seed (the preset's smoke seeds), tables 1, 2 and control")
    p.add_argument("--seeds", help="comma-separated seeds (default: the preset's)")
    p.add_argument("--rows", help=f"comma-separated rows (default: every row of --tables); valid: {', '.join(ROWS)}")
    p.add_argument("--tables", help="comma-separated tables among 1,2,6,control,control6 (default: the preset's)")
    p.add_argument("--out", type=Path, help="where the cell JSONs go (default: docs/results/<preset>)")
    p.add_argument("--imagenet", help="a local ImageNet state dict: the true ICP row replaces the random-init analogue")
    p.add_argument("--aggregate-only", action="store_true", help="only rebuild docs/RESULTS.md from the cell JSONs")
    p.add_argument("--no-report", action="store_true", help="do not rebuild docs/RESULTS.md (e.g. on the GPU machine)")
    p.add_argument("--max-minutes", type=float, help="start no cell that might end after this many minutes "
                   "(e.g. 4.5 for the gpu preset's 5-minute invocations; the next invocation goes on)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    out = args.out or REPO / "docs" / "results" / args.preset
    if args.imagenet and not Path(args.imagenet).is_file():
        raise SystemExit(f"--imagenet: no such file {args.imagenet!r}")
    if not args.aggregate_only:
        seeds = ([int(s) for s in args.seeds.split(",")] if args.seeds
                 else list(preset.smoke_seeds if args.smoke else preset.seeds))
        tables = args.tables.split(",") if args.tables else (("1", "2", "control") if args.smoke else preset.tables)
        bad = [t for t in tables if t not in TABLE_ROWS]
        if bad:
            raise SystemExit(f"--tables: unknown table(s) {bad}; valid: {', '.join(TABLE_ROWS)}")
        rows = select_rows(preset, tables, args.rows.split(",") if args.rows else None, args.imagenet)
        print(f"preset {args.preset}: rows {rows}, seeds {seeds} -> {out}", flush=True)
        t0 = time.perf_counter()
        run_study(args.preset, seeds, rows, out, imagenet=args.imagenet, say=lambda m: print(m, flush=True),
                  max_minutes=args.max_minutes if args.max_minutes is not None else preset.max_minutes)
        print(f"study finished in {time.perf_counter() - t0:.0f} s", flush=True)
        from lofi.benchmark import machine
        (Path(out) / "machine.txt").write_text(str(machine()) + "\n")
        ensure_memory(out, ["tsm_r18"] if args.preset == "cpu" else ["tsm_r18", "tsm_r34", "tsm_r50"])
    if not args.no_report:
        write_results(REPO / "docs" / "results", REPO / "docs" / "RESULTS.md")
        print(f"wrote {REPO / 'docs' / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
