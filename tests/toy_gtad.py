"""A tiny head stage for the global-batch loss tests: a float64 1-D conv "G-TAD" on random snippet features of
videos with random annotations (some with none), trained by lofi.engine.loop.Trainer over FeatureLoader with the
G-TAD loss of lofi.engine.global_loss, as the head stage is. Runs single-process or under torchrun (gloo).

    python tests/toy_gtad.py OUT --batch B [--accum K] [--stats-per-batch]

``--batch`` is the per-process micro-batch; the global batch is B · accum · world size. ``--stats-per-batch`` computes
the loss statistics per micro-batch instead (plain ``gtad_loss``). Writes OUT/rank{r}.pt: the gradients of every
optimizer step (after DDP's average) and the final parameters; rank 0's OUT/log.jsonl has the logged loss of every
step.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lofi.engine import distributed as D  # noqa: E402
from lofi.engine.checkpoint import Checkpointer  # noqa: E402
from lofi.engine.feature_cache import FeatureLoader  # noqa: E402
from lofi.engine.global_loss import GlobalBatchLoss  # noqa: E402
from lofi.engine.logger import RunLogger  # noqa: E402
from lofi.engine.loop import Trainer  # noqa: E402
from lofi.models import build_targets, gtad_loss, valid_mask  # noqa: E402
from lofi.models.map_head import ProposalMapHead  # noqa: E402

VIDEOS, C, L = 16, 5, 8


class TinyGTAD(ProposalMapHead):
    """(B, C, L) → G-TAD outputs: start/end (B, L) and maps (B, 2, L, L) [d, s] from one 1-D convolution."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(C, 6, 3, padding=1)

    def forward(self, x):
        h = self.conv(x)
        maps = torch.sigmoid(h[:, 2:4, None, :] + h[:, 4:6, :, None]) * valid_mask(x.shape[-1], x.device)
        return {"start": torch.sigmoid(h[:, 0]), "end": torch.sigmoid(h[:, 1]), "maps": maps}


def toy_entries():
    g = torch.Generator().manual_seed(11)
    entries = {}
    for i in range(VIDEOS):
        duration = 20.0 + 40.0 * float(torch.rand(1, generator=g))
        n = i % 4  # 0 to 3 segments: the positive/negative ratios differ between videos
        starts = torch.rand(n, generator=g) * duration * 0.7
        lengths = torch.rand(n, generator=g) * duration * 0.5 + 1.0
        anns = [{"segment": [float(s), float(min(s + d, duration))], "label": "a", "label_id": 0}
                for s, d in zip(starts, lengths)]
        entries[f"v{i:02d}"] = (torch.randn(C, L, generator=g, dtype=torch.float64),
                                {"id": f"v{i:02d}", "duration": duration, "annotations": anns})
    return entries


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--stats-per-batch", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    info = D.init("cpu")
    entries = toy_entries()
    torch.manual_seed(0)
    model = TinyGTAD().double()
    ddp = D.wrap_ddp(model, info)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    grads = []
    opt.register_step_pre_hook(lambda *_: grads.append({n: q.grad.clone() for n, q in model.named_parameters()}))
    global_loss = GlobalBatchLoss(info, args.accum, lambda batch: batch["features"].shape[-1], model)

    def step_fn(batch, gen):
        pred = ddp(batch["features"])
        if args.stats_per_batch:
            losses = gtad_loss(pred, build_targets(batch["meta"], L), generator=gen)
        else:
            losses = global_loss(pred, batch)
        return losses["loss"], {k: float(losses[k].detach()) for k in ("tem", "reg", "cls")}

    trainer = Trainer(stage="toy", modules={"model": ddp}, step_fn=step_fn,
                      loader_fn=lambda e, start: FeatureLoader(entries, args.batch, True, info.rank, info.world_size,
                                                               seed=3, epoch=e, start=start),
                      optimizer=opt, scheduler=torch.optim.lr_scheduler.StepLR(opt, 1, 1.0), epochs=2, info=info,
                      checkpointer=Checkpointer(out / "ckpt", keep=1, enabled=info.is_main),
                      logger=RunLogger(out, enabled=info.is_main, tensorboard=False, progress=False), seed=5,
                      accum_steps=args.accum, log_every=1,
                      prepare=None if args.stats_per_batch else global_loss.prepare)
    trainer.fit()
    torch.save({"grads": grads, "params": {k: v.clone() for k, v in model.state_dict().items()}},
               out / f"rank{info.rank}.pt")
    D.shutdown()


if __name__ == "__main__":
    main()
    D.exit_process(0)
