"""``c-abstractor``: Honeybee's convolutional abstractor (seed 000 C1).

Reference: Cha et al., "Honeybee: Locality-enhanced Projector for Multimodal LLM", CVPR 2024
(kakaobrain/honeybee, ``CAbstractor``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import Bottleneck, Mlp, to_map, to_tokens
from .base import Projector
from .config import ProjectorConfig
from .errors import ProjectorError
from .output import ProjectorOutput


@dataclass
class ConvStackConfig(ProjectorConfig):
    """Fields shared by the convolutional abstractors (defaults: seed 000 ``c_abstractor_config``)."""

    hidden_dim: int = 2048
    """Width of the residual blocks (seed 000: ``hidden_channels`` 2048)."""
    output_grid: tuple[int, int] = (16, 16)
    """Adaptive-pooling target: the output token grid (seed 000: ``output_tokens`` 256 = 16×16)."""
    kernel_size: int = 3
    """Spatial kernel of each block's middle conv (seed 000: 3, stride 1, padding 1)."""
    bottleneck_ratio: float = 0.25
    """Middle width = round(hidden_dim · ratio) (ResNet bottleneck: 1/4; Honeybee/RegNet: 1)."""
    group_width: int = 0
    """Channels per group of the middle conv; 0 = dense conv (ResNet), 1 = depthwise (Honeybee/RegNet)."""
    se_reduction: int = 16
    """Squeeze-excitation squeezes the middle width by this factor (seed 000: 16); 0 disables SE."""
    act: str = "silu"
    """Activation of the blocks and of the readout MLP."""
    mlp_depth: int = 2
    """Linear layers of the readout MLP hidden_dim → output_dim (Honeybee: 2)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        gh, gw = self.output_grid
        if gh <= 0 or gw <= 0:
            raise ProjectorError(f"output_grid must be two positive ints, got {self.output_grid}")
        if self.kernel_size % 2 != 1:
            raise ProjectorError(f"kernel_size must be odd to keep the grid size, got {self.kernel_size}")
        mid = self.mid_dim
        if self.group_width and mid % self.group_width:
            raise ProjectorError(f"group_width={self.group_width} must divide the middle width {mid}")
        if self.se_reduction and mid // self.se_reduction < 1:
            raise ProjectorError(f"se_reduction={self.se_reduction} is larger than the middle width {mid}")

    @property
    def mid_dim(self) -> int:
        return max(1, round(self.hidden_dim * self.bottleneck_ratio))

    def block_args(self) -> dict[str, int]:
        mid = self.mid_dim
        groups = mid // self.group_width if self.group_width else 1
        return {"mid": mid, "kernel": self.kernel_size, "groups": groups, "se_reduced": self._se(mid)}

    def _se(self, mid: int) -> int:
        return mid // self.se_reduction if self.se_reduction else 0


@dataclass
class CAbstractorConfig(ConvStackConfig):
    """Options of ``c-abstractor``; the defaults are seed 000's ``c_abstractor_config``."""

    num_blocks: int = 6
    """Residual SE bottleneck blocks in total (seed 000: 6)."""
    blocks_before_pool: int = 3
    """How many of them run on the full grid before pooling (Honeybee: depth 3 before, 3 after)."""
    pos_emb: bool = False
    """Add a learnable position embedding to the input (Honeybee: yes)."""
    pos_emb_grid: tuple[int, int] = (24, 24)
    """Grid the position embedding is stored at; it is resized bilinearly to any input grid."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # Honeybee's C-Abstractor: RegNet stages (depthwise bottleneck, bottle ratio 1, SE ratio 0.25 ≈ mid/4)
        # of 3 blocks before and after pooling to 12×12, LayerNorm2d, SiLU, learnable position embedding.
        "honeybee": {
            "hidden_dim": 1024,
            "num_blocks": 6,
            "blocks_before_pool": 3,
            "output_grid": (12, 12),
            "bottleneck_ratio": 1.0,
            "group_width": 1,
            "se_reduction": 4,
            "act": "silu",
            "pos_emb": True,
            "mlp_depth": 2,
        }
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_blocks < 1 or not 0 <= self.blocks_before_pool <= self.num_blocks:
            raise ProjectorError(
                f"c-abstractor needs num_blocks >= 1 and 0 <= blocks_before_pool <= num_blocks, got "
                f"num_blocks={self.num_blocks}, blocks_before_pool={self.blocks_before_pool}"
            )


class CAbstractor(Projector):
    """SE bottleneck blocks → adaptive average pooling to a fixed grid → SE bottleneck blocks → MLP readout.

    Shapes: ``[B, N, C]`` (grid h×w, any size) → map ``[B, C, h, w]`` → blocks → ``[B, hidden, gh, gw]`` →
    ``[B, gh·gw, hidden]`` → MLP → ``[B, gh·gw, D]``. The pooled grid is fixed, so the token count is
    ``gh·gw`` whatever the input resolution.

    Parameters: ``Σ_blocks bottleneck(in, hidden) + MLP(hidden → D) [+ C·ph·pw position embedding]`` where a
    bottleneck has ``in·m + m²k²/g + m·hidden + SE(m, m/r) + 2(2m + hidden) [+ in·hidden + 2·hidden]``.
    """

    name = "c-abstractor"
    config_class = CAbstractorConfig

    def _build(self) -> None:
        c = self.config
        args = c.block_args()
        ins = [c.input_dim] + [c.hidden_dim] * (c.num_blocks - 1)
        blocks = [Bottleneck(i, c.hidden_dim, act=c.act, **args) for i in ins]
        self.before_pool = nn.ModuleList(blocks[: c.blocks_before_pool])
        self.after_pool = nn.ModuleList(blocks[c.blocks_before_pool :])
        self.readout = Mlp(c.hidden_dim, c.output_dim, c.output_dim, depth=c.mlp_depth, act=c.act)
        if c.pos_emb:
            self.pos_emb = nn.Parameter(torch.randn(1, c.input_dim, *c.pos_emb_grid) * 0.02)

    def _forward_frame(self, x: torch.Tensor, grid, **kwargs) -> ProjectorOutput:
        c = self.config
        x = to_map(x, grid)  # [B, C, h, w]
        if c.pos_emb:
            x = x + F.interpolate(self.pos_emb, size=grid, mode="bilinear", align_corners=False).to(x.dtype)
        for block in self.before_pool:
            x = self._maybe_checkpoint(block, x)  # [B, hidden, h, w]
        x = F.adaptive_avg_pool2d(x, c.output_grid)  # [B, hidden|C, gh, gw]
        for block in self.after_pool:
            x = self._maybe_checkpoint(block, x)  # [B, hidden, gh, gw]
        tokens = self.readout(to_tokens(x))  # [B, gh*gw, D]
        return ProjectorOutput(tokens=tokens, grid=tuple(c.output_grid))

    def _tokens_per_frame(self, grid) -> int:
        return self.config.output_grid[0] * self.config.output_grid[1]

    @classmethod
    def count_parameters(cls, config: CAbstractorConfig) -> int:
        c = config
        args = c.block_args()
        ins = [c.input_dim] + [c.hidden_dim] * (c.num_blocks - 1)
        total = sum(Bottleneck.count(i, c.hidden_dim, **args) for i in ins)
        total += Mlp.count(c.hidden_dim, c.output_dim, c.output_dim, c.mlp_depth)
        if c.pos_emb:
            total += c.input_dim * c.pos_emb_grid[0] * c.pos_emb_grid[1]
        return total
