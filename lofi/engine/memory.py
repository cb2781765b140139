"""``batch_size: auto`` for the end-to-end stage: how many videos per process fit a memory budget.

Per-video training memory is estimated as the bytes of the tensors autograd saves for backward (each storage counted
once, parameters excluded), measured with ``torch.autograd.graph.saved_tensors_hooks`` so it works on any device:
the encoder on one snippet scaled by L (its cost is linear in L) plus the head at L on features. The fixed part is
parameters, gradients and one optimizer buffer (3× the parameter bytes). The worst fidelity of the schedule decides.
"""
from __future__ import annotations

from typing import Iterable

import torch

from lofi.fidelity import Fidelity


def saved_bytes(fn, params: Iterable[torch.Tensor]) -> int:
    """Bytes saved for backward by ``fn()`` (unique storages, parameters excluded)."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    seen = {}

    def count(t: torch.Tensor) -> None:
        if t.is_sparse:  # e.g. the pure-PyTorch SGAlign's sampling matrix
            count(t._indices())
            count(t._values())
            return
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_ptrs:
            seen[storage.data_ptr()] = storage.nbytes()

    def pack(t: torch.Tensor):
        count(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def per_video_bytes(model: torch.nn.Module, fid: Fidelity, device: torch.device) -> int:
    """Training activations of one video at ``fid`` for an EndToEnd model (``.encoder``, ``.head``)."""
    params = list(model.parameters())
    frames = torch.randint(0, 256, (1, 1, fid.T, 3, fid.H, fid.W), dtype=torch.uint8, device=device)
    encoder = saved_bytes(lambda: model.encoder(frames), params) * fid.L
    features = torch.randn(1, model.encoder.out_dim, fid.L, device=device, requires_grad=True)
    head = saved_bytes(lambda: model.head(features), params)
    return encoder + head


def auto_micro_batch(model: torch.nn.Module, fidelities: Iterable[Fidelity], budget_gib: float,
                     device: torch.device) -> int:
    """The largest per-process batch whose estimated training memory fits ``budget_gib`` (at least 1).

    The probe's train-mode forward passes on random frames leave no trace: every buffer (BatchNorm running
    statistics and batch counts) is put back bit for bit, and the global RNG states (CPU and ``device``) are
    restored."""
    was_training = model.training
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            model.train()
            worst = max(per_video_bytes(model, f, device) for f in fidelities)
    finally:
        model.train(was_training)
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
    fixed = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    return max(1, int((budget_gib * 2**30 - fixed) // worst))
