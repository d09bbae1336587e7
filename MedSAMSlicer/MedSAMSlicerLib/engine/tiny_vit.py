"""TinyViT image encoder of LiteMedSAM, written for inference.

The architecture is the MobileSAM variant of TinyViT (Wu et al., ECCV 2022) that LiteMedSAM distilled from MedSAM's
ViT-B.  Parameter and buffer names follow the official ``tiny_vit_sam.py`` so that the official ``lite_medsam.pth``
state dict loads with ``strict=True``; the training-only parts (drop path, gradient checkpointing, layer-wise learning
rate decay, timm registration) are left out because this project never trains.
"""

from __future__ import annotations

import itertools
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Conv2dBN(nn.Sequential):
    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_chans))


class PatchEmbed(nn.Module):
    """Two 1x1 convolutions; LiteMedSAM keeps the full 256x256 resolution here (MobileSAM used stride 2)."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, embed_dim // 2),
            nn.GELU(),
            Conv2dBN(embed_dim // 2, embed_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    def __init__(self, chans: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(chans * expand_ratio)
        self.conv1 = Conv2dBN(chans, hidden)
        self.act1 = nn.GELU()
        self.conv2 = Conv2dBN(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2dBN(hidden, chans)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.conv1(x))
        y = self.act2(self.conv2(y))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Downsamples by 2, except into the last stage, which stays at 64x64 (the mask decoder's grid)."""

    def __init__(self, resolution: tuple[int, int], dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.act = nn.GELU()
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, kernel_size=3, stride=stride, padding=1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:  # tokens (B, H*W, C) from an attention stage
            height, width = self.resolution
            x = x.view(x.shape[0], height, width, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


class _Stage(nn.Module):
    """Blocks in sequence, then an optional downsampling (the checkpoint's ``blocks.N`` and ``downsample``)."""

    def __init__(self, blocks: Iterable[nn.Module], downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class ConvLayer(_Stage):
    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging | None) -> None:
        super().__init__((MBConv(dim, expand_ratio) for _ in range(depth)), downsample)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class Attention(nn.Module):
    """Windowed multi-head attention with a learned bias per (|dy|, |dx|) offset, as in LeViT."""

    attention_bias_idxs: torch.Tensor  # a buffer (register_buffer): typed here, as nn.Module cannot know it

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.scale = self.key_dim ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

        points = list(itertools.product(range(window), range(window)))
        offsets: dict[tuple[int, int], int] = {}
        index = []
        for p1 in points:
            for p2 in points:
                offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                index.append(offsets.setdefault(offset, len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.tensor(index).view(len(points), len(points)),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(batch, tokens, self.num_heads, 3 * self.key_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.key_dim, dim=3)
        bias = self.attention_biases[:, self.attention_bias_idxs]
        attn = (q @ k.transpose(-2, -1)) * self.scale + bias
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class TinyViTBlock(nn.Module):
    def __init__(self, dim: int, resolution: tuple[int, int], num_heads: int, window: int, mlp_ratio: float,
                 local_conv_size: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = Attention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, kernel_size=local_conv_size, padding=local_conv_size // 2, groups=dim)

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        height, width = self.resolution
        batch, tokens, chans = x.shape
        w = self.window
        if height == w and width == w:
            return self.attn(x)
        grid = x.view(batch, height, width, chans)
        pad_b, pad_r = (w - height % w) % w, (w - width % w) % w
        if pad_b or pad_r:
            grid = F.pad(grid, (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = height + pad_b, width + pad_r
        nh, nw = ph // w, pw // w
        windows = grid.view(batch, nh, w, nw, w, chans).transpose(2, 3).reshape(batch * nh * nw, w * w, chans)
        windows = self.attn(windows)
        grid = windows.view(batch, nh, nw, w, w, chans).transpose(2, 3).reshape(batch, ph, pw, chans)
        return grid[:, :height, :width].reshape(batch, tokens, chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = self.resolution
        batch, tokens, chans = x.shape
        x = x + self._windowed_attention(x)
        x = self.local_conv(x.transpose(1, 2).reshape(batch, chans, height, width))
        x = x.view(batch, chans, tokens).transpose(1, 2)
        return x + self.mlp(x)


class BasicLayer(_Stage):
    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, num_heads: int, window: int,
                 mlp_ratio: float, local_conv_size: int, downsample: PatchMerging | None) -> None:
        super().__init__((TinyViTBlock(dim, resolution, num_heads, window, mlp_ratio, local_conv_size)
                          for _ in range(depth)), downsample)


class LayerNorm2d(nn.Module):
    def __init__(self, chans: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(chans))
        self.bias = nn.Parameter(torch.zeros(chans))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class TinyViT(nn.Module):
    """Image (B, 3, 256, 256) in [0, 1] -> embedding (B, 256, 64, 64)."""

    def __init__(self, img_size: int = 256, in_chans: int = 3, embed_dims: Sequence[int] = (64, 128, 160, 320),
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (2, 4, 5, 10),
                 window_sizes: Sequence[int] = (7, 7, 14, 7), mlp_ratio: float = 4.0,
                 mbconv_expand_ratio: float = 4.0, local_conv_size: int = 3, out_chans: int = 256) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        self.layers = nn.ModuleList()
        last = len(depths) - 1
        for i, depth in enumerate(depths):
            # Stages 0, 1, 2 halve the grid each time (256 -> 128 -> 64); stage 3 stays at 64x64.
            side = img_size // (2 ** (i - 1 if i == last else i))
            resolution = (side, side)
            downsample = None
            if i < last:
                out_dim = embed_dims[i + 1]
                stride = 1 if i + 1 == last else 2
                downsample = PatchMerging(resolution, embed_dims[i], out_dim, stride)
            if i == 0:
                layer: nn.Module = ConvLayer(embed_dims[0], depth, mbconv_expand_ratio, downsample)
            else:
                layer = BasicLayer(embed_dims[i], resolution, depth, num_heads[i], window_sizes[i], mlp_ratio,
                                   local_conv_size, downsample)
            self.layers.append(layer)
        self.grid = img_size // 4
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        batch, _, chans = x.shape
        x = x.view(batch, self.grid, self.grid, chans).permute(0, 3, 1, 2)
        return self.neck(x)
