"""``multi-token``: 4×4 average-pooled patch tokens per frame, projected (seed 003 B1 baseline)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._layers import Mlp, to_map, to_tokens
from .base import Projector
from .config import ProjectorConfig
from .errors import ProjectorError
from .output import ProjectorOutput


@dataclass
class MultiTokenConfig(ProjectorConfig):
    """Options of ``multi-token`` (defaults: seed 003 B1, 16 tokens per frame)."""

    pool_grid: tuple[int, int] = (4, 4)
    """Adaptive average pooling target per frame (seed 003: 4×4 = 16 tokens)."""
    mlp_depth: int = 1
    """Linear layers of the projection to the LM width (seed 003: "project each to LLM dim" = 1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.pool_grid) < 1 or self.mlp_depth < 1:
            raise ProjectorError(f"multi-token: pool_grid and mlp_depth must be positive, got {self}")


class MultiTokenProjector(Projector):
    """``[B, h·w, C] → adaptive_avg_pool(4×4) → [B, 16, C] → MLP → [B, 16, D]`` per frame.

    Video ``[B, T, N, C]`` gives ``16·T`` tokens. Parameters: ``MLP(C → D, depth)`` = ``C·D + D`` for depth 1.
    """

    name = "multi-token"
    config_class = MultiTokenConfig

    def _build(self) -> None:
        c = self.config
        self.proj = Mlp(c.input_dim, c.output_dim, c.output_dim, depth=c.mlp_depth, act="gelu")

    def _forward_frame(self, x: torch.Tensor, grid, **kwargs) -> ProjectorOutput:
        pooled = F.adaptive_avg_pool2d(to_map(x, grid), self.config.pool_grid)  # [B, C, 4, 4]
        return ProjectorOutput(tokens=self.proj(to_tokens(pooled)), grid=tuple(self.config.pool_grid))

    def _tokens_per_frame(self, grid) -> int:
        return self.config.pool_grid[0] * self.config.pool_grid[1]

    @classmethod
    def count_parameters(cls, config: MultiTokenConfig) -> int:
        return Mlp.count(config.input_dim, config.output_dim, config.output_dim, config.mlp_depth)
