"""``foveated-query``: one token per frame by attention pooling with a query (seed 003, foveated VLM).

Coarse pass: a learned static query attends over each frame's patches. Fine pass: the query comes from the
language model's hidden state (``query=`` ``[B, D_lm]`` or ``[B, T, D_lm]``), so the model looks again where the
text asks. ``deep_query`` refines the query through several attention layers (the ablation A1 turns it off).
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
class FoveatedQueryConfig(ProjectorConfig):
    """Options of ``foveated-query`` (defaults: seed 003)."""

    query_dim: int = 384
    """Width of the query/key space (seed 003: 384, DINOv2-small's width)."""
    heads: int = 1
    """Attention heads; 1 keeps a single foveation map per frame."""
    deep_query: bool = True
    """Refine the query through ``depth`` attention layers (True) or attend once (False, seed 003 A1)."""
    depth: int = 3
    """Query refinement layers when ``deep_query`` is on."""
    lm_dim: int = 0
    """Width of the LM hidden state given as ``query=`` for the fine pass; 0 = ``output_dim``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.query_dim < 1 or self.heads < 1 or self.query_dim % self.heads or self.depth < 1:
            raise ProjectorError(
                f"foveated-query: query_dim must be a positive multiple of heads and depth >= 1, got "
                f"query_dim={self.query_dim}, heads={self.heads}, depth={self.depth}"
            )

    @property
    def num_layers(self) -> int:
        return self.depth if self.deep_query else 1

    @property
    def query_source_dim(self) -> int:
        return self.lm_dim or self.output_dim


class _QueryLayer(nn.Module):
    """``q += W_o Attn(LN(q), W_k LN(x), W_v LN(x))``; ``q += FFN(LN(q))``."""

    def __init__(self, in_dim: int, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_x = nn.LayerNorm(in_dim)
        self.norm_q = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(in_dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.ff = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        )

    def forward(self, x: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.to_kv(self.norm_x(x)).chunk(2, dim=-1)  # [B, N, dq] each
        qh = split_heads(self.to_q(self.norm_q(q)), self.heads)  # [B, H, 1, d]
        out, weights = attend(qh, split_heads(k, self.heads), split_heads(v, self.heads))  # [B, H, 1, d]
        q = q + self.to_out(merge_heads(out))  # [B, 1, dq]
        q = q + self.ff(q)
        return q, weights.mean(dim=1)  # [B, 1, N]

    @staticmethod
    def count(in_dim: int, dim: int) -> int:
        return (
            2 * in_dim
            + 2 * dim
            + dim * dim
            + 2 * in_dim * dim
            + dim * dim
            + dim
            + 2 * dim
            + 8 * dim * dim
            + 5 * dim
        )


class FoveatedQueryProjector(Projector):
    """One token per frame: ``token_t = W_out q_L`` with ``q_0`` the static query or ``W_lm h_lm``.

    ``[B, T, N, C] → [B, T, D]``; ``out.attention`` ``[B, T, N]`` is the last layer's foveation map of each
    frame. Call once without ``query`` (coarse pass) and once with the LM hidden state (fine pass).

    Parameters: ``dq + D_lm·dq + dq + L·layer(C, dq) + dq·D + D`` with
    ``layer(C, dq) = 2C + 2C·dq + 10·dq² + 10·dq`` (LayerNorms, q/k/v/out projections, 4× FFN).
    """

    name = "foveated-query"
    config_class = FoveatedQueryConfig
    needs_grid = False
    extra_inputs = ("query",)

    def _build(self) -> None:
        c = self.config
        self.static_query = nn.Parameter(torch.randn(c.query_dim) * 0.02)
        self.query_proj = nn.Linear(c.query_source_dim, c.query_dim)
        self.layers = nn.ModuleList(
            _QueryLayer(c.input_dim, c.query_dim, c.heads) for _ in range(c.num_layers)
        )
        self.out_proj = nn.Linear(c.query_dim, c.output_dim)

    def _project(self, x: torch.Tensor, grid, query: torch.Tensor | None = None, **kwargs) -> ProjectorOutput:
        b, t, n, _ = x.shape
        frames = x.reshape(b * t, n, x.shape[-1])  # [B*T, N, C]
        if query is None:
            q = self.static_query.to(x.dtype).expand(b * t, 1, -1)  # [B*T, 1, dq]
        else:
            q = self.query_proj(self._per_frame_query(query, b, t).to(x.dtype))  # [B*T, 1, dq]
        weights = None
        for layer in self.layers:
            q, weights = self._maybe_checkpoint(layer, frames, q)  # [B*T, 1, dq]
        tokens = self.out_proj(q).reshape(b, t, -1)  # [B, T, D]
        return ProjectorOutput(tokens=tokens, attention=weights.reshape(b, t, n))

    def _per_frame_query(self, query: torch.Tensor, b: int, t: int) -> torch.Tensor:
        d = self.config.query_source_dim
        if query.dim() == 2 and query.shape == (b, d):
            return query.unsqueeze(1).expand(b, t, d).reshape(b * t, 1, d)
        if query.dim() == 3 and query.shape == (b, t, d):
            return query.reshape(b * t, 1, d)
        raise ProjectorError(
            f"foveated-query: query must be the LM hidden state [B={b}, D_lm={d}] or one per frame "
            f"[B, T={t}, D_lm], got {tuple(query.shape)}; set lm_dim= if the LM width differs from output_dim"
        )

    def _count_tokens(self, grid, num_frames: int) -> int:
        return num_frames

    @classmethod
    def count_parameters(cls, config: FoveatedQueryConfig) -> int:
        c = config
        total = c.query_dim + c.query_source_dim * c.query_dim + c.query_dim
        total += c.num_layers * _QueryLayer.count(c.input_dim, c.query_dim)
        return total + c.query_dim * c.output_dim + c.output_dim
