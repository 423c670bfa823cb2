"""``ldp``: MobileVLM V2's lightweight downsample projector (LDPv2).

Reference: Chu et al., "MobileVLM V2: Faster and Stronger Baseline for Vision Language Model", 2024
(Meituan-AutoML/MobileVLM, ``LDPNetV2Projector``: FeatureIRLayer → TokenDownLayer → PosInjectLayer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import Mlp, to_map, to_tokens
from .base import Projector
from .config import ProjectorConfig
from .errors import ProjectorError
from .output import ProjectorOutput


@dataclass
class LdpConfig(ProjectorConfig):
    """Options of ``ldp`` (defaults: MobileVLM V2, 144 tokens)."""

    output_grid: tuple[int, int] = (12, 12)
    """Average-pooling target (MobileVLM V2: 12×12 = 144 tokens from CLIP-L/336's 24×24)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.output_grid) < 1:
            raise ProjectorError(f"ldp: output_grid must be two positive ints, got {self.output_grid}")


class LdpProjector(Projector):
    """``y = MLP(x)`` (C → D → D, GELU) → adaptive average pool to 12×12 → ``y + DWConv3×3(y)`` (PEG).

    ``[B, h·w, D]`` → ``[B, gh·gw, D]``. Parameters: ``C·D + D + D² + D + 10·D`` (depthwise 3×3 + bias).
    """

    name = "ldp"
    config_class = LdpConfig

    def _build(self) -> None:
        c = self.config
        self.mlp = Mlp(c.input_dim, c.output_dim, c.output_dim, depth=2, act="gelu")
        self.peg = nn.Conv2d(c.output_dim, c.output_dim, 3, padding=1, groups=c.output_dim)

    def _forward_frame(self, x: torch.Tensor, grid, **kwargs) -> ProjectorOutput:
        y = to_map(self.mlp(x), grid)  # [B, D, h, w]
        y = F.adaptive_avg_pool2d(y, self.config.output_grid)  # [B, D, gh, gw]
        y = y + self.peg(y)  # positional encoding generator: a residual depthwise conv
        return ProjectorOutput(tokens=to_tokens(y), grid=tuple(self.config.output_grid))

    def _tokens_per_frame(self, grid) -> int:
        return self.config.output_grid[0] * self.config.output_grid[1]

    @classmethod
    def count_parameters(cls, config: LdpConfig) -> int:
        d = config.output_dim
        return Mlp.count(config.input_dim, d, d, 2) + 10 * d
