"""Snippet encoders: TSM-ResNet (18/34/50) and R(2+1)D-18 over uint8 frames (B, L, T, 3, H, W) → features (B, C, L).

Every snippet of T frames is encoded independently (a TSM clip, or an R(2+1)D clip), so nothing crosses snippet
boundaries and the encoder can be chunked over snippets for activation checkpointing (OpenTAD's temporal checkpointing).
"""
import torch
import torchvision
from torch import nn
from torch.utils.checkpoint import checkpoint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's video models (R(2+1)D-18 on Kinetics-400) were trained with these statistics.
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)

TSM_DEPTHS = {"tsm_r18": torchvision.models.resnet18, "tsm_r34": torchvision.models.resnet34,
              "tsm_r50": torchvision.models.resnet50}


def temporal_shift(x: torch.Tensor, segments: int, fold_div: int = 8) -> torch.Tensor:
    """TSM shift of (N·segments, C, H, W), clips contiguous along dim 0; out of place, zero padded.

    Channels [0, C/fold_div) take the next frame's values, [C/fold_div, 2C/fold_div) the previous frame's.
    """
    nt, c, h, w = x.shape
    if nt % segments:
        raise ValueError(f"temporal_shift: batch {nt} is not a multiple of segments={segments}")
    fold = c // fold_div
    x5 = x.view(nt // segments, segments, c, h, w)
    out = torch.zeros_like(x5)
    out[:, :-1, :fold] = x5[:, 1:, :fold]
    out[:, 1:, fold:2 * fold] = x5[:, :-1, fold:2 * fold]
    out[:, :, 2 * fold:] = x5[:, :, 2 * fold:]
    return out.view(nt, c, h, w)


class ShiftConv2d(nn.Conv2d):
    """A Conv2d preceded by the temporal shift; same parameters (and state-dict keys) as the conv it replaces.

    ``segments`` (frames per clip) is set by the encoder before every forward, so T may change between batches.
    """

    segments: int = 1
    fold_div: int = 8

    @classmethod
    def wrap(cls, conv: nn.Conv2d, fold_div: int) -> "ShiftConv2d":
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                  conv.groups, conv.bias is not None, conv.padding_mode)
        new.load_state_dict(conv.state_dict())
        new.fold_div = fold_div
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(temporal_shift(x, self.segments, self.fold_div))


class SnippetEncoder(nn.Module):
    """Base: uint8 normalization on the device, snippet chunking/checkpointing, frozen BN, bf16 autocast on CUDA.

    Subclasses implement ``encode_snippets(x float (N, T, 3, H, W)) -> (N, C)``.
    """

    def __init__(self, out_dim: int, mean, std, frozen_bn: bool, channels_last: bool, checkpoint_chunks: int,
                 amp: bool):
        super().__init__()
        if checkpoint_chunks < 0:
            raise ValueError(f"checkpoint_chunks must be >= 0, got {checkpoint_chunks}")
        self.out_dim = out_dim
        self.frozen_bn = frozen_bn
        self.channels_last = channels_last
        self.checkpoint_chunks = checkpoint_chunks
        self.amp = amp
        std = torch.tensor(std) * 255.0
        self.register_buffer("scale", (1.0 / std).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", (-torch.tensor(mean) * 255.0 / std).view(1, 1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        """With ``frozen_bn`` every BatchNorm stays in eval mode (running statistics frozen; affine still trained)."""
        super().train(mode)
        if self.frozen_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def _snippets(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, T, 3, H, W) → float32 (N, C)."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp and x.is_cuda):
            x = x.float() * self.scale + self.shift
            return self.encode_snippets(x).float()

    def _once_updating_bn(self):
        """``_snippets`` for one checkpointed chunk: its recomputation in backward leaves BN running statistics alone
        (momentum 0), so each chunk updates them once, as a forward of that chunk alone would."""
        calls = []

        def run(x):
            if not calls:
                calls.append(True)
                return self._snippets(x)
            bns = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
            saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
                     for m in bns]
            for m in bns:
                m.momentum = 0.0
            try:
                return self._snippets(x)
            finally:
                for m, (momentum, tracked) in zip(bns, saved):
                    m.momentum = momentum
                    if tracked is not None:
                        m.num_batches_tracked.copy_(tracked)
        return run

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames uint8 (B, L, T, 3, H, W) → snippet features float32 (B, C, L)."""
        if frames.dim() != 6 or frames.shape[3] != 3:
            raise ValueError(f"{type(self).__name__}: expected frames (B, L, T, 3, H, W), got {tuple(frames.shape)}")
        if frames.dtype != torch.uint8:
            raise TypeError(f"{type(self).__name__}: expected uint8 frames, got {frames.dtype}")
        b, l = frames.shape[:2]
        x = frames.flatten(0, 1)
        chunks = min(self.checkpoint_chunks, x.shape[0])
        if chunks > 1 and torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            feats = torch.cat([checkpoint(self._once_updating_bn(), c, use_reentrant=False) for c in x.chunk(chunks)])
        else:
            feats = self._snippets(x)
        return feats.view(b, l, -1).transpose(1, 2)

    def encode_snippets(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TSMEncoder(SnippetEncoder):
    """TSM on a torchvision ResNet: the shift sits in the residual branch of every block (before conv1).

    The snippet feature is the mean over its T frames of the globally pooled frame vectors.
    """

    def __init__(self, depth: str = "tsm_r18", fold_div: int = 8, frozen_bn: bool = False,
                 channels_last: bool = False, checkpoint_chunks: int = 0, amp: bool = True):
        if depth not in TSM_DEPTHS:
            raise ValueError(f"unknown TSM depth {depth!r}; choose from {sorted(TSM_DEPTHS)}")
        backbone = TSM_DEPTHS[depth](weights=None)
        out_dim = backbone.fc.in_features
        super().__init__(out_dim, IMAGENET_MEAN, IMAGENET_STD, frozen_bn, channels_last, checkpoint_chunks, amp)
        backbone.fc = nn.Identity()
        self.shifts = []
        for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4):
            for block in layer:
                block.conv1 = ShiftConv2d.wrap(block.conv1, fold_div)
                self.shifts.append(block.conv1)
        self.backbone = backbone.to(memory_format=torch.channels_last) if channels_last else backbone

    def encode_snippets(self, x: torch.Tensor) -> torch.Tensor:
        n, t = x.shape[:2]
        for s in self.shifts:  # set here, so checkpoint recomputation sees the same T
            s.segments = t
        x = x.flatten(0, 1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x).view(n, t, -1).mean(1)


class R2Plus1DEncoder(SnippetEncoder):
    """torchvision R(2+1)D-18; each snippet of T frames is one clip; feature = its globally pooled 512-d vector.

    Normalized with the Kinetics statistics torchvision's video weights were trained with.
    """

    def __init__(self, frozen_bn: bool = False, channels_last: bool = False, checkpoint_chunks: int = 0,
                 amp: bool = True):
        backbone = torchvision.models.video.r2plus1d_18(weights=None)
        out_dim = backbone.fc.in_features
        super().__init__(out_dim, KINETICS_MEAN, KINETICS_STD, frozen_bn, channels_last, checkpoint_chunks, amp)
        backbone.fc = nn.Identity()
        self.backbone = backbone.to(memory_format=torch.channels_last_3d) if channels_last else backbone

    def encode_snippets(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)  # (N, 3, T, H, W)
        x = x.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else x.contiguous()
        return self.backbone(x)
