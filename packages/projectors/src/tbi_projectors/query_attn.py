"""``query-attn``: one cross-attention of learned queries over the projected features (seed 004 P3).

Seed 004 calls this projector "C-Abstractor", but it has no convolution: it is a single multi-head
cross-attention (a one-layer Q-Former/resampler without FFN). It is named here for what it is.
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
class QueryAttnConfig(ProjectorConfig):
    """Options of ``query-attn`` (defaults: seed 004 P3)."""

    num_queries: int = 64
    """Learned queries = output tokens (seed 004: 64)."""
    heads: int = 8
    """Attention heads (seed 004: ``nn.MultiheadAttention(llm_dim, num_heads=8)``); must divide output_dim."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_queries < 1 or self.heads < 1 or self.output_dim % self.heads:
            raise ProjectorError(
                f"query-attn: num_queries >= 1 and heads dividing output_dim={self.output_dim} are required, "
                f"got num_queries={self.num_queries}, heads={self.heads}"
            )


class QueryAttnProjector(Projector):
    """``out = MHA(Q, W_in x, W_in x)`` with learned ``Q`` ``[M, D]``: ``[B, T, N, C] → [B, M, D]``.

    Video frames are flattened to ``T·N`` keys (seed 004 feeds 8×576 tokens). ``out.attention`` is the
    head-averaged attention ``[B, M, T·N]``. Parameters: ``C·D + D + M·D + 4(D² + D)``.
    """

    name = "query-attn"
    config_class = QueryAttnConfig
    needs_grid = False

    def _build(self) -> None:
        c = self.config
        d = c.output_dim
        self.input_proj = nn.Linear(c.input_dim, d)
        self.queries = nn.Parameter(torch.randn(c.num_queries, d) * 0.02)
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def _project(self, x: torch.Tensor, grid, **kwargs) -> ProjectorOutput:
        b = x.shape[0]
        h = self.config.heads
        x = self.input_proj(x.reshape(b, -1, x.shape[-1]))  # [B, T*N, D]
        q = self.queries.to(x.dtype).unsqueeze(0).expand(b, -1, -1)  # [B, M, D]
        out, weights = attend(
            split_heads(self.q_proj(q), h), split_heads(self.k_proj(x), h), split_heads(self.v_proj(x), h)
        )  # [B, H, M, d]
        return ProjectorOutput(tokens=self.out_proj(merge_heads(out)), attention=weights.mean(dim=1))

    def _count_tokens(self, grid, num_frames: int) -> int:
        return self.config.num_queries

    @classmethod
    def count_parameters(cls, config: QueryAttnConfig) -> int:
        c, d = config, config.output_dim
        return c.input_dim * d + d + c.num_queries * d + 4 * (d * d + d)
