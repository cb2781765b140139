"""ActionFormer head (Zhang, Wu and Li, ECCV 2022), class-agnostic, in the ActivityNet configuration of the public
release happyharrycn/actionformer_release (``configs/anet_tsp.yaml`` over ``libs/core/config.py``), for any number
of snippets L; module and parameter names and shapes as the release's, so a state dict maps one to one (plus the
``loss_normalizer`` buffer).

Network: features (B, C, L), zero-padded to Lp = L rounded up to the largest stride 2^(levels − 1) (the local
attention's band mask needs no more) and masked there → ``backbone`` (lofi.models.conv_transformer: a pyramid of
levels l = 0..5 at strides s = 2^l) → ``neck`` (identity + a layer norm per level) → ``cls_head`` and ``reg_head``
(shared over the levels; the regression has a learnable ``scale`` per level and a ReLU, so distances are ≥ 0).

Points and time: point i of level l sits at the centre of snippet i·s, i.e. at p = i·s + 0.5 snippets (normalized
time p / L), as the release's points (its feature grid's t is the centre of feature t), and where the level's
features are centred (each downsampling has kernel 3 at stride 2, centred on input 2i); it is valid iff i·s < L.
A point's regression targets are the distances (p − start, end − p) to a segment, in units of s snippets: the point
predicts [p − o₀·s, p + o₁·s] snippets, clipped to [0, L].

Outputs over the P = Σ_l Lp / 2^l points, level by level: {"cls_logits": (B, P), "offsets": (B, P, 2) ≥ 0,
"valid": (B, P) bool}; padded points hold 0 and valid False.

Targets (the release's rules, in snippets, annotations normalized by lofi.models.targets.normalized_segments × L): a
point is positive for a segment when it lies strictly inside the segment's centre region [max(c − r·s, start),
min(c + r·s, end)] (c the segment's centre, r = ``center_sample_radius``) and the larger of its two distances lies in
its level's ``regression_range`` (snippets, both ends inclusive); among several such segments, the shortest wins
(the first of equal lengths). Zero-length segments have no positives.

Loss (the release's): a sigmoid focal loss (``focal_alpha``, ``focal_gamma``) summed over the valid points,
against labels smoothed to y·(1 − ε) + ε/2 (ε = ``label_smoothing``), plus ``loss_weight`` × the 1-D DIoU loss
summed over the positives, both divided by the normalizer: in training a moving average of the global batch's
positive count (the ``loss_normalizer`` buffer, initialized to ``init_loss_norm``, updated once per optimizer step
in ``statistics`` with momentum ``loss_norm_momentum`` and max(positives, 1)); outside training the batch's own
max(positives, 1), so a validation loss depends on the model only.
"""
import math
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from .conv_transformer import ChannelNorm, ConvTransformer, MaskedConv1d
from .suppression import suppress
from .tal_head import Counts, Outputs, Reduce, TALHead, Targets, no_reduce
from .targets import normalized_segments

# The release's ActivityNet regression ranges per level, in snippets (its feature-grid units).
ANET_REGRESSION_RANGE = [[0.0, 4.0], [4.0, 8.0], [8.0, 16.0], [16.0, 32.0], [32.0, 64.0], [64.0, 10000.0]]


class IdentityNeck(nn.Module):
    """The identity FPN: a layer norm per level (``fpn_norms``); padded positions stay 0."""

    def __init__(self, dim: int, levels: int):
        super().__init__()
        self.fpn_norms = nn.ModuleList(ChannelNorm(dim) for _ in range(levels))

    def forward(self, feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        return [norm(x) * m for norm, x, m in zip(self.fpn_norms, feats, masks)]


class ConvStack(nn.Module):
    """``num_layers`` − 1 × [masked conv (kernel k, no bias), layer norm, ReLU] (``head``, ``norm``), shared over
    the levels; a subclass adds the output conv."""

    def __init__(self, in_dim: int, dim: int, num_layers: int, kernel_size: int):
        super().__init__()
        self.head = nn.ModuleList(MaskedConv1d(in_dim if i == 0 else dim, dim, kernel_size, bias=False)
                                  for i in range(num_layers - 1))
        self.norm = nn.ModuleList(ChannelNorm(dim) for _ in range(num_layers - 1))

    def trunk(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.head, self.norm):
            x = F.relu(norm(conv(x, mask)[0])) * mask
        return x


class ClsHead(ConvStack):
    """Per level (B, C, T), mask → logits (B, 1, T); ``cls_head``'s bias starts at −log((1 − π)/π), π the prior
    probability."""

    def __init__(self, in_dim: int, dim: int, num_layers: int, kernel_size: int, prior_prob: float):
        super().__init__(in_dim, dim, num_layers, kernel_size)
        self.cls_head = MaskedConv1d(dim, 1, kernel_size)
        nn.init.constant_(self.cls_head.conv.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.cls_head(self.trunk(x, mask), mask)[0]


class Scale(nn.Module):
    """x → ``scale``·x, ``scale`` a learnable scalar initialized to 1."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class RegHead(ConvStack):
    """Level l (B, C, T), mask → distances (B, 2, T) = ReLU(``scale[l]``·``offset_head``(·)), in units of the
    level's stride."""

    def __init__(self, in_dim: int, dim: int, num_layers: int, kernel_size: int, levels: int):
        super().__init__(in_dim, dim, num_layers, kernel_size)
        self.scale = nn.ModuleList(Scale() for _ in range(levels))
        self.offset_head = MaskedConv1d(dim, 2, kernel_size)
        nn.init.zeros_(self.offset_head.conv.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, level: int) -> torch.Tensor:
        return F.relu(self.scale[level](self.offset_head(self.trunk(x, mask), mask)[0]))


def diou_loss_1d(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Distance-IoU loss (Zheng et al., AAAI 2020) of 1-D segments given by their distances (N, 2) ≥ 0 (left, right)
    from a common point → (N,): 1 − IoU + (centre distance / enclosing length)²."""
    lp, rp, lg, rg = pred[:, 0], pred[:, 1], target[:, 0], target[:, 1]
    inter = torch.minimum(lp, lg) + torch.minimum(rp, rg)
    union = lp + rp + lg + rg - inter
    enclosing = torch.maximum(lp, lg) + torch.maximum(rp, rg)
    centre_gap = 0.5 * ((rp - lp) - (rg - lg))
    return 1 - inter / union.clamp(min=eps) + (centre_gap / enclosing.clamp(min=eps)) ** 2


class ActionFormer(TALHead):
    """ActionFormer on ``in_dim``-channel snippet features; the keywords are ActionFormerConfig's (lofi.config), with
    the release's names where it has them; defaults: the release's ActivityNet configuration.

    ``pre_nms_top_k`` and ``min_score``: ``proposals`` keeps per level the ``pre_nms_top_k`` best points whose score
    (sigmoid of the logit) exceeds ``min_score``.
    """

    loss_terms = ("cls", "reg")

    def __init__(self, in_dim: int, backbone_arch: Sequence[int] = (2, 2, 5), n_head: int = 4,
                 n_mha_win_size: Sequence[int] = (25, 25, 25, 25, 25, -1), embd_kernel_size: int = 3,
                 embd_dim: int = 256, head_dim: int = 256, head_num_layers: int = 3, head_kernel_size: int = 3,
                 regression_range: Sequence[Sequence[float]] = tuple(map(tuple, ANET_REGRESSION_RANGE)),
                 use_abs_pe: bool = True, max_seq_len: int = 768, dropout: float = 0.0, droppath: float = 0.1,
                 cls_prior_prob: float = 0.01, center_sample_radius: float = 1.5, label_smoothing: float = 0.1,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, loss_weight: float = 1.0,
                 init_loss_norm: float = 400.0, loss_norm_momentum: float = 0.9, pre_nms_top_k: int = 2000,
                 min_score: float = 0.001):
        super().__init__()
        self.levels = backbone_arch[2] + 1
        if len(regression_range) != self.levels:
            raise ValueError(f"ActionFormer: {self.levels} pyramid levels need as many regression ranges, got "
                             f"{len(regression_range)}")
        self.strides = [2 ** level for level in range(self.levels)]
        self.regression_range = torch.tensor(regression_range, dtype=torch.float64)
        self.center_sample_radius, self.label_smoothing, self.loss_weight = (center_sample_radius, label_smoothing,
                                                                             loss_weight)
        self.focal_alpha, self.focal_gamma, self.momentum = focal_alpha, focal_gamma, loss_norm_momentum
        self.pre_nms_top_k, self.min_score = pre_nms_top_k, min_score
        self.backbone = ConvTransformer(in_dim, embd_dim, n_head, n_mha_win_size, backbone_arch, embd_kernel_size,
                                        max_seq_len, use_abs_pe, dropout, droppath)
        self.neck = IdentityNeck(embd_dim, self.levels)
        self.cls_head = ClsHead(embd_dim, head_dim, head_num_layers, head_kernel_size, cls_prior_prob)
        self.reg_head = RegHead(embd_dim, head_dim, head_num_layers, head_kernel_size, self.levels)
        self.register_buffer("loss_normalizer", torch.tensor(float(init_loss_norm)))

    # ------------------------------------------------------------------------------------------------ layout
    def padded_length(self, L: int) -> int:
        """L rounded up to a multiple of the largest stride."""
        s = self.strides[-1]
        return -(-L // s) * s

    def points(self, L: int) -> dict:
        """The P points at L snippets, level by level: "position" (P,) snippets, "stride" (P,), "low", "high" (P,)
        regression range in snippets, "level" (P,), "valid" (P,) bool; float64 on the CPU."""
        Lp = self.padded_length(L)
        parts = []
        for level, s in enumerate(self.strides):
            start = torch.arange(0, Lp, s, dtype=torch.float64)
            n = len(start)
            low, high = self.regression_range[level]
            parts.append({"position": start + 0.5, "stride": torch.full((n,), float(s), dtype=torch.float64),
                          "low": low.expand(n), "high": high.expand(n), "level": torch.full((n,), level),
                          "valid": start < L})
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def level_sizes(self, L: int) -> List[int]:
        """The number of points of each level at L snippets (padded ones included)."""
        return [self.padded_length(L) // s for s in self.strides]

    # ----------------------------------------------------------------------------------------------- network
    def predict(self, x: torch.Tensor, mask: torch.Tensor) -> Outputs:
        """x (B, C, T), T a multiple of the largest stride, with its mask (B, 1, T) → outputs over T's points."""
        feats, masks = self.backbone(x, mask)
        feats = self.neck(feats, masks)
        logits = [self.cls_head(f, m)[:, 0] for f, m in zip(feats, masks)]
        offsets = [self.reg_head(f, m, level).transpose(1, 2) for level, (f, m) in enumerate(zip(feats, masks))]
        return {"cls_logits": torch.cat(logits, 1), "offsets": torch.cat(offsets, 1),
                "valid": torch.cat([m[:, 0] for m in masks], 1)}

    def forward(self, features: torch.Tensor) -> Outputs:
        """features (B, C, L) → {"cls_logits": (B, P), "offsets": (B, P, 2), "valid": (B, P) bool}."""
        if features.dim() != 3:
            raise ValueError(f"ActionFormer: expected features (B, C, L), got {tuple(features.shape)}")
        B, _, L = features.shape
        Lp = self.padded_length(L)
        mask = (torch.arange(Lp, device=features.device) < L).view(1, 1, Lp).expand(B, 1, Lp)
        return self.predict(F.pad(features, (0, Lp - L)), mask)

    # --------------------------------------------------------------------------------------------- training
    def video_targets(self, gt: torch.Tensor, L: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """gt (G, 2) normalized → (cls (P,) 0/1, offsets (P, 2) in strides, 0 at negatives), float32."""
        pts = self.points(L)
        P = len(pts["valid"])
        if gt.numel() == 0:
            return torch.zeros(P), torch.zeros(P, 2)
        gt = gt * L  # snippets
        pos, stride = pts["position"].view(-1, 1), pts["stride"].view(-1, 1)
        g0, g1 = gt[:, 0].view(1, -1), gt[:, 1].view(1, -1)
        left, right = pos - g0, g1 - pos  # (P, G)
        centre, radius = 0.5 * (g0 + g1), self.center_sample_radius * stride
        inside = (pos > torch.maximum(centre - radius, g0)) & (pos < torch.minimum(centre + radius, g1))
        far = torch.maximum(left, right)
        in_range = (far >= pts["low"].view(-1, 1)) & (far <= pts["high"].view(-1, 1))
        length = torch.where(inside & in_range, g1 - g0, torch.full_like(left, math.inf))
        shortest, pick = length.min(1)
        positive = torch.isfinite(shortest) & pts["valid"]
        rows = torch.arange(P)
        offsets = torch.stack([left[rows, pick], right[rows, pick]], 1) / stride
        return positive.float(), torch.where(positive.view(-1, 1), offsets, 0.0).float()

    def targets(self, meta: Sequence[dict], L: int) -> Targets:
        """{"cls": (B, P) float32 0/1, "offsets": (B, P, 2) float32 in strides (0 at negatives)}, on the CPU."""
        per_video = [self.video_targets(normalized_segments(m), L) for m in meta]
        return {"cls": torch.stack([c for c, _ in per_video]), "offsets": torch.stack([o for _, o in per_video])}

    def statistics(self, targets: Sequence[Targets], draws: Sequence[Optional[torch.Tensor]],
                   reduce: Reduce = no_reduce) -> Counts:
        """{"num_pos": int64 positives of all micro-batches and processes, "normalizer": float32 scalar}; in training
        the ``loss_normalizer`` buffer moves towards max(num_pos, 1) first."""
        local = torch.stack([(t["cls"] > 0).sum() for t in targets]).sum()
        num_pos = reduce(local.reshape(1))[0]
        observed = num_pos.clamp(min=1).to(self.loss_normalizer)
        if self.training:
            with torch.no_grad():
                self.loss_normalizer.mul_(self.momentum).add_((1 - self.momentum) * observed)
            normalizer = self.loss_normalizer.clone()
        else:
            normalizer = observed
        return {"num_pos": num_pos, "normalizer": normalizer}

    def loss(self, outputs: Outputs, targets: Targets, draws: Optional[torch.Tensor], counts: Counts) -> Outputs:
        """{"loss", "cls", "reg"}: this micro-batch's focal-loss sum over its valid points and DIoU sum over its
        positives, each divided by ``counts["normalizer"]``; loss = cls + loss_weight·reg."""
        dtype = torch.promote_types(outputs["cls_logits"].dtype, torch.float32)
        logits, pred = outputs["cls_logits"].to(dtype), outputs["offsets"].to(dtype)
        valid, device = outputs["valid"], logits.device
        gt_cls, gt_offsets = targets["cls"].to(device, dtype), targets["offsets"].to(device, dtype)
        if gt_cls.shape != logits.shape:
            raise ValueError(f"ActionFormer.loss: targets over {tuple(gt_cls.shape)} points do not match the "
                             f"outputs' {tuple(logits.shape)}")
        positive = (gt_cls > 0) & valid
        smoothed = gt_cls * (1 - self.label_smoothing) + self.label_smoothing / 2
        cls = sigmoid_focal_loss(logits[valid], smoothed[valid], self.focal_alpha, self.focal_gamma, "sum")
        reg = diou_loss_1d(pred[positive], gt_offsets[positive]).sum()
        normalizer = counts["normalizer"].to(device, dtype)
        cls, reg = cls / normalizer, reg / normalizer
        return {"loss": cls + self.loss_weight * reg, "cls": cls, "reg": reg}

    # ------------------------------------------------------------------------------------------- inference
    def candidates(self, outputs: Outputs) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per video and level the ``pre_nms_top_k`` best valid points scoring above ``min_score``, decoded →
        (segments (B, N, 2) float64 normalized, scores (B, N) float64, num_valid (B,)); each video's candidates
        first, the rest padding."""
        logits, offsets, valid = outputs["cls_logits"], outputs["offsets"], outputs["valid"]
        L = int(valid[:1, :self._level0_size(logits.shape[1])].sum())
        pts = {k: v.to(logits.device) for k, v in self.points(L).items()}
        scores = torch.sigmoid(logits.double()) * valid
        starts = pts["position"] - offsets[..., 0].double() * pts["stride"]
        ends = pts["position"] + offsets[..., 1].double() * pts["stride"]
        segments = torch.stack([starts, ends], -1).clamp(0, L) / L
        picked, index, first = [], [], 0
        for n in self.level_sizes(L):
            top, idx = scores[:, first:first + n].topk(min(self.pre_nms_top_k, n), dim=1)
            picked.append(top)
            index.append(idx + first)
            first += n
        top, index = torch.cat(picked, 1), torch.cat(index, 1)
        keep = top > self.min_score
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
        index = index.gather(1, order)
        segments = segments.gather(1, index.unsqueeze(-1).expand(-1, -1, 2))
        return segments, torch.where(keep, top, 0.0).gather(1, order), keep.sum(1)

    def _level0_size(self, P: int) -> int:
        """The padded length Lp of level 0 given the total number of points P = Σ_l Lp / 2^l."""
        Lp = round(P / sum(1 / s for s in self.strides))
        if sum(Lp // s for s in self.strides) != P:
            raise ValueError(f"ActionFormer: {P} points are no pyramid of {self.levels} levels")
        return Lp

    def proposals(self, outputs: Outputs, pp: Any) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``candidates`` → suppression by the ``postprocess`` section ``pp`` (lofi.models.suppression) →
        (segments (B, K, 2) float64 normalized, scores (B, K) float32, counts (B,))."""
        segments, scores, num_valid = self.candidates(outputs)
        kept, kept_scores, counts = suppress(segments, scores, num_valid, pp)
        return kept.double(), kept_scores.float(), counts

    def random_outputs(self, B: int, L: int, generator: torch.Generator) -> Outputs:
        """Uniform random outputs: sigmoid(logit) ~ U(0, 1) and each distance ~ U(0, h / s) strides, h the level's
        regression range's upper end capped at L snippets; padded points as ``forward``'s."""
        pts = self.points(L)
        valid = pts["valid"].expand(B, -1)
        u = torch.rand(valid.shape, generator=generator, dtype=torch.float64)
        reach = (pts["high"].clamp(max=L) / pts["stride"]).view(1, -1, 1)
        distances = torch.rand((B, len(pts["valid"]), 2), generator=generator, dtype=torch.float64) * reach
        return {"cls_logits": torch.where(valid, torch.logit(u, eps=1e-6), 0.0).float(),
                "offsets": torch.where(valid.unsqueeze(-1), distances, 0.0).float(), "valid": valid.clone()}
