"""``pixel-shuffle-mlp``: InternVL's 2×2 pixel unshuffle + MLP (InternVL 1.5/2/2.5 ``mlp1``).

Reference: Chen et al., "How Far Are We to GPT-4V? (InternVL 1.5)", 2024 (OpenGVLab/InternVL,
``InternVLChatModel.pixel_shuffle`` with ``ps_version='v2'`` and ``mlp1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import Mlp
from .base import Projector
from .config import ProjectorConfig
from .errors import ProjectorError
from .output import ProjectorOutput


@dataclass
class PixelShuffleConfig(ProjectorConfig):
    """Options of ``pixel-shuffle-mlp`` (defaults: InternVL, downsample ratio 0.5)."""

    factor: int = 2
    """Side of the square of patches merged into one token (InternVL: 2, i.e. 4× fewer tokens)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.factor < 1:
            raise ProjectorError(f"pixel-shuffle-mlp: factor must be >= 1, got {self.factor}")


def space_to_depth(
    x: torch.Tensor, grid: tuple[int, int], factor: int
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Merge each ``factor×factor`` square of patches into one token with channels ordered ``(dy, dx, c)``.

    ``[B, h·w, C] → [B, ⌈h/f⌉·⌈w/f⌉, f²·C]``; the output token ``(i, j)`` holds
    ``concat_{dy, dx} x[f·i + dy, f·j + dx]``, the channel order of InternVL's ``pixel_shuffle`` (v2).
    Odd grids are padded by repeating the last row/column (InternVL requires even grids).
    """
    b, _, c = x.shape
    h, w = grid
    oh, ow = -(-h // factor), -(-w // factor)
    x = x.reshape(b, h, w, c)
    if (oh * factor, ow * factor) != (h, w):
        x = F.pad(x.permute(0, 3, 1, 2), (0, ow * factor - w, 0, oh * factor - h), mode="replicate")
        x = x.permute(0, 2, 3, 1)  # [B, oh*f, ow*f, C]
    x = x.reshape(b, oh, factor, ow, factor, c).permute(0, 1, 3, 2, 4, 5)  # [B, oh, ow, dy, dx, C]
    return x.reshape(b, oh * ow, factor * factor * c), (oh, ow)


class PixelShuffleMlp(Projector):
    """``x → space_to_depth(x, 2) → LayerNorm → Linear(4C, D) → GELU → Linear(D, D)``.

    ``[B, h·w, C] → [B, ⌈h/2⌉·⌈w/2⌉, D]``, output grid ``(⌈h/2⌉, ⌈w/2⌉)``.
    Parameters: ``2·f²C + f²C·D + D + D² + D``.
    """

    name = "pixel-shuffle-mlp"
    config_class = PixelShuffleConfig

    def _build(self) -> None:
        c = self.config
        width = c.factor * c.factor * c.input_dim
        self.norm = nn.LayerNorm(width)
        self.mlp = Mlp(width, c.output_dim, c.output_dim, depth=2, act="gelu")

    def _forward_frame(self, x: torch.Tensor, grid, **kwargs) -> ProjectorOutput:
        x, out_grid = space_to_depth(x, grid, self.config.factor)  # [B, h'*w', f²C]
        return ProjectorOutput(tokens=self.mlp(self.norm(x)), grid=out_grid)  # [B, h'*w', D]

    def _tokens_per_frame(self, grid) -> int:
        f = self.config.factor
        return -(-grid[0] // f) * -(-grid[1] // f)

    @classmethod
    def count_parameters(cls, config: PixelShuffleConfig) -> int:
        width = config.factor * config.factor * config.input_dim
        return 2 * width + Mlp.count(width, config.output_dim, config.output_dim, 2)
