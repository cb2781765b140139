"""Registries of the encoders and temporal-localization heads a config names (``model.encoder``, ``model.head``):
name → builder, with the config section each builder reads. A new encoder or head is its module plus one entry here.
The training stages, lofi.infer and tools/extract_features.py all build models through these."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from typing import Callable, Dict, Optional

from torch import nn

from .actionformer import ActionFormer
from .bmn import BMN
from .encoder import TSM_DEPTHS, R2Plus1DEncoder, SnippetEncoder, TSMEncoder
from .gtad import GTAD
from .weights import load_encoder_weights


@dataclass(frozen=True)
class Registered:
    """A builder and the config section whose keys it reads (``model``: frozen_bn, channels_last, ...)."""
    build: Callable[..., nn.Module]
    section: str


# builder(frozen_bn, channels_last, checkpoint_chunks, amp) → SnippetEncoder: frames (B, L, T, 3, H, W) → (B, C, L)
ENCODERS: Dict[str, Registered] = {
    **{name: Registered(partial(TSMEncoder, name), "model") for name in TSM_DEPTHS},
    "r2plus1d_18": Registered(R2Plus1DEncoder, "model"),
}
# builder(in_dim, its config section) → a TALHead (lofi.models.tal_head): features (B, C, L) → outputs
HEADS: Dict[str, Registered] = {
    "gtad": Registered(lambda in_dim, model: GTAD(in_dim, fused=model.gtad_fused), "model"),
    "bmn": Registered(lambda in_dim, section: BMN(in_dim, **asdict(section)), "bmn"),
    "actionformer": Registered(lambda in_dim, section: ActionFormer(in_dim, **asdict(section)), "actionformer"),
}


def _lookup(registry: Dict[str, Registered], kind: str, name: str) -> Registered:
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; choose from {list(registry)}")
    return registry[name]


def build_encoder(name: str = "tsm_r18", weights: Optional[str] = None, frozen_bn: bool = False,
                  channels_last: bool = False, checkpoint_chunks: int = 0, amp: bool = True) -> SnippetEncoder:
    """Builds a registered encoder by name and loads ``weights`` from a local file.

    ``weights``: a torchvision state dict, a LoFi checkpoint or an mmaction2 TSM checkpoint (see lofi.models.weights);
    None leaves the random initialization. ``checkpoint_chunks`` > 1 recomputes activations per chunk of snippets in
    backward. ``amp``: bf16 autocast when the input is on a GPU.
    """
    enc = _lookup(ENCODERS, "encoder", name).build(frozen_bn=frozen_bn, channels_last=channels_last,
                                                   checkpoint_chunks=checkpoint_chunks, amp=amp)
    if weights is not None:
        load_encoder_weights(enc, weights)
    return enc


def encoder_from_config(model, weights: Optional[str] = None, name: Optional[str] = None) -> SnippetEncoder:
    """The encoder ``model.encoder`` (or ``name``) names, built from the ``model`` config section, with ``weights``."""
    return build_encoder(name or model.encoder, weights=weights, frozen_bn=model.frozen_bn,
                         channels_last=model.channels_last, checkpoint_chunks=model.checkpoint_chunks, amp=model.amp)


def head_from_config(cfg, in_dim: int, name: Optional[str] = None) -> nn.Module:
    """The head ``cfg.model.head`` (or ``name``) names on ``in_dim``-channel snippet features, built from its config
    section of the run's Config ``cfg``."""
    registered = _lookup(HEADS, "head", name or cfg.model.head)
    return registered.build(in_dim, getattr(cfg, registered.section))
