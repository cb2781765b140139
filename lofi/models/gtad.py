"""G-TAD head (G-TAD's ActivityNet configuration) for any number of snippets L.

features (B, C, L) → start/end probabilities (B, L) and the proposal maps (B, 2, L, L) indexed [d, s] (duration index d,
start snippet s; the proposal covers snippets s..s+d, i.e. [s/L, (s+d+1)/L] in normalized time); channel 0 is the IoU
regression map, channel 1 the classification map. Cells with s + d ≥ L are invalid and hold 0.

Only the L(L+1)/2 valid cells are computed: SGAlign (32 inner bins over the window widened by 0.5·len on each side,
4 context bins of the kNN-mean features over the same window) and the stack of 1×1 convs, written as linear layers on
(R, channels) rows, which is the same computation. By default ``lofi.ops.sg_align_project`` fuses SGAlign with the
first projection (C·36 → 512) so the (R, C·36) tensor is never built. The head keeps the SGAlign sampling plan of
its anchors per (B, L), so the compiled kernels plan them once.
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from lofi import ops
from .gcnext import GCNeXt, knn_context
from .map_head import ProposalMapHead
from .proposal_map import proposal_cells, valid_mask


def anchor_windows(L: int, expand_ratio: float = 0.5, device=None) -> torch.Tensor:
    """SGAlign windows (N, 2) float32 [start, end] in snippets of the N = L(L+1)/2 valid cells, in
    :func:`proposal_cells` order: the proposal over snippets s..s+d widened by ``expand_ratio``·(d+1) on each side."""
    d, s = proposal_cells(L, device)
    length = (d + 1).float()
    return torch.stack([s - expand_ratio * length, s + d + expand_ratio * length], 1)


def anchor_rois(windows: torch.Tensor, B: int) -> torch.Tensor:
    """windows (N, 2) → (B·N, 3) rows [b, start, end] in snippets, video-major."""
    b = torch.arange(B, device=windows.device, dtype=windows.dtype).repeat_interleave(windows.shape[0])
    return torch.cat([b.unsqueeze(1), windows.repeat(B, 1)], 1)


class GTAD(ProposalMapHead):
    """G-TAD: conv-in (k3, groups 4) → GCNeXt; start/end branches (GCNeXt → 1×1 → sigmoid); GCNeXt → SGAlign →
    1×1 stack (C·36→h3→h2→h2→h2→2) → sigmoid.

    ``in_dim``: the encoder's ``out_dim`` (512 for TSM-R18) or the feature dimension in feature mode (400 for the
    CUHK TSN features: 5,563,268 parameters with the defaults).
    """

    def __init__(self, in_dim: int, fused: bool = True, hidden_1d: int = 256, hidden_2d: int = 128,
                 hidden_3d: int = 512, k: int = 3, groups: int = 32, width_group: int = 4, inner_bins: int = 32,
                 ctx_bins: int = 4, expand_ratio: float = 0.5):
        super().__init__()
        if in_dim % 4:
            raise ValueError(f"GTAD: in_dim={in_dim} must be divisible by 4 (the input conv has 4 groups)")
        self.fused = fused
        self.k = k
        self.inner_bins, self.ctx_bins, self.expand_ratio = inner_bins, ctx_bins, expand_ratio
        block = dict(k=k, groups=groups, width_group=width_group)
        self.backbone1 = nn.Sequential(nn.Conv1d(in_dim, hidden_1d, 3, padding=1, groups=4), nn.ReLU(inplace=True),
                                       GCNeXt(hidden_1d, **block))
        self.regu_s = nn.Sequential(GCNeXt(hidden_1d, **block), nn.Conv1d(hidden_1d, 1, 1), nn.Sigmoid())
        self.regu_e = nn.Sequential(GCNeXt(hidden_1d, **block), nn.Conv1d(hidden_1d, 1, 1), nn.Sigmoid())
        self.backbone2 = GCNeXt(hidden_1d, **block)
        self.proj = nn.Linear(hidden_1d * (inner_bins + ctx_bins), hidden_3d)  # first 1×1 conv; fused with SGAlign
        self.localization = nn.Sequential(
            nn.ReLU(inplace=True), nn.Linear(hidden_3d, hidden_2d), nn.ReLU(inplace=True),
            nn.Linear(hidden_2d, hidden_2d), nn.ReLU(inplace=True), nn.Linear(hidden_2d, hidden_2d),
            nn.ReLU(inplace=True), nn.Linear(hidden_2d, 2), nn.Sigmoid())
        self._cells: Dict[tuple, tuple] = {}
        self._plans: Dict[tuple, ops.SamplingPlan] = {}  # not state: rebuilt from (B, L) on demand

    def cells(self, L: int, device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cached per (L, device): (flat map index d·L+s (N,), SGAlign windows (N, 2) in snippets, valid mask (L, L))."""
        key = (L, str(device))
        if key not in self._cells:
            d, s = proposal_cells(L, device)
            self._cells[key] = (d * L + s, anchor_windows(L, self.expand_ratio, device), valid_mask(L, device))
        return self._cells[key]

    def rois(self, B: int, L: int, device) -> torch.Tensor:
        """(B·N, 3) rows [b, start, end] in snippets, video-major, N = L(L+1)/2."""
        return anchor_rois(self.cells(L, device)[1], B)

    def plan(self, rois: torch.Tensor, x: torch.Tensor, bins: Sequence[int], sources: int,
             double: bool) -> Optional[ops.SamplingPlan]:
        """The sampling plan of this head's ``rois`` for x (B, C, L), kept per (B, L, device, precision, bins); None
        without the compiled kernels. Plans made under inference mode are not kept: their tensors could not be saved
        for a later backward."""
        B, _, L = x.shape
        key = (B, L, str(x.device), double, tuple(bins))
        plan = self._plans.get(key)
        if plan is None:
            plan = ops.sampling_plan(rois, L, B, bins, double, sources)
            if plan is not None and (torch.compiler.is_compiling() or not torch.is_inference_mode_enabled()):
                self._plans[key] = plan
        return plan

    def align_project(self, x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """x (B, C, L) → (R, hidden_3d): SGAlign (inner + kNN context bins) followed by ``proj``."""
        ctx = knn_context(x, self.k)
        rois = rois.to(torch.float64 if x.dtype == torch.float64 else torch.float32)  # exact window ends under bf16
        bins = (self.inner_bins, self.ctx_bins)
        if self.fused:  # under autocast x may be bf16: the op takes the weight in x's dtype
            # the op computes in x's dtype, or in the autocast dtype (never float64) under autocast
            double = x.dtype == torch.float64 and not torch.is_autocast_enabled(x.device.type)
            plan = self.plan(rois, x, bins, sum(bins), double)
            return ops.sg_align_project(x, ctx, rois, self.proj.weight.to(x.dtype), self.proj.bias.to(x.dtype),
                                        inner_bins=self.inner_bins, ctx_bins=self.ctx_bins, check=False, plan=plan)
        double = x.dtype == torch.float64
        aligned = torch.cat([ops.sg_align(src, rois, n, check=False, plan=self.plan(rois, x, [n], 1, double))
                             for src, n in ((x, self.inner_bins), (ctx, self.ctx_bins))], 2)
        return self.proj(aligned.flatten(1))  # flattened channel index c·36 + bin, as in G-TAD

    def forward(self, features: torch.Tensor) -> Dict[str, torch.Tensor]:
        """features (B, C, L) float → {"start": (B, L), "end": (B, L), "maps": (B, 2, L, L)} probabilities."""
        if features.dim() != 3:
            raise ValueError(f"GTAD: expected features (B, C, L), got {tuple(features.shape)}")
        B, _, L = features.shape
        base = self.backbone1(features)
        start = self.regu_s(base).squeeze(1)
        end = self.regu_e(base).squeeze(1)
        x = self.backbone2(base)
        flat = self.cells(L, x.device)[0]
        scores = self.localization(self.align_project(x, self.rois(B, L, x.device)))  # (B·N, 2)
        maps = scores.new_zeros(B, 2, L * L)
        maps[:, :, flat] = scores.view(B, -1, 2).transpose(1, 2)
        return {"start": start, "end": end, "maps": maps.view(B, 2, L, L)}
