"""``linear``: one linear map per token (LLaVA-1 / seed 004 P1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._layers import linear_params
from .base import Projector
from .config import ProjectorConfig
from .errors import ProjectorError
from .output import ProjectorOutput


@dataclass
class LinearConfig(ProjectorConfig):
    """``linear`` has only the shared fields (input_dim, output_dim, seed)."""


class LinearProjector(Projector):
    """``y = W x + b`` applied to every token: ``[B, N, C] → [B, N, D]``; parameters ``C·D + D``."""

    name = "linear"
    config_class = LinearConfig
    needs_grid = False

    def _build(self) -> None:
        self.proj = nn.Linear(self.config.input_dim, self.config.output_dim)

    def _forward_frame(self, x: torch.Tensor, grid, **kwargs) -> ProjectorOutput:
        return ProjectorOutput(tokens=self.proj(x), grid=grid)  # [B, N, D]

    def _tokens_per_frame(self, grid) -> int:
        if grid is None:
            raise ProjectorError(f"{self.name} keeps every token: pass grid=(h, w) to num_output_tokens")
        return grid[0] * grid[1]

    @classmethod
    def count_parameters(cls, config: LinearConfig) -> int:
        return linear_params(config.input_dim, config.output_dim)
