"""``perceiver``: Flamingo's Perceiver Resampler (seed 004 P4).

Reference: Alayrac et al., "Flamingo: a Visual Language Model for Few-Shot Learning", NeurIPS 2022;
lucidrains/flamingo-pytorch and mlfoundations/open_flamingo (``PerceiverResampler``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._layers import attend, merge_heads, split_heads
from .base import Projector
from .config import ProjectorConfig
from .errors import ProjectorError
from .output import ProjectorOutput


@dataclass
class PerceiverConfig(ProjectorConfig):
    """Options of ``perceiver`` (defaults: Flamingo's resampler with seed 004's 64 latents and 2 layers)."""

    num_latents: int = 64
    """Learned latent queries = output tokens (Flamingo and seed 004: 64)."""
    depth: int = 2
    """Cross-attention + FFN layers (seed 004 P4: 2; Flamingo: 6)."""
    heads: int = 8
    """Attention heads (Flamingo: 8)."""
    dim_head: int = 64
    """Width per head (Flamingo: 64)."""
    ff_mult: int = 4
    """FFN expansion (Flamingo: 4)."""
    max_frames: int = 8
    """Learned frame (time) embeddings: the longest video accepted (seed 004: 8 frames)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("num_latents", "depth", "heads", "dim_head", "ff_mult", "max_frames"):
            if getattr(self, key) < 1:
                raise ProjectorError(f"perceiver: {key} must be >= 1, got {getattr(self, key)}")


class _PerceiverLayer(nn.Module):
    """``latents += Attn(q=LN(latents), kv=[LN(media); LN(latents)])``; ``latents += FFN(latents)``."""

    def __init__(self, dim: int, heads: int, dim_head: int, ff_mult: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.ff = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, ff_mult * dim, bias=False),
            nn.GELU(),
            nn.Linear(ff_mult * dim, dim, bias=False),
        )

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.norm_media(media)  # [B, N, D]
        lat = self.norm_latents(latents)  # [B, M, D]
        q = split_heads(self.to_q(lat), self.heads)  # [B, H, M, d]
        k, v = self.to_kv(torch.cat([x, lat], dim=1)).chunk(2, dim=-1)  # [B, N+M, H*d] each
        out, weights = attend(q, split_heads(k, self.heads), split_heads(v, self.heads))  # [B, H, M, d]
        latents = latents + self.to_out(merge_heads(out))  # [B, M, D]
        latents = latents + self.ff(latents)
        return latents, weights[..., : media.shape[1]].mean(dim=1)  # attention over media: [B, M, N]

    @staticmethod
    def count(dim: int, heads: int, dim_head: int, ff_mult: int) -> int:
        inner = heads * dim_head
        return 6 * dim + 4 * dim * inner + 2 * ff_mult * dim * dim


class PerceiverResampler(Projector):
    """Learned latents cross-attend to the projected features: ``[B, T, N, C] → [B, num_latents, D]``.

    ``x = W_in x + e_t`` (``e_t`` a learned per-frame embedding), flatten frames to ``[B, T·N, D]``, then
    ``depth`` layers of ``latents += Attn(latents, [x; latents]) ; latents += FFN(latents)`` and a final
    LayerNorm. Keys/values include the latents themselves, as in Flamingo. ``out.attention`` is the last
    layer's head-averaged attention of each latent over the ``T·N`` input tokens.

    Parameters: ``C·D + D + T_max·D + M·D + depth·(6D + 4·D·H·d + 2·mult·D²) + 2D``.
    """

    name = "perceiver"
    config_class = PerceiverConfig
    needs_grid = False

    def _build(self) -> None:
        c = self.config
        d = c.output_dim
        self.input_proj = nn.Linear(c.input_dim, d)
        self.frame_emb = nn.Parameter(torch.randn(c.max_frames, 1, d) * 0.02)
        self.latents = nn.Parameter(torch.randn(c.num_latents, d))
        self.layers = nn.ModuleList(
            _PerceiverLayer(d, c.heads, c.dim_head, c.ff_mult) for _ in range(c.depth)
        )
        self.norm = nn.LayerNorm(d)

    def _project(self, x: torch.Tensor, grid, **kwargs) -> ProjectorOutput:
        b, t = x.shape[:2]
        if t > self.config.max_frames:
            raise ProjectorError(
                f"perceiver got {t} frames but has frame embeddings for max_frames={self.config.max_frames}; "
                f"rebuild with max_frames>={t} or sample fewer frames"
            )
        x = self.input_proj(x) + self.frame_emb[:t].to(x.dtype)  # [B, T, N, D]
        x = x.reshape(b, -1, x.shape[-1])  # [B, T*N, D]
        latents = self.latents.to(x.dtype).unsqueeze(0).expand(b, -1, -1)  # [B, M, D]
        weights = None
        for layer in self.layers:
            latents, weights = self._maybe_checkpoint(layer, x, latents)  # [B, M, D]
        return ProjectorOutput(tokens=self.norm(latents), attention=weights)

    def _count_tokens(self, grid, num_frames: int) -> int:
        return self.config.num_latents

    @classmethod
    def count_parameters(cls, config: PerceiverConfig) -> int:
        c, d = config, config.output_dim
        layer = _PerceiverLayer.count(d, c.heads, c.dim_head, c.ff_mult)
        return c.input_dim * d + d + c.max_frames * d + c.num_latents * d + c.depth * layer + 2 * d
