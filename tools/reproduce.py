"""Runs the reproduction study (lofi.study): each row config of a preset × each seed, one resumable cell at a time.

    python tools/reproduce.py [--preset cpu|gpu] [--configs DIR] [--smoke] [--seeds 0,1,2] [--rows acp,long_c_lofi]
        [--tables 1,2,5,6,7,control,control6,heads] [--out DIR] [--imagenet PATH] [--max-minutes M]

A cell is one row config (``lofi/configs/study/<preset>/<row>.yaml``, or ``--configs DIR``) at one seed, run with
``python -m lofi.train --config ROW seed=S work_dir=... name=ROW --resume auto``; its result is written atomically to
``<out>/<row>-seed<S>.json`` (default out: docs/results/<preset>) with the resolved config it ran with. A cell whose
JSON holds the recipe its row gives now (the stage table's ``recipe``: the config less where and how it ran) is
skipped; any other cell runs: lofi.train continues its stages where
they stopped, and when it refuses the checkpoints (written under another config: exit status 2) the cell runs
again afresh with ``--overwrite``. Rows that start with ACP share one ACP run per seed and encoder (lofi.study).
One process runs a study at a time (a lock in its work directory). Then ``python tools/report_study.py`` writes
docs/RESULTS.md. On a busy machine, ``OMP_NUM_THREADS=1`` was faster than torch's default threads.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lofi.atomic import write_json  # noqa: E402
from lofi.config import config_changes, upgrade  # noqa: E402
from lofi.stages.table import recipe  # noqa: E402
from lofi.study import (PRESETS, ROWS, STUDY_DIR, Cell, Preset, cell_path, encoder_change,  # noqa: E402
                        label, read_cell, row_configs, select_rows)

METRIC_TIOUS = (0.5, 0.75, 0.95)


def train(config: Path, overrides: Sequence[str], log: Path, say: Callable[[str], None]) -> Tuple[float, float]:
    """``python -m lofi.train --config CONFIG OVERRIDES --resume auto`` in the repository root, output appended to
    ``log``; where lofi.train refuses (exit status 2: the checkpoints were written under another config) it runs
    again with ``--overwrite``. Returns (wall time in s, the Unix time from which the run's log records are its
    own: 0 when it continued earlier runs, else when ``--overwrite`` started); RuntimeError when the run fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0, since = time.perf_counter(), 0.0
    for mode in ("--resume", "--overwrite"):
        since = since if mode == "--resume" else time.time()
        cmd = [sys.executable, "-m", "lofi.train", "--config", str(config), *overrides, mode]
        cmd += ["auto"] if mode == "--resume" else []
        with open(log, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT).returncode
        if rc == 0:
            return time.perf_counter() - t0, since
        if rc != 2 or mode == "--overwrite":
            break
        say(f"[stale] {log.parent.name}: lofi.train refused to resume ({last_error(log)}); running it afresh with "
            "--overwrite")
    raise RuntimeError(f"{' '.join(cmd)} failed with exit status {rc}; see {log}")


def last_error(log: Path) -> str:
    """The last ``lofi.train:`` message in ``log``, shortened."""
    lines = [line for line in log.read_text().splitlines() if line.startswith("lofi.train:")]
    return lines[-1][len("lofi.train: "):][:300] if lines else "no message"


def ensure_acp(cell: Cell, say: Callable[[str], None], done: Dict[Path, dict]) -> dict:
    """The shared ACP run of ``cell``'s seed and encoder, brought up to date through lofi.train once per invocation
    (``done`` remembers it); its training time and validation accuracy, kept in its ``upstream.json`` from the
    invocation that trained it (a later one only finds it finished)."""
    run_dir = cell.acp_dir()
    if run_dir in done:
        return done[run_dir]
    encoder, saved, since = run_dir / "acp" / "encoder.pt", run_dir / "upstream.json", time.time()
    seconds, _ = train(cell.config, cell.acp_overrides(), run_dir / "stdout.log", say)
    if trained(run_dir, "acp", since) or not saved.is_file():
        metrics = json.loads((run_dir / "metrics.json").read_text())
        write_json({"acp_seconds": metrics.get("time_acp", {}).get("seconds", seconds),
                    "acp_val_accuracy": metrics.get("acp", {}).get("val_accuracy")}, saved)
    info = {"encoder_file": str(encoder), **json.loads(saved.read_text())}
    done[run_dir] = info
    return info


def trained(run_dir: Path, stage: str, since: float) -> bool:
    """Whether ``stage`` of the run in ``run_dir`` logged a finished epoch after ``since`` (Unix time, s)."""
    from lofi.engine.logger import read_log
    return any(r.get("stage") == stage and r.get("kind") == "epoch" and r.get("time", 0) > since
               for r in read_log(run_dir / "log.jsonl"))


def run_cell(preset: str, cell: Cell, say: Callable[[str], None] = print,
             acp_runs: Optional[Dict[Path, dict]] = None) -> dict:
    """Trains and evaluates one cell (its shared ACP first); returns its record (metrics, times, curves, config)."""
    upstream = ensure_acp(cell, say, {} if acp_runs is None else acp_runs) if cell.acp_dir() else {}
    run_dir = cell.run_dir()
    seconds, since = train(cell.config, cell.overrides(), run_dir / "stdout.log", say)
    return cell_record(preset, cell, seconds, upstream, since)


def cell_record(preset: str, cell: Cell, seconds: float, upstream: dict, since: float = 0.0) -> dict:
    """The small JSON of a finished cell, read from its run directory: metrics, stage times, curves (from the log
    records since ``since``, Unix time), timelines and the resolved config it ran with."""
    run_dir = cell.run_dir()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ev = metrics["eval"]
    tious = [round(t, 4) for t in ev["tiou_thresholds"]]
    at = {f"mAP@{t:g}": 100 * ev["mAP"][tious.index(t)] for t in METRIC_TIOUS}
    curves = training_curves(run_dir, since)
    start = upstream.get("encoder_file")
    changes = {stage: encoder_change(start, str(run_dir / stage / "encoder.pt")) for stage in ("acp_plus", "lofi")
               if start and (run_dir / stage / "encoder.pt").is_file()}
    return {"preset": preset, "row": cell.row, "seed": cell.seed, "label": label(preset, cell.row),
            "metrics": {**at, "avg": 100 * ev["average_mAP"], "mAP": [100 * v for v in ev["mAP"]],
                        "tiou_thresholds": tious, "AR@AN": ev.get("AR@AN"), "AUC": ev.get("AUC"),
                        "baseline_avg": 100 * ev["baseline_average_mAP"], "num_videos": ev["num_videos"]},
            "seconds": {"cell": round(seconds, 1),
                        **{k[5:]: round(v["seconds"], 1) for k, v in metrics.items() if k.startswith("time_")}},
            "upstream": upstream, "encoder_change": changes, "head_lr": metrics.get("head", {}).get("lr"),
            # the held-out accuracies of the cell's own clip stages (ACP+, the pretext stages: val_pretext_accuracy)
            "clip_accuracy": {k: v for k, v in metrics.items() if isinstance(v, dict) and "val_clips" in v},
            "curves": curves, "timelines": timelines(run_dir, ground_truth(config["data"]["shards"])),
            "config": config, "command": f"python tools/reproduce.py --preset {preset} --rows {cell.row} "
                                         f"--seeds {cell.seed}"}


def training_curves(run_dir: Path, since: float = 0.0) -> Dict[str, list]:
    """{lofi_loss: [[step, loss, fidelity]], head_val_mAP: [[epoch, avg mAP %]]} from the run's log records since
    ``since`` (Unix time, s); a step logged twice (re-done after a resume) counts as last logged."""
    from lofi.engine.logger import read_log
    loss, head = {}, {}
    for r in read_log(run_dir / "log.jsonl"):
        if r.get("time", 0) < since:
            continue
        if r.get("stage") == "lofi" and r.get("kind") == "step":
            loss[r["step"]] = [r["step"], round(r["loss"], 5), r.get("fidelity")]
        elif r.get("stage") == "head" and r.get("kind") == "epoch" and "average_mAP" in r:
            head[r["step"]] = [r["step"], round(100 * r["average_mAP"], 3)]
    return {"lofi_loss": [loss[k] for k in sorted(loss)], "head_val_mAP": [head[k] for k in sorted(head)]}


def ground_truth(shards: str) -> Dict[str, dict]:
    """{id: {duration (s), annotations}} of the synthetic videos behind ``shards`` (the ActivityNet-format
    annotations.json that lofi.train builds next to them)."""
    path = Path(shards).parent / f".{Path(shards).name}-videos" / "annotations.json"
    db = json.loads(path.read_text())["database"]
    return {k: {"duration": v["duration"], "annotations": v["annotations"]} for k, v in db.items()}


def timelines(run_dir: Path, gt: Dict[str, dict], videos: int = 3, top: int = 5) -> List[dict]:
    """The first ``videos`` validation videos (sorted ids): duration, GT segments and the top detections."""
    dets = json.loads((run_dir / "eval" / "detections.json").read_text())["results"]
    return [{"id": vid, "duration": gt[vid]["duration"], "annotations": gt[vid]["annotations"],
             "detections": sorted(dets[vid], key=lambda d: -d["score"])[:top]}
            for vid in sorted(v for v in dets if v in gt)[:videos]]


def run_study(preset: str, cells: Sequence[Cell], out: Path, say: Callable[[str], None] = print,
              max_minutes: Optional[float] = None) -> List[Path]:
    """Runs every cell whose JSON in ``out`` is missing or records another recipe (the config less the keys its
    result does not depend on, by the stage table) than its row gives now, in order; returns the files written. A failing cell is reported and the study goes on. With ``max_minutes``, no cell
    starts when the time used plus the longest cell so far would pass it. Cells recorded by an earlier runner (a
    ``recipe``, no ``config``) are kept."""
    written: List[Path] = []
    start, longest = time.perf_counter(), 0.0
    acp_runs: Dict[Path, dict] = {}
    for cell in cells:
        path = cell_path(out, cell.row, cell.seed)
        old, current = read_cell(path), cell.resolved()
        # what the result depends on, by the stage table: not where or how the cell ran and logged
        # (a cell recorded before a key existed holds it at its default: upgrade fills it in)
        was, now = (recipe(upgrade(tree), current["stages"]) for tree in ((old or {}).get("config", current), current))
        if old is not None and was == now:
            say(f"[skip] {path} is current" + ("" if "config" in old else " (recorded before cells held their config)"))
            continue
        if old is not None:
            say(f"[changed] {path}: {'; '.join(config_changes(was, now))}")
        if max_minutes is not None and time.perf_counter() - start + longest > 60 * max_minutes:
            say(f"[stop] the next cell might not finish within --max-minutes {max_minutes:g}; run again to go on")
            break
        say(f"[run] {cell.row} seed {cell.seed} ...")
        t0 = time.perf_counter()
        try:
            record = run_cell(preset, cell, say, acp_runs)
        except (RuntimeError, FileNotFoundError, KeyError) as e:
            say(f"[fail] {cell.row} seed {cell.seed}: {e}")
            continue
        write_json(record, path)
        written.append(path)
        longest = max(longest, time.perf_counter() - t0)
        say(f"[done] {cell.row} seed {cell.seed}: avg mAP {record['metrics']['avg']:.2f} in "
            f"{time.perf_counter() - t0:.0f} s -> {path}")
    return written


def ensure_memory(out: Path, encoders: Sequence[str], budget_gib: float = 32.0) -> dict:
    """``<out>/memory.json``: lofi.benchmark_memory's budget rows (measured once, then reused)."""
    path = Path(out) / "memory.json"
    if path.is_file():
        return json.loads(path.read_text())
    import torch
    from lofi.benchmark_memory import measure
    result = measure(encoders, "cuda" if torch.cuda.is_available() else "cpu", budget_gib)
    write_json(result, path)
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu", help=f"the study's scale: {', '.join(PRESETS)} (default cpu)")
    p.add_argument("--configs", type=Path, help="the folder of row configs (default lofi/configs/study/<preset>)")
    p.add_argument("--smoke", action="store_true", help="one seed (the preset's smoke seeds), tables 1, 2 and control")
    p.add_argument("--seeds", help="comma-separated seeds (default: the preset's)")
    p.add_argument("--rows", help="comma-separated rows (default: every row of --tables)")
    p.add_argument("--tables", help="comma-separated tables among 1,2,5,6,7,control,control6,heads (default: the "
                   "preset's)")
    p.add_argument("--out", type=Path, help="where the cell JSONs go (default: docs/results/<preset>)")
    p.add_argument("--imagenet", help="a local ImageNet state dict: the true ICP row replaces the random-init analogue")
    p.add_argument("--max-minutes", type=float, help="start no cell that might end after this many minutes "
                   "(e.g. 4.5 for the gpu preset's 5-minute invocations; the next invocation goes on)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    preset = PRESETS.get(args.preset, Preset())
    configs = args.configs or STUDY_DIR / args.preset
    if not row_configs(configs):
        raise SystemExit(f"reproduce: no row configs in {configs}")
    if args.imagenet and not Path(args.imagenet).is_file():
        raise SystemExit(f"reproduce: --imagenet: no such file {args.imagenet!r}")
    seeds = ([int(s) for s in args.seeds.split(",")] if args.seeds
             else list(preset.smoke_seeds if args.smoke else preset.seeds))
    tables = args.tables.split(",") if args.tables else (("1", "2", "control") if args.smoke else preset.tables)
    try:
        rows = select_rows(preset, configs, tables, args.rows.split(",") if args.rows else None, args.imagenet)
    except ValueError as e:
        raise SystemExit(f"reproduce: {e}") from None
    needs = [r for r in rows if r in ROWS and ROWS[r].imagenet]
    if needs and not args.imagenet:
        raise SystemExit(f"reproduce: row(s) {needs} need --imagenet PATH (a local ImageNet state dict)")
    out = (args.out or REPO / "docs" / "results" / args.preset).resolve()
    imagenet = str(Path(args.imagenet).resolve()) if args.imagenet else None
    cells = [Cell(r, s, row_configs(configs)[r].resolve(), imagenet) for s in seeds for r in rows]  # seed-major
    if not cells:
        raise SystemExit("reproduce: nothing to run")
    os.chdir(REPO)  # relative paths in the configs (work_dir, shards) are relative to the repository root
    work = cells[0].seed_dir().parent
    work.mkdir(parents=True, exist_ok=True)
    with open(work / ".reproduce.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"reproduce: another reproduce.py runs in {work}; wait for it") from None
        print(f"preset {args.preset}: rows {rows}, seeds {seeds} -> {out}", flush=True)
        t0 = time.perf_counter()
        run_study(args.preset, cells, out, say=lambda m: print(m, flush=True),
                  max_minutes=args.max_minutes if args.max_minutes is not None else preset.max_minutes)
        print(f"study finished in {time.perf_counter() - t0:.0f} s; the report: python tools/report_study.py",
              flush=True)
    from lofi.benchmark import machine
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "machine.txt").write_text(machine() + "\n")
    if args.preset in PRESETS:
        ensure_memory(out, ["tsm_r18"] if args.preset == "cpu" else ["tsm_r18", "tsm_r34", "tsm_r50"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
