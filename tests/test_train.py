"""`python -m lofi.train` end to end on tiny synthetic shards (every stage; the losses go down), exact resume of a
real stage after SIGKILL, feature-cache reuse across runs, external features, and inference on a real clip."""
import json
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lofi.config import load_config  # noqa: E402
from lofi.engine.logger import read_log  # noqa: E402
from lofi.models.registry import HEADS
from lofi.models.tal import load_head
from crafted import crafted_pt
from subproc import child_env

REPO = Path(__file__).resolve().parents[1]
TINY = ["fidelity.L=8", "fidelity.T=2", "fidelity.size=32", "fidelity.stride=null", "data.num_workers=0", "data.backend=cpu",
        "log.progress=false", "log.tensorboard=false", "log.every_iters=1", "model.gtad_fused=true",
        "acp.fidelity={L: 1, T: 2, size: 32}", "acp.epochs=3", "acp.batch_size=4",
        "acp.optim={lr: 0.005, momentum: 0.9}", "acp_plus.optim={lr: 0.002, momentum: 0.9}",
        "acp_plus.fidelity={L: 1, T: 2, size: 32}", "acp_plus.epochs=1", "acp_plus.batch_size=4",
        "lofi.epochs=4", "lofi.batch_size=2", "head.epochs=4", "head.batch_size=2", "head.optim.lr=1e-3",
        "stages=[acp, acp+, lofi, head, eval]", "eval.num_timelines=2"]


def train(tmp, shards, *args, check=True, wrapper=(), nproc=0, restarts=0, env=None):
    """``python [torchrun] [wrapper] -m lofi.train`` on the tiny shards; ``wrapper`` is a script such as kill_after.py."""
    launch = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--rdzv_backend", "c10d",
              "--rdzv_endpoint", "localhost:0", "--max-restarts", str(restarts)] if nproc else []
    cmd = [sys.executable, *launch, *wrapper, "-m", "lofi.train", f"data.shards={shards}", f"data.clip_shards={shards}/clips",
           f"work_dir={tmp}", "data.synthetic.build=false", *TINY, *args]
    env = child_env(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **(env or {}))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-12000:]}")
    return proc


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    """10 short synthetic videos (3 classes) and 12 clips at 48x64, packed as shards."""
    from lofi.data.packing import make_shards
    from lofi.data.synthetic import make_synthetic
    root = tmp_path_factory.mktemp("tiny")
    paths = make_synthetic(root / "raw", "demo", seed=3, num_videos=10, num_classes=3, size=(48, 64),
                           length=(6.0, 10.0), num_clips=12, clip_length=(1.0, 1.5), workers=1, progress=False)
    make_shards(paths["videos"], paths["annotations"], root / "shards", fps=10, short_side=48, workers=1,
                progress=False)
    make_shards(paths["clips"], paths["clip_list"], root / "shards" / "clips", fmt="clips", fps=10, short_side=48,
                workers=1, progress=False)
    return root / "shards"


@pytest.fixture(scope="module")
def tiny_run(tiny_shards, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    proc = train(work, tiny_shards)
    return work / "demo", proc


def stage_losses(run_dir, stage):
    return [r["loss"] for r in read_log(run_dir / "log.jsonl") if r.get("stage") == stage and r.get("kind") == "step"]


def test_all_stages_end_to_end(tiny_run, tiny_shards):
    run_dir, proc = tiny_run
    for stage in ("acp", "acp_plus", "lofi", "head"):
        assert (run_dir / stage / "last.pt").is_file(), stage
    for stage in ("acp", "acp_plus", "lofi"):
        assert (run_dir / stage / "encoder.pt").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ev = metrics["eval"]
    assert 0 <= ev["average_mAP"] <= 1 and len(ev["mAP"]) == 10 and "VideoClassifier" in ev["classifier"]
    assert set(ev["AR@AN"]) >= {"1", "10", "100"} and "baseline_average_mAP" in ev
    for stage in ("acp", "acp_plus", "lofi", "head"):
        assert metrics[f"time_{stage}"]["videos_per_s"] > 0
    clips = json.loads((tiny_shards / "clips" / "manifest.json").read_text())["splits"]["validation"]["num_samples"]
    assert metrics["acp"]["val_clips"] == clips and 0 <= metrics["acp"]["val_accuracy"] <= 1  # every clip once
    assert metrics["acp_plus"]["val_clips"] > 0 and "[acp+] validation accuracy" in proc.stdout
    assert "uniform random proposals" in proc.stdout and "average mAP" in proc.stdout
    det = json.loads((run_dir / "eval" / "detections.json").read_text())
    assert det["results"] and all(len(v) <= 200 for v in det["results"].values())
    for png in (run_dir / "curves.png", run_dir / "eval" / "timelines.png"):
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_losses_go_down(tiny_run):
    run_dir, _ = tiny_run
    for stage in ("acp", "head"):
        losses = stage_losses(run_dir, stage)
        k = max(1, len(losses) // 3)
        assert np.mean(losses[-k:]) < np.mean(losses[:k]), (stage, losses)
    # LoFi: the loss depends on the fidelity, so compare epochs 0 and 3, which Long C-LoFi runs at the same one (S).
    steps = [r for r in read_log(run_dir / "log.jsonl") if r.get("stage") == "lofi" and r.get("kind") == "step"]
    first, last = ([r["loss"] for r in steps if r["epoch"] == e] for e in (0, 3))
    assert np.mean(last) < np.mean(first), (first, last)


def test_lofi_stage_uses_the_schedule_never_full(tiny_run):
    run_dir, _ = tiny_run
    cfg = load_config(None, TINY, check_paths=False)
    seen = {r["epoch"]: r["fidelity"] for r in read_log(run_dir / "log.jsonl") if r.get("stage") == "lofi"
            and r.get("kind") == "step"}
    assert seen == {0: "8x2@16x16", 1: "2x2@32x32", 2: "4x2@22x22", 3: "8x2@16x16"}  # Long C-LoFi: S, T, ST, S
    assert f"{cfg.fidelity.L}x{cfg.fidelity.T}@{cfg.fidelity.size}x{cfg.fidelity.size}" not in seen.values()


def test_head_resume_after_sigkill_is_exact(tiny_run, tiny_shards, tmp_path):
    # The head stage on the cached features of the tiny run: once uninterrupted, once killed mid-epoch and resumed.
    run_dir, _ = tiny_run
    common = [f"head.cache_dir={run_dir / 'features'}", "checkpoint.every_iters=2", "head.epochs=2"]
    encoder = f"model.weights={run_dir / 'lofi' / 'encoder.pt'}"
    train(tmp_path / "a", tiny_shards, "--stage", "head", encoder, *common)
    killer = [str(REPO / "tests" / "kill_after.py"), "5"]
    proc = train(tmp_path / "b", tiny_shards, "--stage", "head", encoder, *common, check=False, wrapper=killer)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (tmp_path / "b" / "demo" / "head" / "last.pt").is_file()
    train(tmp_path / "b", tiny_shards, "--stage", "head", "--resume", "auto", encoder, *common)
    a = torch.load(tmp_path / "a" / "demo" / "head" / "last.pt", weights_only=False)["models"]["model"]
    b = torch.load(tmp_path / "b" / "demo" / "head" / "last.pt", weights_only=False)["models"]["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # --resume auto never continues a stage under another recipe: the error names the key and the way out.
    proc = train(tmp_path / "b", tiny_shards, "--stage", "head", "--resume", "auto", encoder, *common,
                 "head.optim.lr=0.5", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "head.optim.lr: 0.001 -> 0.5" in proc.stderr and "--resume PATH" in proc.stderr


def test_head_resume_path_into_a_new_run_and_per_lr(tiny_run, tiny_shards, tmp_path):
    """The head stage resumed from another run's checkpoint writes model.pt with that history's best head (it crashed
    on the missing best.pt); under head.lr_search a --resume PATH resumes only the lr it was trained at, and the other
    rates start afresh at their own lr."""
    run_dir, _ = tiny_run
    common = ["--stage", "head", f"head.cache_dir={run_dir / 'features'}",
              f"model.weights={run_dir / 'lofi' / 'encoder.pt'}"]
    train(tmp_path / "a", tiny_shards, *common, "head.epochs=2")
    a, b = tmp_path / "a" / "demo", tmp_path / "b" / "demo"
    train(tmp_path / "b", tiny_shards, *common, "head.epochs=2", "--resume", str(a / "head" / "last.pt"))
    ma, mb = (torch.load(d / "model.pt", weights_only=True) for d in (a, b))
    assert ma["val_average_mAP"] == mb["val_average_mAP"] and all(torch.equal(ma["head"][k], mb["head"][k])
                                                                  for k in ma["head"])
    search = ["head.lr_search=[0.001, 0.002]"]
    train(tmp_path / "c", tiny_shards, *common, *search, "head.epochs=1")
    proc = train(tmp_path / "d", tiny_shards, *common, *search, "head.epochs=2",
                 "--resume", str(tmp_path / "c" / "demo" / "head" / "lr0.002" / "last.pt"))
    fresh, resumed = (torch.load(tmp_path / "d" / "demo" / "head" / f"lr{lr}" / "last.pt", weights_only=True)
                      for lr in ("0.001", "0.002"))
    assert fresh["scheduler"]["base_lrs"] == [0.001] and resumed["scheduler"]["base_lrs"] == [0.002]
    assert proc.stdout.count("[head] resumed at epoch 1") == 1
    assert [h["epoch"] for h in fresh["extra"]["history"]] == [1, 2]  # both epochs trained here
    assert [h["epoch"] for h in resumed["extra"]["history"]] == [1, 2]


def test_a_head_is_never_paired_with_another_encoder(tiny_run, tiny_shards, tmp_path):
    """--stage eval scores model.pt only on the features of the encoder its head was trained on: when the run's
    encoder changed since (here model.weights; an earlier stage re-run alike), eval is an error, and so is
    continuing the finished head stage with --resume auto (it would bundle the new encoder with the old head)."""
    run_dir, _ = tiny_run
    lofi, acp = (f"model.weights={run_dir / s / 'encoder.pt'}" for s in ("lofi", "acp"))
    train(tmp_path, tiny_shards, "--stage", "head", lofi, "head.epochs=1")
    proc = train(tmp_path, tiny_shards, "--stage", "eval", acp, check=False)
    assert proc.returncode == 2 and "another encoder than the run's current one" in proc.stderr, proc.stderr[-2000:]
    assert str(run_dir / "acp" / "encoder.pt") in proc.stderr and not (tmp_path / "demo" / "eval").exists()
    proc = train(tmp_path, tiny_shards, "--stage", "head", "--resume", "auto", acp, "head.epochs=1", check=False)
    assert proc.returncode == 2 and "head_encoder_sha256" in proc.stderr, proc.stderr[-2000:]
    proc = train(tmp_path, tiny_shards, "--stage", "eval", lofi)
    assert "average mAP" in proc.stdout


def test_resume_checks_the_keys_the_stage_depends_on(tmp_path):
    """A finished lofi stage resumes when only downstream (head) or run-only (log, workers) keys changed; a changed
    LoFi schedule is refused under --resume auto and only warned about with an explicit checkpoint path."""
    from lofi.config import ConfigError, to_dict
    from lofi.engine.checkpoint import Checkpointer
    from lofi.engine.distributed import DistInfo
    from lofi.engine.logger import RunLogger
    from lofi.stages.base import Context
    from lofi.stages.resume import resume_state
    saved = load_config(None, ["lofi.schedule.c_s=16"], check_paths=False)
    ckpt = Checkpointer(tmp_path / "lofi")
    ckpt.save({"config": to_dict(saved), "position": {"epoch": 1, "iteration": 0}}, step_file=False)

    def ctx(resume, *overrides):
        cfg = load_config(None, ["lofi.schedule.c_s=16", *overrides], check_paths=False)
        return Context(cfg, DistInfo(), RunLogger(tmp_path / "run", tensorboard=False, progress=False), resume)
    assert resume_state(ctx(None), ckpt, "lofi") is None
    assert resume_state(ctx("auto", "head.epochs=99", "log.every_iters=3"), ckpt, "lofi")["position"]["epoch"] == 1
    with pytest.raises(ConfigError, match=r"lofi.schedule.c_s: 16 -> 1\b.*delete .*lofi"):
        resume_state(ctx("auto", "lofi.schedule.c_s=1"), ckpt, "lofi")
    with pytest.raises(ConfigError, match=r"data.num_workers: 2 -> 0"):  # the workers shape the sample order
        resume_state(ctx("auto", "data.num_workers=0"), ckpt, "lofi")
    assert resume_state(ctx(str(ckpt.latest()), "lofi.schedule.c_s=1"), ckpt, "lofi")["position"]["epoch"] == 1
    assert "this run applies: lofi.schedule.c_s: 16 -> 1" in (tmp_path / "run" / "log.jsonl").read_text()
    with pytest.raises(ConfigError, match="head.epochs"):  # the head stage depends on every section
        resume_state(ctx("auto", "head.epochs=99"), ckpt, "head")


def test_resume_path_applies_changed_epochs_and_optimizer(tmp_path):
    """--resume PATH with another lr, momentum, StepLR and more epochs: a finished stage goes on training, at the new
    settings (the lr follows the new StepLR at the restored epoch); a changed optimizer type or fewer epochs than the
    checkpoint's position are refused."""
    from lofi.config import ConfigError, to_dict
    from lofi.engine.checkpoint import Checkpointer
    from lofi.engine.distributed import DistInfo
    from lofi.engine.logger import RunLogger
    from lofi.engine.loop import Trainer
    from lofi.stages.base import Context, make_optimizer, run_trainer
    log = RunLogger(tmp_path / "run", tensorboard=False, progress=False)
    data = [{"x": torch.randn(4, 3, generator=torch.Generator().manual_seed(i)), "y": torch.ones(4, 1)}
            for i in range(3)]

    def run(resume, *overrides):
        cfg = load_config(None, ["lofi.optim={lr: 0.1, momentum: 0.5, step_size: 1, gamma: 0.5}", "lofi.epochs=2",
                                 *overrides], check_paths=False)
        model = torch.nn.Linear(3, 1)
        optimizer, scheduler = make_optimizer(model.parameters(), cfg.lofi.optim)
        trainer = Trainer(stage="lofi", modules={"model": model}, loader_fn=lambda e, start: data,
                          step_fn=lambda b, g: (((model(b["x"]) - b["y"]) ** 2).mean(), {}), optimizer=optimizer,
                          scheduler=scheduler, epochs=cfg.lofi.epochs, info=DistInfo(), logger=log, seed=0,
                          checkpointer=Checkpointer(tmp_path / "lofi"), log_every=1, config=to_dict(cfg))
        return run_trainer(Context(cfg, DistInfo(), log, resume), trainer)
    run(None)
    path = str(tmp_path / "lofi" / "last.pt")
    trainer = run(path, "lofi.epochs=4", "lofi.optim={lr: 0.4, momentum: 0.9, step_size: 2, gamma: 0.1}")
    assert trainer.state.epoch == 4 and trainer.optimizer.param_groups[0]["momentum"] == 0.9
    lrs = {r["epoch"]: r["lr"] for r in read_log(tmp_path / "run" / "log.jsonl") if r.get("kind") == "step"}
    assert lrs[0] == lrs[1] / 0.5 == 0.1 and lrs[2] == lrs[3] == pytest.approx(0.4 * 0.1)  # 0.4 × 0.1^(epoch // 2)
    with pytest.raises(ConfigError, match=r"lofi.optim.name: 'sgd' -> 'adam'"):
        run(path, "lofi.epochs=4", "lofi.optim.name=adam")
    with pytest.raises(ConfigError, match=r"epoch 4, iteration 0, past lofi.epochs=3"):
        run(path, "lofi.epochs=3")


def test_feature_cache_reused_then_rebuilt(tiny_run, tiny_shards):
    run_dir, _ = tiny_run
    log = (run_dir / "log.jsonl").read_text()
    assert "extracting training features" in log and "reusing cached validation features" in log  # eval reused it
    index = json.loads((run_dir / "features" / "validation" / "index.json").read_text())
    assert index["complete"] and index["key"]["fidelity"] == "8x2@32x32"


def test_external_npy_features(tiny_run, tiny_shards, tmp_path):
    # Features as G-TAD/OpenTAD users have them: one (T, C) .npy per video, any T; labels from an ActivityNet JSON.
    run_dir, _ = tiny_run
    from lofi.engine.feature_cache import FeatureCache
    feats = tmp_path / "npy"
    feats.mkdir()
    database = {}
    for subset in ("training", "validation"):
        idx = json.loads((run_dir / "features" / subset / "index.json").read_text())
        for vid, (x, meta) in FeatureCache(run_dir / "features" / subset, idx["key"]).load().items():
            np.save(feats / f"v_{vid}.npy", torch.nn.functional.interpolate(x[None], 12)[0].t().numpy())
            database[vid] = {"subset": subset, "duration": meta["duration"],
                             "annotations": [{"segment": a["segment"], "label": a["label"]} for a in meta["annotations"]]}
    (tmp_path / "gt.json").write_text(json.dumps({"database": database}))
    train(tmp_path / "w", tiny_shards, "--stage", "head", f"head.features={feats}",
          f"head.annotations={tmp_path / 'gt.json'}", "head.epochs=1", "data.shards=/nonexistent")
    metrics = json.loads((tmp_path / "w" / "demo" / "metrics.json").read_text())
    assert 0 <= metrics["head"]["val_average_mAP"] <= 1


def test_two_process_gloo_lofi_stage(tiny_run, tiny_shards, tmp_path):
    # torchrun with 2 CPU processes (gloo): the reader splits the shards per rank, DDP averages the gradients.
    run_dir, _ = tiny_run
    proc = train(tmp_path, tiny_shards, "--stage", "lofi", "lofi.epochs=1", f"model.weights={run_dir / 'acp' / 'encoder.pt'}",
                 nproc=2)
    assert "2 process(es)" in proc.stdout and "global batch 2 = 2 process(es) × 1 videos" in proc.stdout
    state = torch.load(tmp_path / "demo" / "lofi" / "last.pt", weights_only=False)
    assert state["position"] == {"epoch": 1, "iteration": 0, "done": True}
    assert all(torch.isfinite(v).all() for v in state["models"]["model"].values() if v.is_floating_point())


def test_torchrun_max_restarts_resumes_a_killed_worker(tiny_run, tiny_shards, tmp_path):
    # Rank 1 is SIGKILLed mid-epoch once; torchrun --max-restarts 1 restarts both workers, --resume auto continues
    # from the latest checkpoint, and the final weights equal those of an uninterrupted 2-process run.
    run_dir, _ = tiny_run
    common = ["--stage", "lofi", "--resume", "auto", "lofi.epochs=2", "checkpoint.every_iters=1",
              f"model.weights={run_dir / 'acp' / 'encoder.pt'}"]
    train(tmp_path / "a", tiny_shards, *common, nproc=2)
    marker = tmp_path / "killed"
    killer = [str(REPO / "tests" / "kill_after.py"), "3"]
    proc = train(tmp_path / "b", tiny_shards, *common, nproc=2, restarts=1, wrapper=killer,
                 env={"KILL_RANK": "1", "KILL_ONCE": str(marker)})
    assert marker.exists(), "rank 1 was never killed"
    assert proc.stdout.count("run demo: stages lofi") == 2, proc.stdout[-2000:]  # the first start and the restart
    assert "[lofi] resumed at epoch 0, iteration " in proc.stdout, proc.stdout[-2000:]  # not from scratch
    a = torch.load(tmp_path / "a" / "demo" / "lofi" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "demo" / "lofi" / "last.pt", weights_only=False)
    assert b["position"] == {"epoch": 2, "iteration": 0, "done": True}
    wa, wb = a["models"]["model"], b["models"]["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_stage_with_checkpoints_is_never_overwritten_silently(tiny_shards, tmp_path):
    """Re-running a stage without --resume is refused (the error names --resume auto and --overwrite) and touches
    nothing; --overwrite deletes the earlier checkpoints first, so no old step file survives beside the new ones; the
    temporary files that killed saves left in the run's folders are removed at the start, and nothing else."""
    stage = tmp_path / "demo" / "lofi"
    stage.mkdir(parents=True)
    old = {name: f"earlier run {name}".encode() for name in ("last.pt", "best.pt", "step-0009-000000.pt", "encoder.pt")}
    for name, data in old.items():
        (stage / name).write_bytes(data)
    stale = [stage / ".last.pt.k2x_9abc.tmp", stage / ".step-0000-000001.pt.abcdefgh.tmp",
             tmp_path / "demo" / ".model.pt.12345678.tmp"]
    kept = [stage / "notes.tmp", stage / ".last.pt.tmp", tmp_path / "demo" / "features" / ".index.json.abcdefgh.tmp"]
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    proc = train(tmp_path, tiny_shards, "--stage", "lofi", "lofi.epochs=1", check=False)
    assert proc.returncode == 2 and "--resume auto" in proc.stderr and "--overwrite" in proc.stderr, proc.stderr
    assert all((stage / n).read_bytes() == data for n, data in old.items())
    proc = train(tmp_path, tiny_shards, "--stage", "lofi", "lofi.epochs=1", "--overwrite")
    assert sorted(p.name for p in stage.glob("*.pt")) == ["best.pt", "encoder.pt", "last.pt", "step-0001-000000.pt"]
    assert torch.load(stage / "last.pt", weights_only=True)["position"] == {"epoch": 1, "iteration": 0, "done": True}
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert "removed 3 temporary file(s)" in proc.stdout


def test_config_error_exits_before_running(tmp_path, tiny_shards):
    proc = train(tmp_path, tiny_shards, "lofi.schedule.r_t=3", check=False)
    assert proc.returncode == 2 and "lofi.schedule.r_t" in proc.stderr
    assert not (tmp_path / "demo").exists()


def test_files_that_need_unpickling_are_refused(tiny_shards, tmp_path, capsys):
    """--resume FILE, lofi.infer --checkpoint FILE and extract_features --encoder FILE read with weights_only=True: a
    crafted file never runs its code (the marker stays absent) and the command exits 2 naming the file."""
    from lofi.infer import main as infer
    marker = tmp_path / "ran"
    evil = crafted_pt(tmp_path / "evil.pt", marker, lambda p: {"models": {"model": p}, "position": {"epoch": 0}})
    proc = train(tmp_path / "w", tiny_shards, "--stage", "lofi", "--resume", str(evil), check=False)
    assert proc.returncode == 2 and f"{evil} cannot be read safely" in proc.stderr, proc.stderr[-2000:]
    cmd = [sys.executable, str(REPO / "tools" / "extract_features.py"), "--encoder", str(evil),
           f"data.shards={tiny_shards}", f"work_dir={tmp_path / 'x'}", "data.synthetic.build=false", *TINY]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and f"--encoder: {evil} cannot be read safely" in proc.stderr, proc.stderr[-2000:]
    assert infer(["--checkpoint", str(evil), "--video", str(evil), "--out", str(tmp_path / "o")]) == 2
    assert f"--checkpoint: {evil} cannot be read safely" in capsys.readouterr().err
    assert not marker.exists()


def test_infer_on_real_video(tiny_run, shared_data, tmp_path):
    run_dir, _ = tiny_run
    video = shared_data / "videos" / "bikes.mp4"
    env = child_env(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for extra in ([], ["--window", "4"]):
        out = tmp_path / ("window" if extra else "whole")
        proc = subprocess.run([sys.executable, "-m", "lofi.infer", "--checkpoint", str(run_dir / "model.pt"),
                               "--video", str(video), "--out", str(out), *extra], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        dets = json.loads((out / "bikes.json").read_text())["results"]["bikes"]
        assert dets and all(0 <= d["segment"][0] <= d["segment"][1] for d in dets)
        assert (out / "bikes_timeline.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("head", [h for h in sorted(HEADS) if h != "gtad"])
def test_other_heads_train_resume_and_infer(head, tiny_run, tiny_shards, shared_data, tmp_path):
    """The lofi, head and eval stages with another head (from the tiny run's ACP encoder); the head stage killed
    mid-epoch and resumed equals the uninterrupted one; lofi.infer reads its model.pt."""
    run_dir, _ = tiny_run
    common = [f"model.head={head}", f"model.weights={run_dir / 'acp' / 'encoder.pt'}", "checkpoint.every_iters=2",
              "lofi.epochs=1", "head.epochs=2"]
    train(tmp_path / "a", tiny_shards, "stages=[lofi, head, eval]", *common)
    metrics = json.loads((tmp_path / "a" / "demo" / "metrics.json").read_text())
    assert 0 <= metrics["eval"]["average_mAP"] <= 1 and metrics["eval"]["baseline_average_mAP"] >= 0
    assert load_head(tmp_path / "a" / "demo" / "model.pt", torch.device("cpu"))[1]["head_name"] == head
    frozen = [*common[:1], f"model.weights={tmp_path / 'a' / 'demo' / 'lofi' / 'encoder.pt'}", *common[2:],
              f"head.cache_dir={tmp_path / 'a' / 'demo' / 'features'}"]
    killer = [str(REPO / "tests" / "kill_after.py"), "3"]
    proc = train(tmp_path / "b", tiny_shards, "--stage", "head", *frozen, check=False, wrapper=killer)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    train(tmp_path / "b", tiny_shards, "--stage", "head", "--resume", "auto", *frozen)
    a, b = (torch.load(tmp_path / r / "demo" / "head" / "last.pt", weights_only=False)["models"]["model"]
            for r in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    out = tmp_path / "infer"
    proc = subprocess.run([sys.executable, "-m", "lofi.infer", "--checkpoint", str(tmp_path / "a" / "demo" / "model.pt"),
                           "--video", str(shared_data / "videos" / "bikes.mp4"), "--out", str(out), "--window", "4"],
                          cwd=REPO, env=child_env(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dets = json.loads((out / "bikes.json").read_text())["results"]["bikes"]
    assert dets and all(0 <= d["segment"][0] <= d["segment"][1] for d in dets)


def test_probe_features_on_the_tiny_runs_cache(tiny_run, tmp_path):
    # tools/probe_features.py reads the head stage's feature cache: one snippet label per cached snippet.
    run_dir, _ = tiny_run
    env = child_env(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    out = tmp_path / "probe.json"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "probe_features.py"), str(run_dir), "--json", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())[str(run_dir)]
    assert 0 <= r["fg_auc"] <= 1 and 0 < r["fg_fraction"] < 1 and r["segments"] > 0 and 0 <= r["class_acc"] <= 1
    assert "actionness probe AUC" in proc.stdout


def test_lofi_head_eval_from_a_url_equal_the_local_run(tiny_shards, tmp_path):
    # The shards served over loopback HTTP (and through a pipe: command) train and evaluate bit for bit as the local
    # directory does; the URL run fetches the manifest once and each shard once (later epochs read the cache).
    from http_shards import serve
    common = ["stages=[lofi, head, eval]", "lofi.epochs=2", "head.epochs=1"]
    train(tmp_path / "local", tiny_shards, *common)
    with serve(tiny_shards) as server:
        train(tmp_path / "url", server.url, *common, f"data.cache_dir={tmp_path / 'cache'}")
        requests = list(server.requests)
    train(tmp_path / "pipe", f"pipe:cat {tiny_shards}/{{name}}", *common, f"data.cache_dir={tmp_path / 'cache2'}")
    assert sorted(set(requests)) == sorted(requests)  # nothing fetched twice
    assert "manifest.json" in requests and len(requests) == 1 + len(list(tiny_shards.glob("*.tar")))
    runs = [tmp_path / name / "demo" for name in ("local", "url", "pipe")]
    evals = [json.loads((run / "metrics.json").read_text())["eval"] for run in runs]
    assert evals[0] == evals[1] == evals[2]
    states = [torch.load(run / "head" / "last.pt", weights_only=False)["models"] for run in runs]
    for name, tensor in states[0]["model"].items():
        assert torch.equal(tensor, states[1]["model"][name]) and torch.equal(tensor, states[2]["model"][name]), name


def test_external_features_from_a_url(tmp_path):
    # head.features as one HDF5 file on a web server (fetched once into data.cache_dir): the same head as from disk
    import h5py
    from http_shards import serve
    rng = np.random.default_rng(0)
    database = {}
    (tmp_path / "srv").mkdir()
    with h5py.File(tmp_path / "srv" / "feats.h5", "w") as f:
        for i in range(12):
            vid, duration = f"vid{i}", float(rng.uniform(5, 10))
            f[vid] = rng.normal(size=(int(rng.integers(8, 20)), 16)).astype(np.float32)
            start = float(rng.uniform(0, duration / 2))
            database[vid] = {"subset": "training" if i < 8 else "validation", "duration": duration,
                             "annotations": [{"segment": [start, start + duration / 3], "label": f"c{i % 2}"}]}
    (tmp_path / "gt.json").write_text(json.dumps({"database": database}))
    common = ["--stage", "head", f"head.annotations={tmp_path / 'gt.json'}", "head.epochs=1", "data.shards=/nonexistent"]
    train(tmp_path / "local", "/nonexistent", *common, f"head.features={tmp_path / 'srv' / 'feats.h5'}")
    with serve(tmp_path / "srv") as server:
        train(tmp_path / "url", "/nonexistent", *common, f"head.features={server.url}/feats.h5",
              f"data.cache_dir={tmp_path / 'cache'}")
        assert server.requests == ["feats.h5"]
    local, url = (json.loads((tmp_path / run / "demo" / "metrics.json").read_text())["head"] for run in ("local", "url"))
    assert local["val_average_mAP"] == url["val_average_mAP"]


# The self-supervised pretext stages: Arrow of Time and SpeedNet, alone and beside ACP's cross-entropy. They take
# ACP's recipe (acp.epochs=2 here) unless their section sets a key; speed and acp+arrow run 1 epoch of 3 steps.
PRETEXT = ["stages=[arrow, speed, acp+arrow, acp+speed]", "acp.epochs=2", "speed.epochs=1", "acp_arrow.epochs=1",
           "checkpoint.every_iters=1"]
PRETEXT_SECTIONS = ("arrow", "speed", "acp_arrow", "acp_speed")


@pytest.fixture(scope="module")
def pretext_run(tiny_shards, tmp_path_factory):
    """The four pretext stages on the tiny clips, then lofi and head (1 epoch each) from the last one's encoder."""
    work = tmp_path_factory.mktemp("pretext")
    proc = train(work, tiny_shards, *PRETEXT, "stages=[arrow, speed, acp+arrow, acp+speed, lofi, head]",
                 "lofi.epochs=1", "head.epochs=1")
    return work / "demo", proc


def test_pretext_stages_then_lofi_and_head(pretext_run, tiny_shards):
    from lofi.engine.plots import curve_data, plot_curves
    run_dir, proc = pretext_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    validation = json.loads((tiny_shards / "clips" / "manifest.json").read_text())["splits"]["validation"]
    clips, classes = validation["num_samples"], set()  # the labels of the validation clips, read from their shards
    for name in validation["shards"]:
        with tarfile.open(tiny_shards / "clips" / name) as tar:
            classes |= {json.load(tar.extractfile(m))["label"] for m in tar if m.name.endswith(".json")}
    classes = sorted(classes)
    steps = {stage: [r for r in read_log(run_dir / "log.jsonl") if r.get("stage") == stage and r.get("kind") == "step"]
             for stage in ("arrow", "speed", "acp+arrow", "acp+speed")}
    _, per_epoch = curve_data(run_dir / "log.jsonl")
    for (stage, records), section in zip(steps.items(), PRETEXT_SECTIONS):
        state = torch.load(run_dir / section / "last.pt", weights_only=False)
        assert state["position"]["done"] and (run_dir / section / "encoder.pt").is_file(), stage
        assert len(records) == 3 * state["position"]["epoch"] and all("pretext_acc" in r for r in records), stage
        held_out = metrics[section]
        assert held_out["val_clips"] == clips and 0 <= held_out["val_pretext_accuracy"] <= 1, stage
        assert f"[{stage}] validation pretext accuracy {100 * held_out['val_pretext_accuracy']:.1f}%" in proc.stdout
        # per source class: every class of the validation clips, and the overall accuracy lies within their range
        by_class = {k.split("/", 1)[1]: v for k, v in held_out.items() if k.startswith("val_pretext_accuracy/")}
        assert sorted(by_class) == classes and all(0 <= v <= 1 for v in by_class.values()), stage
        assert min(by_class.values()) <= held_out["val_pretext_accuracy"] <= max(by_class.values()), stage
        assert f"[{stage}] validation pretext accuracy by source class: " in proc.stdout
        assert f"{classes[0]} {100 * by_class[classes[0]]:.1f}%" in proc.stdout
        combined = stage.startswith("acp+")  # ACP's cross-entropy too, and its accuracy
        assert ("val_accuracy" in held_out) == combined and all(("class_loss" in r) == combined for r in records)
        assert per_epoch[stage]["val_pretext_accuracy"] == [(state["position"]["epoch"],
                                                              held_out["val_pretext_accuracy"])]
    assert [len(r) for r in steps.values()] == [6, 3, 3, 6]
    assert "no labels" in proc.stdout and "beside ACP's cross-entropy over 3 classes" in proc.stdout
    assert f"encoder from {run_dir / 'acp_speed' / 'encoder.pt'}" in proc.stdout  # lofi: the newest clip encoder
    assert (run_dir / "model.pt").is_file() and 0 <= metrics["head"]["val_average_mAP"] <= 1
    assert plot_curves(run_dir / "log.jsonl", run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_pretext_resume_mid_epoch_is_exact(pretext_run, tiny_shards, tmp_path):
    """The pretext stages killed mid-epoch and resumed (--resume auto) end with the weights of the uninterrupted
    run: arrow killed in its second epoch, then acp+speed in its second epoch after the others ran."""
    run_dir, _ = pretext_run
    killed = [train(tmp_path, tiny_shards, *PRETEXT, *resume, check=False,
                    wrapper=[str(REPO / "tests" / "kill_after.py"), steps])
              for steps, resume in (("5", []), ("13", ["--resume", "auto"]))]
    assert [p.returncode for p in killed] == [-signal.SIGKILL] * 2, killed[-1].stderr[-2000:]
    done = train(tmp_path, tiny_shards, *PRETEXT, "--resume", "auto")
    # killed after step 5, the last checkpoint is after step 4: epoch 1, iteration 1 (3 steps per epoch)
    assert "[arrow] resumed at epoch 1, iteration 1" in killed[1].stdout
    assert "[acp+speed] resumed at epoch 1, iteration 1" in done.stdout  # 2 + 3 + 3 + 5 steps into the second run
    for section in PRETEXT_SECTIONS:
        a = torch.load(run_dir / section / "last.pt", weights_only=False)["models"]["model"]
        b = torch.load(tmp_path / "demo" / section / "last.pt", weights_only=False)["models"]["model"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), section
