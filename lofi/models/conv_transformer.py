"""The masked convolution + local-attention transformer that builds ActionFormer's feature pyramid (Zhang, Wu and
Li, ECCV 2022; the ``convTransformer`` backbone of the public release happyharrycn/actionformer_release, whose module
and parameter names and shapes these modules keep, so a state dict maps one to one).

Tensors are (B, C, T) with a bool mask (B, 1, T), True at valid positions (a prefix of each sequence). A module with
stride s maps position i·s of its input to position i of its output (mask' = mask[..., ::s]). Padded positions are 0
on every output, and no valid output depends on them: convolutions read zeros there (as the zero padding before a
sequence's start), max pooling skips them and attention never attends to them, so a valid output is the same for any
amount of padding. (The release lets the layer-norm biases at padded positions reach the convolutions at a
sequence's end.)
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import stochastic_depth

Masked = Tuple[torch.Tensor, torch.Tensor]


class MaskedConv1d(nn.Module):
    """Conv1d (odd kernel k, padding k // 2, stride s) of x·mask → (output·mask', mask'); the conv is ``conv``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 bias: bool = True):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"MaskedConv1d: the kernel size must be odd, got {kernel_size}")
        self.stride = stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups,
                              bias=bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> Masked:
        out_mask = mask[..., ::self.stride]
        return self.conv(x * mask) * out_mask, out_mask


class ChannelNorm(nn.Module):
    """Layer norm over the channels of (B, C, T); ``weight`` and ``bias`` are (1, C, 1)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, channels, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        C = x.shape[1]
        return F.layer_norm(x.transpose(1, 2), (C,), self.weight.view(C), self.bias.view(C), self.eps).transpose(1, 2)


def sinusoid_encoding(length: int, dim: int) -> torch.Tensor:
    """(1, dim, length): channel 2k of position t is sin(t / 10000^(2k/dim)), channel 2k + 1 its cos."""
    pos = torch.arange(length, dtype=torch.float64).view(-1, 1)
    channel = torch.arange(dim)
    angle = pos / 10000.0 ** (2 * (channel // 2) / dim).double()
    table = torch.where(channel % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.t().unsqueeze(0).float()


class MaskedConvAttention(nn.Module):
    """Multi-head self-attention whose queries, keys and values each pass a depthwise conv (kernel 3, or s + 1 at
    stride s > 1: the block's downsampling) and a layer norm before their 1×1 projections. ``window`` > 1 (odd): a
    query attends to the keys within window // 2 positions of it; ≤ 1: to all keys."""

    def __init__(self, dim: int, heads: int, window: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"MaskedConvAttention: dim={dim} is not divisible by heads={heads}")
        self.heads, self.window = heads, window
        kernel = stride + 1 if stride > 1 else 3
        for name in ("query", "key", "value"):
            setattr(self, f"{name}_conv", MaskedConv1d(dim, dim, kernel, stride, groups=dim, bias=False))
            setattr(self, f"{name}_norm", ChannelNorm(dim))
            setattr(self, name, nn.Conv1d(dim, dim, 1))
        self.proj = nn.Conv1d(dim, dim, 1)
        self.proj_drop = nn.Dropout(dropout)

    def _project(self, name: str, x: torch.Tensor, mask: torch.Tensor) -> Masked:
        """x → (B, heads, T', dim / heads), mask'."""
        y, out_mask = getattr(self, f"{name}_conv")(x, mask)
        y = getattr(self, name)(getattr(self, f"{name}_norm")(y))
        B, C, T = y.shape
        return y.view(B, self.heads, C // self.heads, T).transpose(2, 3), out_mask

    def allowed(self, mask: torch.Tensor) -> torch.Tensor:
        """mask (B, 1, T) → bool (B, 1, T, T) [query, key]: a valid key within the window, or the query itself (so
        that a padded query's row is never empty; its output is masked)."""
        T = mask.shape[-1]
        idx = torch.arange(T, device=mask.device)
        allowed = mask.unsqueeze(2).expand(-1, -1, T, -1)
        if self.window > 1:
            allowed = allowed & ((idx.view(-1, 1) - idx.view(1, -1)).abs() <= self.window // 2)
        return allowed | torch.eye(T, dtype=torch.bool, device=mask.device)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> Masked:
        q, out_mask = self._project("query", x, mask)
        k, _ = self._project("key", x, mask)
        v, _ = self._project("value", x, mask)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.allowed(out_mask))
        B, H, T, D = out.shape
        out = out.transpose(2, 3).reshape(B, H * D, T)
        return self.proj_drop(self.proj(out)) * out_mask, out_mask


class ScaledDropPath(nn.Module):
    """x → per-sample stochastic depth of ``scale``·x (``scale`` (1, C, 1), a learnable per-channel scale initialized
    to 1e-4, as the release's AffineDropPath)."""

    def __init__(self, dim: int, p: float, init_scale: float = 1e-4):
        super().__init__()
        self.p = p
        self.scale = nn.Parameter(torch.full((1, dim, 1), init_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stochastic_depth(self.scale * x, self.p, "row", self.training)


class TransformerBlock(nn.Module):
    """Pre-LN transformer block: x·mask' (max-pooled, kernel s + 1, at stride s > 1) + attention(norm(x)), then +
    MLP(norm(·)) (1×1 convs dim → 4·dim → dim, GELU, dropout). ``drop_path`` > 0: both branches pass a
    ScaledDropPath (``drop_path_attn``, ``drop_path_mlp``)."""

    def __init__(self, dim: int, heads: int, window: int, stride: int = 1, dropout: float = 0.0,
                 drop_path: float = 0.0):
        super().__init__()
        self.stride = stride
        self.ln1, self.ln2 = ChannelNorm(dim), ChannelNorm(dim)
        self.attn = MaskedConvAttention(dim, heads, window, stride, dropout)
        self.mlp = nn.Sequential(nn.Conv1d(dim, 4 * dim, 1), nn.GELU(), nn.Dropout(dropout), nn.Conv1d(4 * dim, dim, 1),
                                 nn.Dropout(dropout))
        if drop_path > 0:
            self.drop_path_attn, self.drop_path_mlp = ScaledDropPath(dim, drop_path), ScaledDropPath(dim, drop_path)
        else:
            self.drop_path_attn = self.drop_path_mlp = nn.Identity()

    def skip(self, x: torch.Tensor, mask: torch.Tensor, out_mask: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x * out_mask
        s = self.stride
        pooled = F.max_pool1d(x.masked_fill(~mask, float("-inf")), s + 1, s, (s + 1) // 2)
        return torch.where(out_mask, pooled, torch.zeros((), dtype=x.dtype, device=x.device))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> Masked:
        out, out_mask = self.attn(self.ln1(x), mask)
        out = self.skip(x, mask, out_mask) + self.drop_path_attn(out)
        return out + self.drop_path_mlp(self.mlp(self.ln2(out)) * out_mask), out_mask


class ConvTransformer(nn.Module):
    """features (B, in_dim, T), mask → a pyramid of ``arch[2]`` + 1 levels (B, dim, T / 2^l) with their masks.

    ``arch`` = (embedding convs, stem blocks, branch blocks): ``embd`` convs (kernel ``kernel_size``, no bias) each
    followed by ``embd_norm`` and ReLU; with ``use_abs_pe`` the sinusoid position encoding / √dim (interpolated
    linearly when T > ``max_len``); ``stem`` blocks at stride 1 (window ``windows[0]``) give level 0, each ``branch``
    block halves the length (window ``windows[1 + i]``) and gives level i + 1. T must divide by 2^arch[2].
    """

    def __init__(self, in_dim: int, dim: int, heads: int, windows: Sequence[int], arch: Sequence[int] = (2, 2, 5),
                 kernel_size: int = 3, max_len: int = 768, use_abs_pe: bool = True, dropout: float = 0.0,
                 drop_path: float = 0.0):
        super().__init__()
        if len(arch) != 3 or len(windows) != arch[2] + 1:
            raise ValueError(f"ConvTransformer: arch {list(arch)} needs 3 entries and arch[2] + 1 windows, "
                             f"got {list(windows)}")
        self.max_len, self.use_abs_pe = max_len, use_abs_pe
        self.embd = nn.ModuleList(MaskedConv1d(in_dim if i == 0 else dim, dim, kernel_size, bias=False)
                                  for i in range(arch[0]))
        self.embd_norm = nn.ModuleList(ChannelNorm(dim) for _ in range(arch[0]))
        if use_abs_pe:
            self.register_buffer("pos_embd", sinusoid_encoding(max_len, dim) / dim ** 0.5, persistent=False)
        block = dict(dropout=dropout, drop_path=drop_path)
        self.stem = nn.ModuleList(TransformerBlock(dim, heads, windows[0], 1, **block) for _ in range(arch[1]))
        self.branch = nn.ModuleList(TransformerBlock(dim, heads, windows[1 + i], 2, **block) for i in range(arch[2]))
        for m in self.modules():  # the release's init: every conv bias 0
            if isinstance(m, nn.Conv1d) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def position_encoding(self, T: int) -> torch.Tensor:
        """(1, dim, T)."""
        if T > self.max_len:
            return F.interpolate(self.pos_embd, T, mode="linear", align_corners=False)
        return self.pos_embd[..., :T]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        for conv, norm in zip(self.embd, self.embd_norm):
            x, mask = conv(x, mask)
            x = F.relu(norm(x)) * mask
        if self.use_abs_pe:
            x = x + self.position_encoding(x.shape[-1]).to(x.dtype) * mask
        for block in self.stem:
            x, mask = block(x, mask)
        feats, masks = [x], [mask]
        for block in self.branch:
            x, mask = block(x, mask)
            feats.append(x)
            masks.append(mask)
        return feats, masks
