"""Per-video activation memory of the encoder and of each localization head, and the largest training batch within a
budget.

Activation memory = bytes of the tensors autograd saves for backward (lofi.engine.memory.saved_bytes: every storage
counted once, parameters excluded); this works on the CPU. On CUDA the peak memory of forward + backward is measured
too. The encoder encodes every snippet independently, so its memory is linear in L: it is measured on 1 and 2
snippets at the fidelity's T×H×W, the two are checked to scale linearly (within 1 %), and the per-snippet figure is
scaled by L.
(Full fidelity does not fit a CPU machine: ResNet-18 at 100×8×224² saves about 20 GB per video.)
"""
from typing import Optional, Sequence

import torch

from lofi import ops
from lofi.config import Config, ModelConfig
from lofi.engine.memory import saved_bytes
from lofi.models import build_encoder, head_from_config

GIB = 2 ** 30
# (name, L, T, H=W): full fidelity and the paper's LoFi configurations (r_t = 4, r_s = 2, ST: r_t = 2, r_s = √2).
FIDELITIES = [("full", 100, 8, 224), ("S-LoFi", 100, 8, 112), ("T-LoFi", 25, 8, 224), ("ST-LoFi", 50, 8, 158)]
HEAD_LENGTHS = (25, 50, 100)  # the snippets of T-LoFi, ST-LoFi, and full fidelity and S-LoFi


def peak_cuda_bytes(model, fn) -> int:
    """Peak CUDA memory of forward + backward above what was allocated before (parameters, inputs)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    sum(v.float().sum() for v in (out.values() if isinstance(out, dict) else [out])).backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    model.zero_grad(set_to_none=True)
    return peak


def measure_encoder(name: str, L: int, T: int, size: int, device: str) -> dict:
    """Saved-for-backward bytes of encoder ``name`` on one video of L snippets of T frames at size² (measured on 1 and
    2 snippets, checked to scale linearly, scaled by L); on CUDA also the peak memory of forward + backward."""
    enc = build_encoder(name).to(device).train()

    def run(n):
        frames = torch.randint(0, 256, (1, n, T, 3, size, size), dtype=torch.uint8, device=device)
        return saved_bytes(lambda: enc(frames), enc.parameters())

    one, two = run(1), run(2)
    ratio = two / one
    if abs(ratio - 2.0) > 0.02:
        raise RuntimeError(f"{name} {T}x{size}²: saved bytes do not scale linearly with snippets (2/1 = {ratio:.3f})")
    row = {"encoder": name, "L": L, "T": T, "size": size, "per_snippet_bytes": one, "linear_ratio_2_to_1": ratio,
           "per_video_bytes": one * L}
    if device == "cuda":
        n = min(L, 4)
        frames = torch.randint(0, 256, (1, n, T, 3, size, size), dtype=torch.uint8, device=device)
        row["cuda_peak_bytes_per_video"] = peak_cuda_bytes(enc, lambda: enc(frames)) * L // n
    return row


def build_head(name: str, in_dim: int, fused: bool = True) -> torch.nn.Module:
    """Head ``name`` with its config section's defaults (G-TAD: SGAlign fused with its projection or not)."""
    return head_from_config(Config(model=ModelConfig(head=name, gtad_fused=fused)), in_dim)


def measure_head(name: str, in_dim: int, L: int, fused: bool, device: str) -> dict:
    """Saved-for-backward bytes of head ``name`` on one video of L snippets (and the CUDA peak on CUDA)."""
    torch.manual_seed(0)
    head = build_head(name, in_dim, fused).to(device).train()
    x = torch.randn(1, in_dim, L, device=device, requires_grad=True)
    row = {"head": name, "in_dim": in_dim, "L": L, "fused": fused,
           "per_video_bytes": saved_bytes(lambda: head(x), head.parameters())}
    if device == "cuda":
        row["cuda_peak_bytes_per_video"] = peak_cuda_bytes(head, lambda: head(x))
    return row


def model_state_bytes(encoder: str, head: str) -> int:
    """fp32 parameters + gradients + two Adam moments of the encoder + head."""
    enc = build_encoder(encoder)
    params = sum(p.numel() for p in enc.parameters()) + sum(p.numel() for p in build_head(head, enc.out_dim).parameters())
    return params * 4 * 4


def budget_rows(encoder_rows, head_rows, budget_gib: float) -> list:
    """Per-video training memory (encoder + head at each of FIDELITIES, fp32 activations; G-TAD fused) and the largest
    batch that fits ``budget_gib`` GiB next to the model state, per encoder and head."""
    rows = []
    for name, L, T, size in FIDELITIES:
        for er in (r for r in encoder_rows if (r["L"], r["T"], r["size"]) == (L, T, size)):
            for hr in (r for r in head_rows if r["L"] == L and r["fused"] and r["in_dim"] == 512):
                state = model_state_bytes(er["encoder"], hr["head"])
                per_video = er["per_video_bytes"] + hr["per_video_bytes"]
                rows.append({"config": name, "encoder": er["encoder"], "head": hr["head"],
                             "fidelity": f"{L}x{T}x{size}²", "head_bytes": hr["per_video_bytes"],
                             "per_video_bytes": per_video, "model_state_bytes": state,
                             "max_batch": max(0, int((budget_gib * GIB - state) // per_video))})
    return rows


def measure(encoders: Sequence[str], device: str, budget_gib: Optional[float] = None,
            heads: Sequence[str] = ("gtad",)) -> dict:
    """{device, sgalign_path, head: rows, encoder: rows[, budget_gib, budget: rows]}: each head at HEAD_LENGTHS (G-TAD
    with fused and unfused SGAlign), each encoder at FIDELITIES, and with ``budget_gib`` the budget rows."""
    torch.set_grad_enabled(True)
    head_rows = [measure_head(h, 512, L, fused, device) for h in heads for L in HEAD_LENGTHS
                 for fused in ((True, False) if h == "gtad" else (True,))]
    encoder_rows = [measure_encoder(name, L, T, size, device) for name in encoders for _, L, T, size in FIDELITIES]
    result = {"device": device, "sgalign_path": "compiled kernel" if ops.available() else "pure-PyTorch reference",
              "head": head_rows, "encoder": encoder_rows}
    if budget_gib is not None:
        result["budget_gib"] = budget_gib
        result["budget"] = budget_rows(encoder_rows, head_rows, budget_gib)
    return result
