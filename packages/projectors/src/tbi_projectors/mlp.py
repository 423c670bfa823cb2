"""``mlp2x_gelu``: the LLaVA-1.5 projector (seed 000 A1, seed 004 P2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._layers import Mlp
from .base import Projector
from .config import ProjectorConfig
from .errors import ProjectorError
from .output import ProjectorOutput


@dataclass
class MlpConfig(ProjectorConfig):
    """Options of ``mlp2x_gelu``."""

    depth: int = 2
    """Number of linear layers (LLaVA-1.5's ``mlp2x_gelu`` = 2)."""
    act: str = "gelu"
    """Activation between the layers."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.depth < 1:
            raise ProjectorError(f"mlp2x_gelu: depth must be >= 1, got {self.depth}")


class MlpProjector(Projector):
    """``y = W2 GELU(W1 x + b1) + b2`` per token, ``C → D → D``: ``[B, N, C] → [B, N, D]``.

    Parameters: ``C·D + D + (depth-1)(D·D + D)``.
    """

    name = "mlp2x_gelu"
    config_class = MlpConfig
    needs_grid = False

    def _build(self) -> None:
        c = self.config
        self.mlp = Mlp(c.input_dim, c.output_dim, c.output_dim, depth=c.depth, act=c.act)

    def _forward_frame(self, x: torch.Tensor, grid, **kwargs) -> ProjectorOutput:
        return ProjectorOutput(tokens=self.mlp(x), grid=grid)  # [B, N, D]

    def _tokens_per_frame(self, grid) -> int:
        if grid is None:
            raise ProjectorError(f"{self.name} keeps every token: pass grid=(h, w) to num_output_tokens")
        return grid[0] * grid[1]

    @classmethod
    def count_parameters(cls, config: MlpConfig) -> int:
        return Mlp.count(config.input_dim, config.output_dim, config.output_dim, config.depth)
