"""G-TAD loss (REFERENCE §2.2): ``L = L_tem + 10·L_reg + L_cls``, statistics over the whole batch.

Deviations from G-TAD, all only where G-TAD returns NaN: a term with no positives (or no negatives, or no high-IoU
regression cells) contributes 0 instead. Regression cells are sampled with a ``torch.Generator`` (never NumPy's global
state), so a seeded generator makes the loss reproducible.
"""
from typing import Dict, Optional

import torch

from .gtad import valid_mask

EPS = 1e-6


def balanced_bce(pred: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Ratio-balanced BCE: ``−0.5·mean_pos log(p+ε) − 0.5·mean_neg log(1−p+ε)``.

    Equal to G-TAD's ``w_pos = 0.5·N/N_pos``, ``w_neg = 0.5·N/N_neg`` weighting averaged over N = N_pos + N_neg entries.
    An empty set contributes 0.
    """
    pos = positive.to(pred.dtype)
    neg = negative.to(pred.dtype)
    loss_pos = (torch.log(pred + EPS) * pos).sum() / pos.sum().clamp(min=1)
    loss_neg = (torch.log(1.0 - pred + EPS) * neg).sum() / neg.sum().clamp(min=1)
    return -0.5 * (loss_pos + loss_neg)


def sampled_l2(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """G-TAD's regression loss: all high cells (IoU > 0.7), mid (0.3, 0.7] and low (0, 0.3] cells kept with probability
    N_high/N_mid and N_high/N_low; ``0.5·Σ w(ŷ−g)² / Σ w``. IoU = 0 cells are never used. 0 when N_high = 0."""
    high = (gt > 0.7) & mask
    mid = (gt > 0.3) & (gt <= 0.7) & mask
    low = (gt > 0.0) & (gt <= 0.3) & mask
    n_high = high.sum()
    device = generator.device if generator is not None else pred.device
    u = torch.rand(gt.shape, generator=generator, device=device).to(pred.device)
    keep_mid = mid & (u < n_high / mid.sum().clamp(min=1))
    keep_low = low & (u < n_high / low.sum().clamp(min=1))
    w = (high | keep_mid | keep_low).to(pred.dtype)
    return 0.5 * (w * (pred - gt) ** 2).sum() / w.sum().clamp(min=1)


def gtad_loss(pred: Dict[str, torch.Tensor], targets: Dict[str, torch.Tensor],
              generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    """pred: GTAD output (probabilities; maps (B, 2, L, L) [d, s], ch0 IoU regression, ch1 classification);
    targets: ``build_targets`` output. Returns {"loss", "tem", "reg", "cls"} (scalars, float32)."""
    start, end, maps = pred["start"].float(), pred["end"].float(), pred["maps"].float()
    device = maps.device
    gt_start, gt_end, gt_iou = (targets[k].to(device, torch.float32) for k in ("start", "end", "iou_map"))
    L = maps.shape[-1]
    if gt_iou.shape != maps[:, 0].shape or gt_start.shape != start.shape:
        raise ValueError(f"gtad_loss: targets {tuple(gt_iou.shape)} do not match the maps {tuple(maps.shape)}")
    mask = valid_mask(L, device).expand_as(gt_iou)
    tem = (balanced_bce(start, gt_start > 0.5, gt_start <= 0.5)
           + balanced_bce(end, gt_end > 0.5, gt_end <= 0.5))
    reg = sampled_l2(maps[:, 0], gt_iou, mask, generator)
    cls = balanced_bce(maps[:, 1], (gt_iou > 0.9) & mask, (gt_iou <= 0.9) & mask)
    return {"loss": tem + 10.0 * reg + cls, "tem": tem, "reg": reg, "cls": cls}
