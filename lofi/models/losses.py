"""G-TAD's loss: ``L = L_tem + 10·L_reg + L_cls``, statistics over the whole batch.

The statistics are counts: positives and negatives of each balanced BCE, the high/mid/low IoU cells that set the
regression sampling ratios, and the sampled cells. By default they are this batch's; ``batch_statistics`` computes
them over several micro-batches and processes (the global batch of a step), and ``gtad_loss(..., counts=...)`` then
returns this micro-batch's share of the global-batch loss (its sums over those global counts), so the shares of all
micro-batches of all processes add up to the loss of the global batch, as G-TAD computes it on one device.

Deviations from G-TAD, all only where G-TAD returns NaN: a term with no positives (or no negatives, or no high-IoU
regression cells) contributes 0 instead. Regression cells are sampled with uniform draws from a ``torch.Generator``
(never NumPy's global state) or given by the caller, so a seeded generator makes the loss reproducible.
"""
from typing import Callable, Dict, Optional, Sequence

import torch

from .proposal_map import valid_mask

EPS = 1e-6
# The counts of G-TAD's loss statistics (int64); "kept" (the sampled regression cells) depends on the others.
COUNTS = ("start_pos", "start_neg", "end_pos", "end_neg", "cls_pos", "cls_neg", "high", "mid", "low")


def balanced_bce(pred: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                 n_pos: Optional[torch.Tensor] = None, n_neg: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Ratio-balanced BCE: ``−0.5·Σ_pos log(p+ε) / N_pos − 0.5·Σ_neg log(1−p+ε) / N_neg``.

    Equal to G-TAD's ``w_pos = 0.5·N/N_pos``, ``w_neg = 0.5·N/N_neg`` weighting averaged over N = N_pos + N_neg entries.
    ``n_pos``/``n_neg`` default to this batch's counts (pass global-batch counts for a share of a larger batch).
    An empty set contributes 0.
    """
    pos = positive.to(pred.dtype)
    neg = negative.to(pred.dtype)
    n_pos = positive.sum() if n_pos is None else n_pos
    n_neg = negative.sum() if n_neg is None else n_neg
    loss_pos = (torch.log(pred + EPS) * pos).sum() / n_pos.clamp(min=1)
    loss_neg = (torch.log(1.0 - pred + EPS) * neg).sum() / n_neg.clamp(min=1)
    return -0.5 * (loss_pos + loss_neg)


def _regression_sets(gt: torch.Tensor, mask: torch.Tensor) -> Dict[str, torch.Tensor]:
    """IoU map (B, L, L) and valid mask → high (> 0.7), mid (0.3, 0.7] and low (0, 0.3] cells."""
    return {"high": (gt > 0.7) & mask, "mid": (gt > 0.3) & (gt <= 0.7) & mask, "low": (gt > 0.0) & (gt <= 0.3) & mask}


def _sets(targets: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``build_targets`` output → the boolean masks named by COUNTS (start/end (B, L), the others (B, L, L))."""
    gt_start, gt_end, gt_iou = targets["start"], targets["end"], targets["iou_map"]
    mask = valid_mask(gt_iou.shape[-1], gt_iou.device).expand_as(gt_iou)
    return {"start_pos": gt_start > 0.5, "start_neg": gt_start <= 0.5,
            "end_pos": gt_end > 0.5, "end_neg": gt_end <= 0.5,
            "cls_pos": (gt_iou > 0.9) & mask, "cls_neg": (gt_iou <= 0.9) & mask, **_regression_sets(gt_iou, mask)}


def _sampled(sets: Dict[str, torch.Tensor], draws: torch.Tensor, counts: Dict[str, torch.Tensor]) -> torch.Tensor:
    """The regression cells used: all high cells, a mid (low) cell where its draw < N_high/N_mid (N_high/N_low)."""
    n_high = counts["high"]
    keep_mid = sets["mid"] & (draws < n_high / counts["mid"].clamp(min=1))
    keep_low = sets["low"] & (draws < n_high / counts["low"].clamp(min=1))
    return sets["high"] | keep_mid | keep_low


def batch_statistics(targets: Sequence[Dict[str, torch.Tensor]], draws: Sequence[torch.Tensor],
                     all_reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> Dict[str, torch.Tensor]:
    """G-TAD's loss statistics over several micro-batches: ``targets`` (``build_targets`` outputs) with their
    regression ``draws`` (uniform [0, 1), each the shape of its iou_map), summed over processes by ``all_reduce``
    (an element-wise sum of an int64 tensor, called twice; identity for one process). → {name of COUNTS and "kept":
    int64 scalar}."""
    sets = [_sets(t) for t in targets]
    totals = all_reduce(torch.stack([torch.stack([s[k].sum() for k in COUNTS]) for s in sets]).sum(0))
    counts = dict(zip(COUNTS, totals))
    kept = sum(_sampled(s, u.to(s["high"].device), counts).sum() for s, u in zip(sets, draws))
    counts["kept"] = all_reduce(kept.reshape(1))[0]
    return counts


def sampled_l2(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """G-TAD's regression loss on one batch: all high cells (IoU > 0.7), mid (0.3, 0.7] and low (0, 0.3] cells kept
    with probability N_high/N_mid and N_high/N_low; ``0.5·Σ w(ŷ−g)² / Σ w``. IoU = 0 cells are never used. 0 when
    N_high = 0."""
    device = generator.device if generator is not None else pred.device
    u = torch.rand(gt.shape, generator=generator, device=device).to(pred.device)
    sets = _regression_sets(gt, mask)
    w = _sampled(sets, u, {k: v.sum() for k, v in sets.items()})
    return _weighted_l2(pred, gt, w, w.sum())


def _weighted_l2(pred: torch.Tensor, gt: torch.Tensor, w: torch.Tensor, n_kept: torch.Tensor) -> torch.Tensor:
    return 0.5 * (w.to(pred.dtype) * (pred - gt) ** 2).sum() / n_kept.clamp(min=1)


def gtad_loss(pred: Dict[str, torch.Tensor], targets: Dict[str, torch.Tensor],
              generator: Optional[torch.Generator] = None, *, draws: Optional[torch.Tensor] = None,
              counts: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """pred: GTAD output (probabilities; maps (B, 2, L, L) [d, s], ch0 IoU regression, ch1 classification);
    targets: ``build_targets`` output. ``draws``: the regression sampling's uniform draws (B, L, L) (default: drawn
    from ``generator``); ``counts``: ``batch_statistics`` of the global batch this batch belongs to (default: this
    batch's), which makes the result this batch's share of the global-batch loss. Returns {"loss", "tem", "reg",
    "cls"} (scalars, float32, or float64 for float64 predictions)."""
    dtype = torch.promote_types(pred["maps"].dtype, torch.float32)
    start, end, maps = pred["start"].to(dtype), pred["end"].to(dtype), pred["maps"].to(dtype)
    device = maps.device
    gt = {k: targets[k].to(device, dtype) for k in ("start", "end", "iou_map")}
    if gt["iou_map"].shape != maps[:, 0].shape or gt["start"].shape != start.shape:
        raise ValueError(f"gtad_loss: targets {tuple(gt['iou_map'].shape)} do not match the maps {tuple(maps.shape)}")
    if draws is None:
        gen_device = generator.device if generator is not None else device
        draws = torch.rand(gt["iou_map"].shape, generator=generator, device=gen_device)
    draws = draws.to(device)
    sets = _sets(gt)
    if counts is None:
        counts = batch_statistics([gt], [draws])
    tem = (balanced_bce(start, sets["start_pos"], sets["start_neg"], counts["start_pos"], counts["start_neg"])
           + balanced_bce(end, sets["end_pos"], sets["end_neg"], counts["end_pos"], counts["end_neg"]))
    reg = _weighted_l2(maps[:, 0], gt["iou_map"], _sampled(sets, draws, counts), counts["kept"])
    cls = balanced_bce(maps[:, 1], sets["cls_pos"], sets["cls_neg"], counts["cls_pos"], counts["cls_neg"])
    return {"loss": tem + 10.0 * reg + cls, "tem": tem, "reg": reg, "cls": cls}
