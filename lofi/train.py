"""Training entry point: ``torchrun --nproc_per_node N -m lofi.train [--config CFG] [--stage S]
[--resume [auto|PATH] | --overwrite] [key=value ...]``; plain ``python -m lofi.train`` runs one process. With no
``--config`` the demo runs (building the synthetic shards first when they are missing).

Stages: acp, acp+ (classification), arrow, speed, acp+arrow, acp+speed (self-supervised pretext tasks on the clips,
alone or beside ACP's loss), lofi (end to end at low fidelity), head (frozen encoder, full-fidelity features), eval,
or ``all`` = the config's ``stages`` in order, each reading the previous one's output.
Everything is written under ``work_dirs/NAME/``. A stage that holds an earlier run's checkpoints is continued
(``--resume``) or started afresh (``--overwrite``), never silently overwritten.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import List, Optional, Sequence

import torch
import yaml

from lofi.atomic import remove_stale_temps
from lofi.config import STAGES, Config, ConfigError, load_config, stage_key, to_dict
from lofi.data import CorruptLimitError
from lofi.data.packing import make_shards
from lofi.data.remote import is_remote
from lofi.data.synthetic import make_synthetic

from .engine import distributed as D
from .engine.checkpoint import UnsafeFileError, stage_checkpoints
from .engine.logger import RunLogger, read_log
from .stages import table
from .stages.base import Context


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lofi.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (default: lofi/configs/demo.yaml)")
    p.add_argument("--stage", default="all", choices=[*STAGES, "all"], help="the stage to run (default: all)")
    fresh = p.add_mutually_exclusive_group()
    fresh.add_argument("--resume", nargs="?", const="auto", default=None,
                       help="continue from the latest checkpoint of each stage (auto, the default value), or from PATH")
    fresh.add_argument("--overwrite", action="store_true",
                       help="start the stages afresh over an earlier run's checkpoints (deletes them first; without "
                            "this or --resume, a stage that holds checkpoints is refused)")
    p.add_argument("--print-config", action="store_true",
                   help="validate the config with its overrides, print the resolved YAML and exit")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. lofi.epochs=3 data.num_workers=0")
    return p.parse_intermixed_args(argv)


def ensure_synthetic(cfg: Config, stages: Sequence[str], log: RunLogger) -> None:
    """Builds the synthetic benchmark's shards that ``stages`` read (the stage table's ``data``) and that are
    missing: data.clip_shards (acp) and data.shards (the other stages, unless head.features replaces them). Existing
    shards are never touched."""
    syn = cfg.data.synthetic
    needed = [(*table.SHARD_SETS[key].synthetic, path)
              for key in table.shard_needs(stages, external_features=bool(cfg.head.features))
              if (path := getattr(cfg.data, key))]
    needed = [n for n in needed if not is_remote(n[3]) and not (Path(n[3]) / "manifest.json").is_file()]
    if not needed:
        return
    raw = Path(cfg.data.shards).parent / f".{Path(cfg.data.shards).name}-videos"
    overrides = {k: (tuple(v) if isinstance(v, list) else v) for k in ("num_videos", "num_classes", "num_clips", "size",
                 "length", "distractors") if (v := getattr(syn, k)) is not None}
    log.info(f"building the synthetic benchmark (preset {syn.preset!r}, seed {syn.seed}, {overrides or 'defaults'}) "
             f"into {', '.join(n[3] for n in needed)}")
    paths = make_synthetic(raw, syn.preset, seed=syn.seed, progress=cfg.log.progress, **overrides)
    for videos, annotations, fmt, out in needed:
        make_shards(paths[videos], paths[annotations], out, fmt=fmt, fps=syn.pack_fps, short_side=syn.short_side,
                    progress=cfg.log.progress)


def set_determinism(cfg: Config, device: torch.device) -> None:
    """Seeds, and on CUDA deterministic kernels where torch has them (warn-only for the rest: e.g. some scatter and
    pooling backward kernels stay nondeterministic). The CPU kernels used here are deterministic already."""
    torch.manual_seed(cfg.seed)
    if cfg.deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def stage_throughput(log_path: Path, stage: str) -> Optional[float]:
    """Mean videos/s over a stage's logged steps (None when it logged none)."""
    rates = [r["videos_per_s"] for r in read_log(log_path) if r.get("stage") == stage and "videos_per_s" in r]
    return sum(rates) / len(rates) if rates else None


def claim_stage_dirs(cfg: Config, stages: Sequence[str], resume: Optional[str], overwrite: bool,
                     is_main: bool) -> List[str]:
    """Before any stage runs: refuses (ConfigError) to start a stage afresh over an earlier run's checkpoints unless
    ``resume`` continues them or ``overwrite`` deletes them first (the head stage's ``model.pt`` with them); removes
    the temporary files killed saves left in the run's stage folders. Files are removed on rank 0 only. Returns
    what it did, to log."""
    stage_dir = {s: cfg.run_dir / stage_key(s) for s in STAGES}
    held = {s: found for s in stages if table.get(s).checkpoints and resume is None
            and (found := stage_checkpoints(stage_dir[s]))}
    if held and not overwrite:
        raise ConfigError("; ".join(f"--stage {s}: {stage_dir[s]} holds checkpoints of an earlier run "
                                    f"({', '.join(str(p.relative_to(stage_dir[s])) for p in found)})"
                                    for s, found in held.items())
                          + ". Continue them with --resume auto, or start afresh with --overwrite (deletes them)")
    if not is_main:
        return []
    notes = []
    if overwrite:
        doomed = [p for found in held.values() for p in found] + [
            cfg.run_dir / out for s in stages if table.get(s).checkpoints for out in table.get(s).outputs
            if not out.startswith(stage_key(s) + "/")]
        for path in doomed:
            path.unlink(missing_ok=True)
        notes += [f"--overwrite: deleted the earlier checkpoints of {', '.join(held)}"] if held else []
    folders = [cfg.run_dir, *stage_dir.values()]
    folders += [sub for f in folders[1:] if f.is_dir() for sub in f.iterdir() if sub.is_dir()]
    stale = [p for f in folders for p in remove_stale_temps(f)]
    if stale:
        notes.append(f"removed {len(stale)} temporary file(s) that interrupted saves left: "
                     f"{', '.join(str(p) for p in stale)}")
    return notes


def run(cfg: Config, stages: List[str], resume: Optional[str], info: D.DistInfo, overwrite: bool = False
        ) -> Optional[dict]:
    """Runs ``stages`` in order, each by its module's ``run(ctx)`` (the stage table); returns the metrics (rank 0)
    of the last stage that returned any (eval)."""
    notes = claim_stage_dirs(cfg, stages, resume, overwrite, info.is_main)
    log = RunLogger(cfg.run_dir, enabled=info.is_main, tensorboard=cfg.log.tensorboard, progress=cfg.log.progress)
    ctx = Context(cfg, info, log, resume)
    for note in notes:
        log.info(note)
    if info.is_main:
        (cfg.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        if cfg.data.synthetic.build:
            ensure_synthetic(cfg, stages, log)
    D.barrier()
    log.info(f"run {cfg.name}: stages {' → '.join(stages)}; {info.world_size} process(es) on {info.device}; "
             f"outputs in {cfg.run_dir}")
    metrics = None
    try:
        for stage in stages:
            t0 = time.perf_counter()
            result = importlib.import_module(table.get(stage).module).run(replace(ctx, stage=stage))
            metrics = result if isinstance(result, dict) else metrics
            seconds = time.perf_counter() - t0
            rate = stage_throughput(cfg.run_dir / "log.jsonl", stage) if info.is_main else None
            log.metrics(f"time_{stage_key(stage)}", {"seconds": seconds, "videos_per_s": rate,
                                                     "processes": info.world_size, "device": str(info.device)})
            log.info(f"[{stage}] done in {seconds:.0f} s" + (f" ({rate:.2f} videos/s)" if rate else ""))
        log.info(f"checkpoints: {cfg.run_dir}/<stage>/ (best.pt, last.pt), model: {cfg.run_dir / 'model.pt'}; "
                 f"logs: {cfg.run_dir / 'log.jsonl'}, metrics: {cfg.run_dir / 'metrics.json'}, "
                 f"TensorBoard: {cfg.run_dir / 'tensorboard'}")
    finally:
        log.close()
    return metrics


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    stages = None if args.stage == "all" else [args.stage]
    try:
        cfg = load_config(args.config, args.overrides, stages=stages, world_size=D.env_world_size())
    except ConfigError as e:
        if D.env_rank() == 0:
            print(f"lofi.train: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        if D.env_rank() == 0:
            print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    if args.resume not in (None, "auto") and not Path(args.resume).is_file():
        print(f"lofi.train: --resume: no such checkpoint {args.resume!r} (use --resume auto for the latest)",
              file=sys.stderr)
        return 2
    if args.resume not in (None, "auto") and stages is None:
        print("lofi.train: --resume PATH needs a single --stage (use --resume auto with --stage all)", file=sys.stderr)
        return 2
    info = D.init(cfg.device, cfg.dist.timeout_s)
    set_determinism(cfg, info.device)
    try:
        run(cfg, list(cfg.stages if stages is None else stages), args.resume, info, args.overwrite)
    except (ConfigError, UnsafeFileError) as e:
        if info.is_main:
            print(f"lofi.train: {e}", file=sys.stderr)
        return 2
    except CorruptLimitError as e:  # raised on the rank that read them; torchrun then stops the others
        print(f"lofi.train: {e}", file=sys.stderr)
        return 1
    finally:
        D.shutdown()
    return 0


if __name__ == "__main__":
    D.exit_process(main())
