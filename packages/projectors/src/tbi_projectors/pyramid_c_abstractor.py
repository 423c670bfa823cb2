"""``pyramid-c-abstractor``: multi-scale C-Abstractor (seed 000 C2, ``pyramid_c_abstractor_config``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import Bottleneck, Mlp, to_map, to_tokens
from .base import Projector
from .c_abstractor import ConvStackConfig
from .errors import ProjectorError
from .output import ProjectorOutput


@dataclass
class PyramidCAbstractorConfig(ConvStackConfig):
    """Options of ``pyramid-c-abstractor``; conv-stack fields inherit the ``c-abstractor`` defaults."""

    num_scales: int = 3
    """Feature maps taken from the encoder (seed 000: layers 8/16/24 → L1_low, L2_mid, L3_high)."""
    input_dims: tuple[int, ...] = ()
    """Channels of each scale; empty = every scale has ``input_dim`` (seed's fusion_channels: 1024/2048/4096)."""
    branch_dim: int = 1024
    """Width of each per-scale branch before fusion."""
    blocks_per_scale: int = 1
    """SE bottleneck blocks per scale on its full grid, before that scale is pooled."""
    blocks_after_fusion: int = 3
    """SE bottleneck blocks after the conv-bottleneck fusion (on the pooled grid)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_scales < 1:
            raise ProjectorError(f"pyramid-c-abstractor: num_scales must be >= 1, got {self.num_scales}")
        if self.input_dims and len(self.input_dims) != self.num_scales:
            raise ProjectorError(
                f"pyramid-c-abstractor: input_dims has {len(self.input_dims)} entries for num_scales="
                f"{self.num_scales}; give one channel count per scale"
            )
        if self.blocks_per_scale < 1 or self.blocks_after_fusion < 0:
            raise ProjectorError("pyramid-c-abstractor: blocks_per_scale >= 1 and blocks_after_fusion >= 0")

    def scale_dims(self) -> list[int]:
        return list(self.input_dims) if self.input_dims else [self.input_dim] * self.num_scales

    def branch_block_args(self) -> dict[str, int]:
        mid = max(1, round(self.branch_dim * self.bottleneck_ratio))
        groups = mid // self.group_width if self.group_width else 1
        return {"mid": mid, "kernel": self.kernel_size, "groups": groups, "se_reduced": self._se(mid)}


class PyramidCAbstractor(Projector):
    """Per-scale SE blocks + adaptive pooling, conv-bottleneck fusion across scales, SE blocks, MLP readout.

    For each scale s: ``[B, N_s, C_s]`` (grid h_s×w_s) → blocks → ``[B, branch, h_s, w_s]`` → adaptive pool
    → ``[B, branch, gh, gw]``. Concatenate on channels → ``[B, S·branch, gh, gw]`` → fusion bottleneck →
    ``[B, hidden, gh, gw]`` → blocks → ``[B, gh·gw, hidden]`` → MLP → ``[B, gh·gw, D]`` (same 256 tokens as
    ``c-abstractor`` for a fair comparison). Scales may have different grids and channel counts.
    """

    name = "pyramid-c-abstractor"
    config_class = PyramidCAbstractorConfig
    multi_scale = True

    def _build(self) -> None:
        c = self.config
        bargs = c.branch_block_args()
        self.branches = nn.ModuleList(
            nn.ModuleList(
                Bottleneck(dim if i == 0 else c.branch_dim, c.branch_dim, act=c.act, **bargs)
                for i in range(c.blocks_per_scale)
            )
            for dim in c.scale_dims()
        )
        args = c.block_args()
        self.fusion = Bottleneck(c.num_scales * c.branch_dim, c.hidden_dim, act=c.act, **args)
        self.blocks = nn.ModuleList(
            Bottleneck(c.hidden_dim, c.hidden_dim, act=c.act, **args) for _ in range(c.blocks_after_fusion)
        )
        self.readout = Mlp(c.hidden_dim, c.output_dim, c.output_dim, depth=c.mlp_depth, act=c.act)

    def _input_dims(self) -> list[int]:
        return self.config.scale_dims()

    def _num_scales(self) -> int:
        return self.config.num_scales

    def _forward_frame(self, xs: list[torch.Tensor], grids, **kwargs) -> ProjectorOutput:
        c = self.config
        pooled = []
        for x, grid, branch in zip(xs, grids, self.branches):
            y = to_map(x, grid)  # [B, C_s, h_s, w_s]
            for block in branch:
                y = self._maybe_checkpoint(block, y)  # [B, branch, h_s, w_s]
            pooled.append(F.adaptive_avg_pool2d(y, c.output_grid))  # [B, branch, gh, gw]
        y = self._maybe_checkpoint(self.fusion, torch.cat(pooled, dim=1))  # [B, hidden, gh, gw]
        for block in self.blocks:
            y = self._maybe_checkpoint(block, y)  # [B, hidden, gh, gw]
        tokens = self.readout(to_tokens(y))  # [B, gh*gw, D]
        return ProjectorOutput(tokens=tokens, grid=tuple(c.output_grid))

    def _tokens_per_frame(self, grids) -> int:
        return self.config.output_grid[0] * self.config.output_grid[1]

    @classmethod
    def count_parameters(cls, config: PyramidCAbstractorConfig) -> int:
        c = config
        bargs, args = c.branch_block_args(), c.block_args()
        total = 0
        for dim in c.scale_dims():
            total += Bottleneck.count(dim, c.branch_dim, **bargs)
            total += (c.blocks_per_scale - 1) * Bottleneck.count(c.branch_dim, c.branch_dim, **bargs)
        total += Bottleneck.count(c.num_scales * c.branch_dim, c.hidden_dim, **args)
        total += c.blocks_after_fusion * Bottleneck.count(c.hidden_dim, c.hidden_dim, **args)
        return total + Mlp.count(c.hidden_dim, c.output_dim, c.output_dim, c.mlp_depth)
