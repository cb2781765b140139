"""The shared training loop on a tiny stand-in stage (tests/toy_train.py): exact resume after SIGKILL, the NaN
guard (single process and collective under 2-process gloo DDP), gradient accumulation, and the batch split; and the
G-TAD loss with global-batch statistics on a tiny head stage (tests/toy_gtad.py) under DDP and accumulation."""
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lofi.engine import distributed as D
from lofi.engine.loop import BadLossError, NanGuard
from subproc import child_env

REPO = Path(__file__).resolve().parents[1]
TOY = str(REPO / "tests" / "toy_train.py")
TOY_GTAD = str(REPO / "tests" / "toy_gtad.py")


def run_toy(out, *args, torchrun=0, check=True, script=TOY):
    env = child_env(OMP_NUM_THREADS="1")
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(torchrun),
               "--master_port", "0", "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0", script, str(out),
               *args]
    else:
        cmd = [sys.executable, script, str(out), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def load_params(out, rank=0):
    return torch.load(Path(out) / f"rank{rank}.pt")


def assert_equal_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_after_sigkill_is_exact(tmp_path):
    run_toy(tmp_path / "full")
    killed = run_toy(tmp_path / "resumed", "--kill-after", "30", check=False)  # 24 steps per epoch
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "resumed" / "rank0.pt").exists()
    names = sorted(p.name for p in (tmp_path / "resumed" / "ckpt").iterdir())
    assert "last.pt" in names and len([n for n in names if n.startswith("step-")]) == 2  # retention keep=2
    assert not [n for n in names if n.endswith(".tmp")]
    pos = torch.load(tmp_path / "resumed" / "ckpt" / "last.pt", weights_only=False)["position"]
    assert (pos["epoch"], pos["iteration"]) == (1, 4)  # the newest checkpoint is mid-epoch
    run_toy(tmp_path / "resumed")
    assert_equal_params(load_params(tmp_path / "full")["params"], load_params(tmp_path / "resumed")["params"])


def test_nan_guard_counts_and_aborts():
    guard = NanGuard(max_bad=2)
    assert not guard.is_bad(torch.tensor(1.0))
    assert guard.is_bad(torch.tensor(float("inf")))
    with pytest.warns(RuntimeWarning, match="step skipped"):
        guard.record(True, "here")
    guard.record(False, "here")
    assert guard.consecutive == 0 and guard.skipped == 1
    with pytest.warns(RuntimeWarning):
        guard.record(True, "here")
    with pytest.raises(BadLossError, match="2 consecutive steps"), pytest.warns(RuntimeWarning):
        guard.record(True, "here")


def test_nan_step_is_skipped_single_process(tmp_path):
    run_toy(tmp_path / "nan", "--epochs", "1", "--nan-at", "0:2:0")
    assert load_params(tmp_path / "nan")["skipped"] == 1
    log = (tmp_path / "nan" / "log.jsonl").read_text()
    assert '"kind": "step"' in log


def test_ddp_two_processes_agree_and_skip_nan_together(tmp_path):
    # 2-process gloo DDP, with gradient accumulation, and a NaN loss on rank 1 only at epoch 0 iteration 1.
    run_toy(tmp_path / "ddp", "--epochs", "2", "--accum", "2", "--nan-at", "0:1:1", torchrun=2)
    r0, r1 = load_params(tmp_path / "ddp", 0), load_params(tmp_path / "ddp", 1)
    assert_equal_params(r0["params"], r1["params"])
    assert r0["skipped"] == r1["skipped"] == 1
    assert all(torch.isfinite(v).all() for v in r0["params"].values())


def logged_steps(out):
    rows = [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in ("loss", "tem", "reg", "cls")} for r in rows if r["kind"] == "step"]


def assert_same_training(a, b, rel=1e-12):
    """Equal logged losses and per-step gradients (float64, up to summation order)."""
    steps_a, steps_b = logged_steps(a), logged_steps(b)
    assert len(steps_a) == len(steps_b) == 4  # 2 epochs × 2 steps of the global batch 8
    for x, y in zip(steps_a, steps_b):
        assert x == pytest.approx(y, rel=rel, abs=1e-15)
    ga, gb = load_params(a)["grads"], load_params(b)["grads"]
    assert len(ga) == len(gb) == 4
    for x, y in zip(ga, gb):
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=rel, atol=1e-14)


def test_global_batch_loss_two_processes_and_accumulation_equal_one_batch(tmp_path):
    # Global batch 8 of 16 videos with 0-3 segments each: one process × 8 videos is G-TAD's loss on the batch; 2 gloo
    # processes × 4, 1 process × 4 × 2 accumulated, and 2 × 2 × 2 give the same losses and gradients at every step.
    run_toy(tmp_path / "one", "--batch", "8", script=TOY_GTAD)
    run_toy(tmp_path / "ddp", "--batch", "4", torchrun=2, script=TOY_GTAD)
    run_toy(tmp_path / "accum", "--batch", "4", "--accum", "2", script=TOY_GTAD)
    run_toy(tmp_path / "both", "--batch", "2", "--accum", "2", torchrun=2, script=TOY_GTAD)
    for other in ("ddp", "accum", "both"):
        assert_same_training(tmp_path / "one", tmp_path / other)
    ddp = [load_params(tmp_path / "ddp", r)["params"] for r in (0, 1)]
    assert_equal_params(*ddp)
    # Per-process statistics (the plain loss on each process's 4 videos) give another loss and other gradients.
    run_toy(tmp_path / "local", "--batch", "4", "--stats-per-batch", torchrun=2, script=TOY_GTAD)
    with pytest.raises(AssertionError):
        assert_same_training(tmp_path / "one", tmp_path / "local", rel=1e-6)


def test_split_batch():
    assert D.split_batch(16, 4) == (4, 1)
    assert D.split_batch(16, 1, max_per_process=5) == (4, 4)
    assert D.split_batch(16, 2, max_per_process=3) == (2, 4)
    assert D.split_batch(16, 1, max_per_process=0) == (1, 16)
    with pytest.raises(ValueError, match="does not divide by the world size 3"):
        D.split_batch(16, 3)


def test_auto_micro_batch_scales_with_budget():
    from lofi.engine.memory import auto_micro_batch, per_video_bytes
    from lofi.models.tal import EndToEnd
    from lofi.fidelity import Fidelity
    from lofi.models import GTAD, build_encoder
    torch.manual_seed(0)
    enc = build_encoder("tsm_r18")
    model = EndToEnd(enc, GTAD(enc.out_dim))
    small, large = Fidelity(2, 2, 32, 32), Fidelity(4, 2, 32, 32)
    per_small, per_large = (per_video_bytes(model, f, torch.device("cpu")) for f in (small, large))
    assert 0 < per_small < per_large  # linear in L for the encoder, plus the head
    params = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    budget_gib = (params + 10 * per_large) / 2**30
    assert auto_micro_batch(model, [small, large], budget_gib, torch.device("cpu")) == 10
    assert auto_micro_batch(model, [large], 1e-6, torch.device("cpu")) == 1


def test_exit_process_skips_teardown_only_under_torchrun():
    # Under torchrun a worker leaves with os._exit after flushing its output (no interpreter teardown racing the gloo
    # threads that a DDP model keeps alive); a single process exits normally.
    code = ("import atexit, sys; from lofi.engine import distributed as D; "
            "atexit.register(lambda: print('teardown')); print('done', end=''); D.exit_process(3)")
    for world, teardown in (("2", False), ("1", True)):
        proc = subprocess.run([sys.executable, "-c", code], env=child_env(WORLD_SIZE=world), capture_output=True,
                              text=True)
        assert proc.returncode == 3 and proc.stdout.startswith("done")
        assert ("teardown" in proc.stdout) == teardown


def test_process_group_timeout_comes_from_the_config(monkeypatch, tmp_path):
    # dist.timeout_s reaches init_process_group: a collective waiting on a hung rank fails after it, not after 30 min.
    import datetime
    import lofi.train
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    monkeypatch.setattr(D.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(D.dist, "init_process_group", lambda *a, **k: calls.append(k))
    D.init("cpu", timeout_s=7.5)
    assert calls[-1]["timeout"] == datetime.timedelta(seconds=7.5)
    D.init("cpu")
    assert calls[-1]["timeout"] == datetime.timedelta(seconds=600)

    class Stop(Exception):
        pass

    def fake_init(device, timeout_s):
        calls.append(timeout_s)
        raise Stop
    monkeypatch.setattr(lofi.train.D, "init", fake_init)
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "training-000000.tar").write_bytes(b"")  # validation only checks that the subset has shards
    with pytest.raises(Stop):
        lofi.train.main(["--stage", "lofi", f"data.shards={shards}", "data.synthetic.build=false", "dist.timeout_s=42",
                         f"work_dir={tmp_path}/runs"])
    assert calls[-1] == 42.0


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_auto_micro_batch_leaves_the_model_and_rng_untouched(device):
    # The probe runs train-mode forwards on random frames: without care it moves every BatchNorm buffer of a
    # pretrained encoder and draws from the global RNG before training starts.
    from lofi.engine.memory import auto_micro_batch
    from lofi.models.tal import EndToEnd
    from lofi.fidelity import Fidelity
    from lofi.models import GTAD, build_encoder
    torch.manual_seed(0)
    enc = build_encoder("tsm_r18")
    model = EndToEnd(enc, GTAD(enc.out_dim)).to(device).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(k.endswith("running_mean") for k in before)
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state() if device == "cuda" else None
    auto_micro_batch(model, [Fidelity(2, 2, 32, 32)], 1.0, torch.device(device))
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    assert torch.equal(torch.get_rng_state(), rng)
    assert cuda_rng is None or torch.equal(torch.cuda.get_rng_state(), cuda_rng)
    assert not model.training and all(p.grad is None for p in model.parameters())
