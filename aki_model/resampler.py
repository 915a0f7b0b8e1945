"""Perceiver resampler: a fixed number of learned latents cross-attend to the image features.

Parameter names follow the released AKI checkpoint's ``vision_tokenizer.*`` layout (an
OpenFlamingo-style resampler), so those weights load without renaming:
``latents``, ``layers.{i}.0.{norm_media,norm_latents,to_q,to_kv,to_out}``,
``layers.{i}.1.{0,1,3}`` (LayerNorm, Linear, GELU, Linear), ``norm``, ``projection``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class PerceiverAttention(nn.Module):
    """Latents attend to [image features; latents] (keys/values), one head group per latent set."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = dim_head * heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        # media [N, v, dim], latents [N, n, dim]
        media, latents = self.norm_media(media), self.norm_latents(latents)
        N, n, _ = latents.shape
        h, d = self.heads, self.dim_head
        q = self.to_q(latents).view(N, n, h, d).transpose(1, 2)
        kv = self.to_kv(torch.cat([media, latents], dim=1))
        k, v = kv.view(N, kv.shape[1], 2, h, d).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # no mask: every latent sees every feature
        return self.to_out(out.transpose(1, 2).reshape(N, n, h * d))


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    inner = int(dim * mult)
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(), nn.Linear(inner, dim, bias=False))


class PerceiverResampler(nn.Module):
    """[N, v, dim] image features -> [N, num_latents, dim_inner] visual tokens.

    Args:
        dim: width of the vision encoder's features.
        dim_inner: width of the LLM (the output is projected to it); None keeps ``dim``.
        depth, dim_head, heads, ff_mult: transformer shape.
        num_latents: visual tokens per image (AKI: 144).
    """

    def __init__(self, dim: int, dim_inner: Optional[int] = None, depth: int = 6, dim_head: int = 96,
                 heads: int = 16, num_latents: int = 144, ff_mult: int = 4):
        super().__init__()
        self.num_latents = num_latents
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)  # small: visual tokens start image-driven
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), feed_forward(dim, ff_mult)]) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.projection = nn.Linear(dim, dim_inner) if dim_inner is not None else None

    def forward(self, media: torch.Tensor) -> torch.Tensor:
        x = self.latents.to(media.dtype).expand(media.shape[0], -1, -1)
        for attn, ff in self.layers:
            x = attn(media, x) + x
            x = ff(x) + x
        x = self.norm(x)
        return self.projection(x) if self.projection is not None else x
