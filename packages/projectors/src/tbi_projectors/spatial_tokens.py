"""``spatial-tokens``: LLaVA-SP's six visual spatial tokens appended to any projector's output (seed 001 A3a).

Reference: Lou et al., "LLaVA-SP: Enhancing Visual Representation with Visual Spatial Tokens for MLLMs",
ICCV 2025 (arXiv 2507.00505).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import Mlp, to_map
from .base import Projector
from .config import ProjectorConfig
from .errors import ProjectorError
from .output import ProjectorOutput


@dataclass
class SpatialTokensConfig(ProjectorConfig):
    """Options of ``spatial-tokens``."""

    base: str = "mlp2x_gelu"
    """The main projector whose output the spatial tokens are appended to (any single-scale projector)."""
    base_options: dict[str, Any] = field(default_factory=dict)
    """Config options of the base projector (input_dim, output_dim and seed are shared)."""
    kernel_sizes: tuple[int, ...] = (4, 8, 12, 16, 20, 24)
    """One spatial token per kernel (LLaVA-SP: six kernels 4…24 on the 24×24 CLIP-L/336 grid)."""
    reference_grid: tuple[int, int] = (24, 24)
    """Any input grid is resized (bilinear) to this grid first, so a kernel covers the same image fraction."""
    mode: str = "factorised"
    """``"faithful"``: full k×k convs C → conv_dim (≈763M parameters at C=1024);
    ``"factorised"``: depthwise k×k convs + one shared pointwise C → conv_dim (≈2M)."""
    conv_dim: int = 0
    """Channels of each conv's output; 0 = input_dim // 2 (what gives LLaVA-SP's 763M at C=1024)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("faithful", "factorised"):
            raise ProjectorError(
                f"spatial-tokens: mode must be 'faithful' or 'factorised', got {self.mode!r}"
            )
        gh, gw = self.reference_grid
        bad = [k for k in self.kernel_sizes if k < 1 or k > min(gh, gw)]
        if not self.kernel_sizes or bad:
            raise ProjectorError(
                f"spatial-tokens: kernel sizes {list(self.kernel_sizes)} must be in 1..{min(gh, gw)} "
                f"(the reference grid {self.reference_grid})"
            )
        if self.base == "spatial-tokens":
            raise ProjectorError("spatial-tokens cannot wrap itself; choose another base projector")

    @property
    def token_dim(self) -> int:
        return self.conv_dim or max(1, self.input_dim // 2)


class SpatialTokens(Projector):
    """``tokens = [base(x); MLP(mean(conv_k(resize(x, 24×24)))) for k in kernels]``.

    Each kernel k runs with stride k over the reference grid and is averaged to one token, so the six tokens
    summarise the image at six receptive-field sizes. ``[B, N, C] → [B, M_base + 6, D]`` (video: the ``6·T``
    spatial tokens follow the base tokens, frame-major). ``out.grid`` is ``None`` (the list is no longer a grid).

    Parameters: ``base + convs + MLP(c' → D → D)`` with convs ``Σ_k (C·c'·k² + c')`` (faithful) or
    ``Σ_k (C·k² + C) + C·c' + c'`` (factorised), ``c' = conv_dim``.
    """

    name = "spatial-tokens"
    config_class = SpatialTokensConfig

    def _build(self) -> None:
        # Imported here: the registry imports this module, so a top-level import would be circular.
        from .registry import get_projector_class, make_config

        c = self.config
        base_cls = get_projector_class(c.base)
        if base_cls.multi_scale:
            raise ProjectorError(
                f"spatial-tokens needs a single-scale base projector, {c.base!r} is multi-scale"
            )
        base_cfg = make_config(
            c.base, input_dim=c.input_dim, output_dim=c.output_dim, seed=c.seed, **c.base_options
        )
        self.base = base_cls(base_cfg)
        cd = c.token_dim
        if c.mode == "faithful":
            self.convs = nn.ModuleList(nn.Conv2d(c.input_dim, cd, k, stride=k) for k in c.kernel_sizes)
        else:
            self.convs = nn.ModuleList(
                nn.Conv2d(c.input_dim, c.input_dim, k, stride=k, groups=c.input_dim) for k in c.kernel_sizes
            )
            self.pointwise = nn.Linear(c.input_dim, cd)
        self.token_proj = Mlp(cd, c.output_dim, c.output_dim, depth=2, act="gelu")

    def _extra_inputs(self) -> tuple[str, ...]:
        return self.base._extra_inputs()

    def _spatial(self, x: torch.Tensor, grid) -> torch.Tensor:
        """``[B, N, C]`` → six spatial tokens ``[B, 6, D]``."""
        fmap = to_map(x, grid)  # [B, C, h, w]
        if tuple(grid) != tuple(self.config.reference_grid):
            fmap = F.interpolate(fmap, size=self.config.reference_grid, mode="bilinear", align_corners=False)
        pooled = torch.stack([conv(fmap).mean(dim=(2, 3)) for conv in self.convs], dim=1)  # [B, 6, c'|C]
        if self.config.mode == "factorised":
            pooled = self.pointwise(pooled)  # [B, 6, c']
        return self.token_proj(pooled)  # [B, 6, D]

    def _project(self, x: torch.Tensor, grid, **kwargs) -> ProjectorOutput:
        b, t = x.shape[:2]
        base = self.base._project(x, grid, **kwargs)  # [B, M_base, D]
        spatial = self._spatial(x.reshape(b * t, *x.shape[2:]), grid).reshape(b, -1, base.tokens.shape[-1])
        kept = None
        if base.kept_indices is not None:
            pad = base.kept_indices.new_full(spatial.shape[:2], -1)
            kept = torch.cat([base.kept_indices, pad], dim=1)
        return ProjectorOutput(tokens=torch.cat([base.tokens, spatial], dim=1), kept_indices=kept)

    def _count_tokens(self, grid, num_frames: int) -> int:
        return self.base._count_tokens(grid, num_frames) + len(self.config.kernel_sizes) * num_frames

    @classmethod
    def count_parameters(cls, config: SpatialTokensConfig) -> int:
        from .registry import get_projector_class, make_config

        c = config
        base_cfg = make_config(c.base, input_dim=c.input_dim, output_dim=c.output_dim, **c.base_options)
        total = get_projector_class(c.base).count_parameters(base_cfg)
        cd, ks = c.token_dim, c.kernel_sizes
        if c.mode == "faithful":
            total += sum(c.input_dim * cd * k * k + cd for k in ks)
        else:
            total += sum(c.input_dim * k * k + c.input_dim for k in ks) + c.input_dim * cd + cd
        return total + Mlp.count(cd, c.output_dim, c.output_dim, 2)
