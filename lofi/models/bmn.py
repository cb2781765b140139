"""BMN head (Lin et al., "BMN: Boundary-Matching Network for Temporal Action Proposal Generation", ICCV 2019) in its
ActivityNet setting, for any number of snippets L; the maximum duration D is L.

features (B, C, L) → start/end probabilities (B, L) and the proposal maps (B, 2, L, L) indexed [d, s] (the proposal
over snippets s..s+d, lofi.models.proposal_map); channel 0 is the IoU regression map, channel 1 the classification
map. Cells with s + d ≥ L are invalid and hold 0.

Modules and parameter names follow the public implementations (JJBOY/BMN-Boundary-Matching-Network ``models.py`` and
mmaction2's ``BMN``), so their checkpoints load one to one: ``x_1d_b`` base module, ``x_1d_s`` / ``x_1d_e`` temporal
evaluation module, ``x_1d_p`` → BM layer → ``x_3d_p`` → ``x_2d_p`` proposal evaluation module.

The BM layer turns the (B, C, L) features into (B, C, N, D, L) features: bin n of cell (d, s) is the mean of
``num_samples_per_bin`` points of the region [s − r·(d+1), s + d + r·(d+1)] snippets (r = ``boundary_ratio``), the
N·``num_samples_per_bin`` points evenly spaced over the region, both ends included. A point at position x takes
linear-interpolation weights as the public code computes them: 1 − f on trunc(x) and f on ceil(x), f = x − trunc(x)
(truncation toward zero, so a point in (−1, 0) puts weight 1 on snippet 0), weights on snippets outside [0, L − 1]
dropped. The public code applies these fixed weights as a dense (L, N·D·L) matrix (128 MB at L = 100 in float32) and
then the Conv3d over N; both are linear, so here the Conv3d weight is contracted with the features first
(B, hidden_3d, N, L) and the BM weights (a sparse matrix, ≤ 6 nonzeros per bin and cell) are applied to that: the
(B, C, N, D, L) tensor is never built.
"""
from typing import Dict, Tuple

import torch
from torch import nn

from .map_head import ProposalMapHead
from .proposal_map import proposal_cells, valid_mask


def bm_weights(L: int, num_samples: int = 32, num_samples_per_bin: int = 3,
               boundary_ratio: float = 0.5) -> torch.Tensor:
    """The BM layer's fixed weights at L snippets as a coalesced sparse COO matrix (L·L, N·L) float64, N =
    ``num_samples``: entry [d·L + s, n·L + t] is the weight of snippet t in bin n of cell (d, s); the rows of invalid
    cells (s + d ≥ L) are empty."""
    per_bin = num_samples_per_bin
    K = num_samples * per_bin
    if K < 2:
        raise ValueError(f"BMN: num_samples·num_samples_per_bin = {K}; the BM layer needs at least 2 points")
    d, s = proposal_cells(L)
    length = (d + 1).double()
    lo = s - boundary_ratio * length  # (R,) the sampled region in snippets
    hi = s + d + boundary_ratio * length
    x = lo.view(-1, 1) + ((hi - lo) / (K - 1)).view(-1, 1) * torch.arange(K, dtype=torch.float64)  # (R, K)
    down = torch.trunc(x)
    frac = x - down
    snippet = torch.cat([down, torch.ceil(x)], 1).long()  # (R, 2K)
    weight = torch.cat([1 - frac, frac], 1) / per_bin
    col = (torch.arange(K) // per_bin).repeat(2) * L + snippet
    row = (d * L + s).view(-1, 1).expand_as(snippet)
    keep = (snippet >= 0) & (snippet <= L - 1)
    return torch.sparse_coo_tensor(torch.stack([row[keep], col[keep]]), weight[keep], (L * L, num_samples * L),
                                   check_invariants=True).coalesce()


def dense_bm_mask(weights: torch.Tensor, num_samples: int) -> torch.Tensor:
    """``bm_weights`` (L·L, N·L) → the public implementations' dense ``sample_mask`` layout (L, N·D·L), D = L, entry
    [t, (n·D + d)·L + s]."""
    L = weights.shape[1] // num_samples
    return weights.to_dense().view(L, L, num_samples, L).permute(3, 2, 0, 1).reshape(L, -1)


def bm_conv3d(x: torch.Tensor, weights: torch.Tensor, conv_weight: torch.Tensor,
              conv_bias: torch.Tensor) -> torch.Tensor:
    """The Conv3d (kernel N×1×1) of the BM layer's features, fused: x (B, C, L), ``bm_weights`` (L·L, N·L) in the
    compute dtype (float64 for float64 x, else float32), conv_weight (O, C, N, 1, 1), conv_bias (O,) →
    (B, O, L, L) indexed [d, s], in the dtype of the contraction of x with conv_weight (x's, or autocast's).

    out[b, o, d, s] = bias[o] + Σ_{n,t} W[t, n, d, s] · Σ_c conv_weight[o, c, n] · x[b, c, t]."""
    B, _, L = x.shape
    O, _, N = conv_weight.shape[:3]
    # a transposed conv with stride = kernel = N puts Σ_c conv_weight[o, c, n]·x[b, c, t] at t·N + n, and (unlike a
    # matmul) saves the weight itself for backward, not a permuted copy; autocast may run it in bf16
    y = nn.functional.conv_transpose1d(x, conv_weight[..., 0, 0].transpose(0, 1), stride=N).view(B, O, L, N)
    with torch.autocast(x.device.type, enabled=False):  # the sparse product in float32 (float64)
        rows = y.permute(3, 2, 0, 1).reshape(N * L, B * O).to(weights.dtype)  # [n·L + t, b·O + o]
        out = torch.sparse.mm(weights, rows)  # (L·L, B·O)
        out = out.view(L, L, B, O).permute(2, 3, 0, 1) + conv_bias.to(weights.dtype).view(1, O, 1, 1)
    return out.to(y.dtype).contiguous()


class BMN(ProposalMapHead):
    """BMN: base module (two k3 4-group convs) → start/end branches (k3 4-group conv → 1×1 → sigmoid) and
    1-D conv → BM layer → Conv3d over the N bins → 2-D convs (1×1, 3×3, 3×3, 1×1) → sigmoid.

    Defaults: the ActivityNet setting of the public implementations (JJBOY's opts.py, mmaction2's ``bmn_400x100``
    config: widths 256 / 128 / 512, N = 32 bins of 3 points, boundary ratio 0.5). As in both public implementations, ``x_1d_p`` keeps
    ``hidden_1d`` channels, so the BM features and the Conv3d input have ``hidden_1d`` channels. ``in_dim``: the
    encoder's ``out_dim`` or the feature dimension (400 for the CUHK TSN features: 4,978,564 parameters with the
    defaults). The BM weights are built per (L, device, dtype) on first use and kept (not state).
    """

    boundary_scores = True

    def __init__(self, in_dim: int, hidden_1d: int = 256, hidden_2d: int = 128, hidden_3d: int = 512,
                 num_samples: int = 32, num_samples_per_bin: int = 3, boundary_ratio: float = 0.5):
        super().__init__()
        for name, value in (("in_dim", in_dim), ("hidden_1d", hidden_1d)):
            if value % 4:
                raise ValueError(f"BMN: {name}={value} must be divisible by 4 (its convs have 4 groups)")
        if num_samples * num_samples_per_bin < 2 or not boundary_ratio >= 0:
            raise ValueError(f"BMN: need num_samples·num_samples_per_bin ≥ 2 and boundary_ratio ≥ 0, got "
                             f"{num_samples}·{num_samples_per_bin}, {boundary_ratio}")
        self.num_samples, self.num_samples_per_bin = num_samples, num_samples_per_bin
        self.boundary_ratio = boundary_ratio
        self.x_1d_b = nn.Sequential(nn.Conv1d(in_dim, hidden_1d, 3, padding=1, groups=4), nn.ReLU(inplace=True),
                                    nn.Conv1d(hidden_1d, hidden_1d, 3, padding=1, groups=4), nn.ReLU(inplace=True))
        self.x_1d_s = self._boundary_branch(hidden_1d)
        self.x_1d_e = self._boundary_branch(hidden_1d)
        self.x_1d_p = nn.Sequential(nn.Conv1d(hidden_1d, hidden_1d, 3, padding=1), nn.ReLU(inplace=True))
        # the Conv3d's weight is used by bm_conv3d, never the module's own forward
        self.x_3d_p = nn.Sequential(nn.Conv3d(hidden_1d, hidden_3d, (num_samples, 1, 1), stride=(num_samples, 1, 1)),
                                    nn.ReLU(inplace=True))
        self.x_2d_p = nn.Sequential(
            nn.Conv2d(hidden_3d, hidden_2d, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden_2d, hidden_2d, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden_2d, hidden_2d, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden_2d, 2, 1), nn.Sigmoid())
        self._weights: Dict[Tuple[int, str, torch.dtype], Tuple[torch.Tensor, torch.Tensor]] = {}
        self.register_load_state_dict_pre_hook(_drop_public_mask)

    @staticmethod
    def _boundary_branch(width: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv1d(width, width, 3, padding=1, groups=4), nn.ReLU(inplace=True),
                             nn.Conv1d(width, 1, 1), nn.Sigmoid())

    def bm_weights(self, L: int, device, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """Cached per (L, device, dtype): (``bm_weights`` (L·L, N·L) in ``dtype`` on ``device``, valid mask
        (L, L))."""
        key = (L, str(device), dtype)
        if key not in self._weights:
            with torch.inference_mode(False):  # kept tensors, so a later forward in autograd mode may save them
                w = bm_weights(L, self.num_samples, self.num_samples_per_bin, self.boundary_ratio)
                self._weights[key] = (w.to(device=device, dtype=dtype), valid_mask(L, device))
        return self._weights[key]

    def forward(self, features: torch.Tensor) -> Dict[str, torch.Tensor]:
        """features (B, C, L) float → {"start": (B, L), "end": (B, L), "maps": (B, 2, L, L)} probabilities."""
        if features.dim() != 3:
            raise ValueError(f"BMN: expected features (B, C, L), got {tuple(features.shape)}")
        L = features.shape[2]
        base = self.x_1d_b(features)
        start = self.x_1d_s(base).squeeze(1)
        end = self.x_1d_e(base).squeeze(1)
        x = self.x_1d_p(base)
        weights, valid = self.bm_weights(L, x.device, torch.float64 if x.dtype == torch.float64 else torch.float32)
        conv3d = self.x_3d_p[0]
        maps = self.x_2d_p(self.x_3d_p[1](bm_conv3d(x, weights, conv3d.weight, conv3d.bias)))
        return {"start": start, "end": end, "maps": maps * valid}


def _drop_public_mask(module: BMN, state_dict: dict, prefix: str, *_) -> None:
    """A public BMN checkpoint stores the BM layer's fixed weights as the parameter ``sample_mask`` (T, N·T·T);
    here they are computed, not state: check that they are this head's at T snippets, then drop the key."""
    mask = state_dict.pop(prefix + "sample_mask", None)
    if mask is None:
        return
    N = module.num_samples
    if mask.dim() != 2 or mask.shape[1] != N * mask.shape[0] ** 2:
        raise ValueError(f"BMN: {prefix}sample_mask has shape {tuple(mask.shape)}, expected (T, {N}·T·T)")
    T = mask.shape[0]
    ours = dense_bm_mask(bm_weights(T, N, module.num_samples_per_bin, module.boundary_ratio).float(), N)
    diff = (mask.float().cpu() - ours).abs().max().item()
    if not diff <= 1e-6:
        raise ValueError(f"BMN: {prefix}sample_mask differs from this head's BM layer at T={T} by up to {diff:.3g} "
                         f"(num_samples={N}, num_samples_per_bin={module.num_samples_per_bin}, "
                         f"boundary_ratio={module.boundary_ratio})")

