"""Encoder weights from local files only (nothing is ever downloaded).

Accepted files (``torch.load``-able with ``weights_only=True``: a file that needs full unpickling is refused):
- a torchvision state dict of the backbone (e.g. ImageNet ResNet weights; its ``fc.*`` classifier is ignored);
- a LoFi checkpoint: ``{"model": state_dict}`` / ``{"state_dict": state_dict}`` / a bare state dict, holding either the
  encoder's own keys (``backbone.*``) or a whole model's keys with the encoder under ``encoder.*`` (other keys ignored);
- an mmaction2 TSM checkpoint (``{"state_dict": {"backbone.conv1.conv.weight", ...}}``), converted by
  :func:`convert_mmaction2_tsm` (its ``cls_head.*`` is ignored).
Any missing, unexpected or mis-shaped key is an error that lists them.
"""
import re
from pathlib import Path
from typing import Dict, Tuple

import torch
from torch import nn

from lofi.engine.checkpoint import load

_MMACTION_BLOCK_CONV = re.compile(r"\.conv(\d)\.(conv|bn)\.")


def convert_mmaction2_tsm(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], list]:
    """mmaction2 ``ResNetTSM`` keys → this project's ``backbone.*`` keys (torchvision layout).

    Returns (converted state dict, dropped keys). ``conv1.conv.*``/``conv1.bn.*`` → ``conv1.*``/``bn1.*`` (stem and block
    convs alike), the TSM wrapper's ``.net`` disappears, ``downsample.conv/bn`` → ``downsample.0/1``; ``cls_head.*`` dropped.
    """
    out, dropped = {}, []
    for key, value in state.items():
        if not key.startswith("backbone."):
            dropped.append(key)
            continue
        k = key[len("backbone."):].replace(".net.", ".")
        k = re.sub(r"^conv1\.conv\.", "conv1.", k)
        k = re.sub(r"^conv1\.bn\.", "bn1.", k)
        k = _MMACTION_BLOCK_CONV.sub(lambda m: f".{'conv' if m.group(2) == 'conv' else 'bn'}{m.group(1)}.", k)
        k = k.replace(".downsample.conv.", ".downsample.0.").replace(".downsample.bn.", ".downsample.1.")
        out["backbone." + k] = value
    return out, dropped


def encoder_state_from_file(path) -> Tuple[Dict[str, torch.Tensor], str]:
    """Reads ``path`` and returns (encoder state dict with ``backbone.*`` keys, detected format)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights file not found: {path}")
    obj = load(path)
    state = obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                state = obj[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: no state dict of tensors found (top-level keys: {list(obj)[:10]})")
    keys = list(state)
    if any(k.startswith("cls_head.") or k.endswith("conv1.conv.weight") for k in keys):
        return convert_mmaction2_tsm(state)[0], "mmaction2"
    if any(k.startswith("encoder.") for k in keys):
        return {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}, "lofi"
    if any(k.startswith("backbone.") for k in keys):
        return dict(state), "lofi"
    return {"backbone." + k: v for k, v in state.items() if not k.startswith("fc.")}, "torchvision"


def load_encoder_weights(encoder: nn.Module, path) -> str:
    """Loads ``path`` into ``encoder`` strictly; returns the detected format. Errors list every offending key."""
    state, fmt = encoder_state_from_file(path)
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or mismatched:
        raise ValueError(f"{path} ({fmt} format) does not match {type(encoder).__name__}:\n"
                         f"  missing keys ({len(missing)}): {missing}\n"
                         f"  unexpected keys ({len(unexpected)}): {unexpected}\n"
                         f"  shape mismatches ({len(mismatched)}): {mismatched}")
    encoder.load_state_dict(state)
    return fmt
