"""A tiny stand-in stage for the engine tests: a small MLP with dropout on random regression data, driven by
lofi.engine.loop.Trainer exactly as the real stages are. Runs single-process or under torchrun (gloo).

    python tests/toy_train.py OUT [--kill-after N] [--nan-at E:I:RANK] [--accum K] [--epochs E]

Writes OUT/rank{r}.pt (final parameters and skipped-step count); checkpoints go to OUT/ckpt (resumed when present).
"""
import argparse
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lofi.engine import distributed as D  # noqa: E402
from lofi.engine.checkpoint import Checkpointer  # noqa: E402
from lofi.engine.logger import RunLogger  # noqa: E402
from lofi.engine.loop import Trainer  # noqa: E402


class ToyLoader:
    """Per epoch: a permutation drawn from the global torch RNG (so only reseeding makes it reproducible)."""

    def __init__(self, x, y, batch, rank, world, start=0):
        self.x, self.y, self.batch, self.rank, self.world, self.start = x, y, batch, rank, world, start

    def __len__(self):
        return len(self.x) // (self.batch * self.world)

    def __iter__(self):
        order = torch.randperm(len(self.x))
        for i in range(self.start, len(self)):
            idx = order[(i * self.world + self.rank) * self.batch:(i * self.world + self.rank + 1) * self.batch]
            yield {"x": self.x[idx], "y": self.y[idx]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--kill-after", type=int, default=0, help="SIGKILL this process after N optimizer steps")
    p.add_argument("--nan-at", default="", help="E:I:RANK: a NaN loss at epoch E, iteration I on rank RANK")
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--every", type=int, default=2)
    args = p.parse_args()
    out = Path(args.out)
    info = D.init("cpu")
    torch.manual_seed(0)
    x = torch.randn(96, 8)
    y = x.sum(1, keepdim=True).sin()
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))
    ddp = D.wrap_ddp(model, info)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)
    nan_at = tuple(int(v) for v in args.nan_at.split(":")) if args.nan_at else None
    steps = {"n": 0}

    def step_fn(batch, gen):
        noise = torch.rand(batch["y"].shape, generator=gen) * 0.01
        loss = ((ddp(batch["x"]) - batch["y"] - noise) ** 2).mean()
        e, i = trainer.state.epoch, steps["i"]
        if nan_at and (e, i, info.rank) == nan_at:
            loss = loss * float("nan")
        return loss, {"mse": float(loss.detach())}

    def loader_fn(epoch, start):
        trainer.state.epoch = epoch
        return ToyLoader(x, y, 4, info.rank, info.world_size, start)

    ckpt = Checkpointer(out / "ckpt", keep=2, enabled=info.is_main)
    trainer = Trainer(stage="toy", modules={"model": ddp}, step_fn=step_fn, loader_fn=loader_fn, optimizer=opt,
                      scheduler=sched, epochs=args.epochs, info=info, checkpointer=ckpt,
                      logger=RunLogger(out, enabled=info.is_main, tensorboard=False, progress=False), seed=7,
                      accum_steps=args.accum, every_iters=args.every, log_every=3, max_bad_steps=2)
    D.barrier()
    if ckpt.latest() is not None:
        trainer.resume(torch.load(ckpt.latest(), weights_only=False))
    original = trainer._step

    def counted_step(it, epoch, iteration):
        steps["i"] = iteration
        result = original(it, epoch, iteration)
        steps["n"] += 1
        if args.kill_after and steps["n"] == args.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    trainer._step = counted_step
    trainer.fit()
    torch.save({"params": {k: v.clone() for k, v in model.state_dict().items()}, "skipped": trainer.guard.skipped},
               out / f"rank{info.rank}.pt")
    D.shutdown()


if __name__ == "__main__":
    main()
    D.exit_process(0)
