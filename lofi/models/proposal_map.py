"""The (duration, start) proposal map that G-TAD and BMN predict, for any number of snippets L.

Cell (d, s) is the proposal over snippets s..s+d, i.e. [s/L, (s+d+1)/L] in normalized time; cells with s + d ≥ L are
invalid. A head's maps (B, 2, L, L) hold the IoU-regression (channel 0) and classification (channel 1) confidence of
every cell. ``map_proposals`` turns them into class-agnostic proposals:

1. Boundary filter per video: a snippet is a start (end) candidate if it is a strict local peak of the start (end)
   probability or above 0.5·max; snippet 0 is always a start, snippet L−1 always an end.
2. Every valid cell (d, s) with start candidate s is a proposal when its end passes the candidate rule
   (``CANDIDATE_RULES``): ``opentad`` reads the end candidate at s+d (the last included snippet) and keeps proposals
   ending at the video's end; ``gtad`` (G-TAD's inference) reads it at s+d+1 and keeps only proposals with
   s+d+1 < L, so none ends at the video's end. Score = cls × reg (G-TAD), times p_start(s) × p_end(end snippet)
   with ``boundary_scores`` (BMN).
3. Suppression (``lofi.models.suppression``) over the whole batch, top-k per video.
"""
from typing import Any, Tuple

import torch

from .suppression import suppress

CANDIDATE_RULES = ("opentad", "gtad")


def proposal_cells(L: int, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Valid map cells as (d, s) index tensors of length L(L+1)/2, ordered by d then s."""
    s, e = torch.triu_indices(L, L, device=device)  # every s ≤ e: the proposal covers snippets s..e
    d = e - s
    order = torch.argsort(d * L + s)
    return d[order], s[order]


def valid_mask(L: int, device=None) -> torch.Tensor:
    """bool (L, L) indexed [d, s]: True where s + d ≤ L − 1."""
    idx = torch.arange(L, device=device)
    return (idx.view(L, 1) + idx.view(1, L)) <= L - 1


def boundary_candidates(prob: torch.Tensor) -> torch.Tensor:
    """prob (B, L) → bool (B, L): strict local peak (outside neighbours count as −∞) or > 0.5·max of the video."""
    pad = torch.nn.functional.pad(prob, (1, 1), value=float("-inf"))
    peak = (prob > pad[:, :-2]) & (prob > pad[:, 2:])
    return peak | (prob > 0.5 * prob.amax(1, keepdim=True))


def map_proposals(start: torch.Tensor, end: torch.Tensor, maps: torch.Tensor, pp: Any,
                  boundary_scores: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Start/end probabilities (B, L) and maps (B, 2, L, L) → (segments (B, K, 2) float64 in normalized time, scores
    (B, K), counts (B,)) after suppression by the ``postprocess`` section ``pp`` (its ``candidates`` end rule,
    ``top_k`` and suppression keys); rows beyond ``counts[b]`` are padding."""
    if pp.candidates not in CANDIDATE_RULES:
        raise ValueError(f"postprocess.candidates: expected one of {CANDIDATE_RULES}, got {pp.candidates!r}")
    B, L = start.shape
    d, s = proposal_cells(L, start.device)
    e = s + d + (1 if pp.candidates == "gtad" else 0)  # the snippet whose end probability is read
    inside = e < L
    e = e.clamp(max=L - 1)
    start_ok, end_ok = boundary_candidates(start), boundary_candidates(end)
    start_ok[:, 0] = True
    end_ok[:, L - 1] = True
    keep = start_ok[:, s] & end_ok[:, e] & inside
    flat = maps.flatten(2)[:, :, d * L + s].float()  # (B, 2, N)
    score = flat[:, 1] * flat[:, 0]
    if boundary_scores:
        score = score * start[:, s].float() * end[:, e].float()
    segs = torch.stack([s, s + d + 1], 1).to(score.dtype)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    out, scores, counts = suppress(segs[order], score.gather(1, order), keep.sum(1), pp)
    return out.double() / L, scores, counts
