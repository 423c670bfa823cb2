"""``adaptive-compression``: content-aware replacement for pixel unshuffle (seed 001 RQ4 / A4).

Pixel unshuffle merges every 2×2 block into one token. Here the blocks where content is dense (text, chart
marks: high variation between the four patches) keep their four patches as four tokens, and the rest are
merged as in InternVL, so the token budget goes where the detail is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._layers import Mlp
from .base import Projector
from .config import ProjectorConfig
from .errors import ProjectorError
from .output import ProjectorOutput
from .pixel_shuffle import space_to_depth


@dataclass
class AdaptiveCompressionConfig(ProjectorConfig):
    """Options of ``adaptive-compression``."""

    factor: int = 2
    """Side of the merged block (2 = InternVL's pixel unshuffle)."""
    fine_fraction: float = 0.2
    """Fraction of blocks kept at full resolution: tokens = (1 + (f²−1)·fraction)·N/f² (0.2 → 0.4·N for f=2)."""
    score: str = "variance"
    """Density score of a block: ``"variance"`` (mean over channels of the variance of its f² patches,
    parameter-free) or ``"learned"`` (a linear scorer on the merged block features)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            self.factor < 2
            or not 0.0 <= self.fine_fraction <= 1.0
            or self.score not in ("variance", "learned")
        ):
            raise ProjectorError(
                "adaptive-compression: factor >= 2, 0 <= fine_fraction <= 1 and score in "
                f"('variance', 'learned') are required, got factor={self.factor}, "
                f"fine_fraction={self.fine_fraction}, score={self.score!r}"
            )


class AdaptiveCompressor(Projector):
    """Merge f×f blocks to one token except the top ``K = round(fraction · blocks)`` densest blocks.

    Merged block: ``MLP_m(LN(space_to_depth(x)))`` (InternVL's ``mlp1``, ``f²C → D → D``). Dense block: each
    of its f² patches ``MLP_f(LN(x_p))`` (``C → D → D``). Tokens follow the blocks in raster order, a dense
    block's patches in raster order inside it, so ``M = blocks + (f²−1)·K`` is fixed for a grid and batches
    stack. ``out.kept_indices`` ``[B, M]``: the input patch of each fine token, the top-left patch of each
    merged block. ``out.attention`` ``[B, blocks]``: the density score. Odd grids repeat the last row/column.

    Parameters: ``2f²C + MLP(f²C → D → D) + 2C + MLP(C → D → D) [+ f²C + 1 learned scorer]``.
    """

    name = "adaptive-compression"
    config_class = AdaptiveCompressionConfig

    def _build(self) -> None:
        c = self.config
        width = c.factor * c.factor * c.input_dim
        self.merge_norm = nn.LayerNorm(width)
        self.merge_mlp = Mlp(width, c.output_dim, c.output_dim, depth=2)
        self.fine_norm = nn.LayerNorm(c.input_dim)
        self.fine_mlp = Mlp(c.input_dim, c.output_dim, c.output_dim, depth=2)
        if c.score == "learned":
            self.scorer = nn.Linear(width, 1)

    def _num_fine(self, blocks: int) -> int:
        return min(blocks, round(self.config.fine_fraction * blocks))

    def _forward_frame(self, x: torch.Tensor, grid, **kwargs) -> ProjectorOutput:
        c = self.config
        f2 = c.factor * c.factor
        b, _, ch = x.shape
        h, w = grid
        blocks, (oh, ow) = space_to_depth(x, grid, c.factor)  # [B, nb, f²C] with (dy, dx, c) channel order
        nb = oh * ow
        patches = blocks.reshape(b, nb, f2, ch)  # [B, nb, f², C]
        if c.score == "variance":
            density = patches.float().var(dim=2, unbiased=False).mean(dim=-1)  # [B, nb]
        else:
            density = self.scorer(blocks).squeeze(-1).float()  # [B, nb]
        k = self._num_fine(nb)
        fine_blocks = density.topk(k, dim=1).indices  # [B, K]
        is_fine = torch.zeros(b, nb, dtype=torch.bool, device=x.device).scatter(1, fine_blocks, True)

        merged = self.merge_mlp(self.merge_norm(blocks))  # [B, nb, D]
        d = merged.shape[-1]
        picked = patches.gather(1, fine_blocks[..., None, None].expand(-1, -1, f2, ch))  # [B, K, f², C]
        fine = self.fine_mlp(self.fine_norm(picked))  # [B, K, f², D]
        if c.score == "learned":
            g = torch.sigmoid(density.gather(1, fine_blocks))  # [B, K]
            fine = fine * (1.0 + g - g.detach()).to(fine.dtype)[..., None, None]

        # Candidate slots: per block f² slots; slot 0 holds the merged token, all slots of dense blocks their
        # patches. A stable sort of the valid slots to the front keeps raster order without a Python loop.
        slots = merged.unsqueeze(2).expand(b, nb, f2, d).clone()  # [B, nb, f², D]
        slots.scatter_(1, fine_blocks[..., None, None].expand(-1, -1, f2, d), fine)
        valid = torch.zeros(b, nb, f2, dtype=torch.bool, device=x.device)
        valid[:, :, 0] = True
        valid |= is_fine.unsqueeze(-1)
        m = nb + (f2 - 1) * k
        order = torch.sort((~valid).reshape(b, -1).to(torch.uint8), dim=1, stable=True).indices[
            :, :m
        ]  # [B, M]
        tokens = slots.reshape(b, nb * f2, d).gather(1, order.unsqueeze(-1).expand(-1, -1, d))  # [B, M, D]

        block_id, slot = order // f2, order % f2
        row = (block_id // ow) * c.factor + slot // c.factor
        col = (block_id % ow) * c.factor + slot % c.factor
        kept = row.clamp(max=h - 1) * w + col.clamp(max=w - 1)  # [B, M] (clamped where the grid was padded)
        return ProjectorOutput(tokens=tokens, kept_indices=kept, attention=density)

    def _tokens_per_frame(self, grid) -> int:
        f = self.config.factor
        nb = -(-grid[0] // f) * -(-grid[1] // f)
        return nb + (f * f - 1) * self._num_fine(nb)

    @classmethod
    def count_parameters(cls, config: AdaptiveCompressionConfig) -> int:
        c = config
        width = c.factor * c.factor * c.input_dim
        total = 2 * width + Mlp.count(width, c.output_dim, c.output_dim, 2)
        total += 2 * c.input_dim + Mlp.count(c.input_dim, c.output_dim, c.output_dim, 2)
        if c.score == "learned":
            total += width + 1
        return total
