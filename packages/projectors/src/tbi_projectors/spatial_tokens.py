"""``spatial-tokens``: LLaVA-SP's six visual spatial tokens appended to any projector's output (seed 001 A3a).

Over a multi-scale base (seed 001 A3c, PIIP pyramid + spatial tokens) it takes the base's list of feature maps:
the base projects all scales, the spatial tokens come from one of them (``spatial_scale``).

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
    """The main projector whose output the spatial tokens are appended to (any projector; a multi-scale one makes
    ``spatial-tokens`` take a list of feature maps too)."""
    base_options: dict[str, Any] = field(default_factory=dict)
    """Config options of the base projector (input_dim, output_dim and seed are shared); (key, value) pairs, as
    frozen configs hold mappings, are accepted too."""
    kernel_sizes: tuple[int, ...] = (4, 8, 12, 16, 20, 24)
    """One spatial token per kernel (LLaVA-SP: six kernels 4…24 on the 24×24 CLIP-L/336 grid)."""
    reference_grid: tuple[int, int] = (24, 24)
    """Any input grid is resized (bilinear) to this grid first, so a kernel covers the same image fraction."""
    mode: str = "factorised"
    """``"faithful"``: full k×k convs C → conv_dim (≈763M parameters at C=1024);
    ``"factorised"``: depthwise k×k convs + one shared pointwise C → conv_dim (≈2M)."""
    conv_dim: int = 0
    """Channels of each conv's output; 0 = C // 2 (what gives LLaVA-SP's 763M at C=1024), C the channels of the
    map the spatial tokens read."""
    spatial_scale: int = -1
    """Multi-scale base only: index of the feature map the spatial tokens read (-1 = the last one given: the
    deepest tap, or the finest level of a coarse-to-fine pyramid); the base still projects every scale."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.base_options = _as_mapping(self.base_options)
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

    def base_config(self) -> ProjectorConfig:
        """The typed config of the base projector (input_dim, output_dim and seed shared)."""
        from .registry import make_config  # the registry imports this module

        return make_config(
            self.base,
            input_dim=self.input_dim,
            output_dim=self.output_dim,
            seed=self.seed,
            **self.base_options,
        )

    def spatial_dim(self, base: ProjectorConfig) -> int:
        """Channels C of the map the spatial tokens read: ``input_dim``, or scale ``spatial_scale``'s channels."""
        dims = _scale_dims(self.base, base)
        if dims is None:
            return self.input_dim
        if not -len(dims) <= self.spatial_scale < len(dims):
            raise ProjectorError(
                f"spatial-tokens: spatial_scale={self.spatial_scale} but the {self.base} base has {len(dims)} "
                f"scales; pick an index in {-len(dims)}..{len(dims) - 1}"
            )
        return dims[self.spatial_scale]

    def token_dim(self, channels: int) -> int:
        """Channels c' of each conv's output for a map of ``channels`` channels."""
        return self.conv_dim or max(1, channels // 2)


def _as_mapping(options: Any) -> dict[str, Any]:
    """``base_options`` as a dict; a frozen config's ``((key, value), ...)`` pairs are turned back into one."""
    if isinstance(options, dict):
        return dict(options)
    pairs = list(options) if isinstance(options, (list, tuple)) else None
    if pairs is None or not all(
        isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str) for p in pairs
    ):
        raise ProjectorError(
            f"spatial-tokens: base_options must be a mapping of the base projector's options, got {options!r}"
        )
    return dict(pairs)


def _scale_dims(name: str, base: ProjectorConfig) -> list[int] | None:
    """Channels per scale of the multi-scale projector ``name``'s config (None for a single-scale one)."""
    from .registry import get_projector_class

    if not get_projector_class(name).multi_scale:
        return None
    dims = tuple(getattr(base, "input_dims", ()) or ())
    return list(dims) if dims else [base.input_dim] * int(base.num_scales)


class SpatialTokens(Projector):
    """``tokens = [base(x); MLP(mean(conv_k(resize(x_s, 24×24)))) for k in kernels]``.

    Each kernel k runs with stride k over the reference grid and is averaged to one token, so the six tokens
    summarise the image at six receptive-field sizes. ``[B, N, C] → [B, M_base + 6, D]`` (video: the ``6·T``
    spatial tokens follow the base tokens, frame-major). ``out.grid`` is ``None`` (the list is no longer a grid).
    With a multi-scale base the input is the base's list ``[x_0, …, x_{S-1}]`` (grids one per scale), the base
    tokens are ``base([x_0, …])`` and the spatial tokens read ``x_s``, ``s = spatial_scale``; the instance's
    ``multi_scale`` is the base's.

    Parameters: ``base + convs + MLP(c' → D → D)`` with convs ``Σ_k (C·c'·k² + c')`` (faithful) or
    ``Σ_k (C·k² + C) + C·c' + c'`` (factorised), ``C`` the channels of ``x_s``, ``c' = conv_dim``.
    """

    name = "spatial-tokens"
    config_class = SpatialTokensConfig

    def _build(self) -> None:
        # Imported here: the registry imports this module, so a top-level import would be circular.
        from .registry import get_projector_class

        c = self.config
        base_cls = get_projector_class(c.base)
        base_cfg = c.base_config()
        channels = c.spatial_dim(base_cfg)
        self.base = base_cls(base_cfg)
        # An instance attribute: the call shape (one map or a list) is the base's.
        self.multi_scale = base_cls.multi_scale
        cd = c.token_dim(channels)
        if c.mode == "faithful":
            self.convs = nn.ModuleList(nn.Conv2d(channels, cd, k, stride=k) for k in c.kernel_sizes)
        else:
            self.convs = nn.ModuleList(
                nn.Conv2d(channels, channels, k, stride=k, groups=channels) for k in c.kernel_sizes
            )
            self.pointwise = nn.Linear(channels, cd)
        self.token_proj = Mlp(cd, c.output_dim, c.output_dim, depth=2, act="gelu")

    def _extra_inputs(self) -> tuple[str, ...]:
        return self.base._extra_inputs()

    def _input_dims(self) -> list[int]:
        return self.base._input_dims()

    def _num_scales(self) -> int:
        return self.base._num_scales()

    def _spatial(self, x: torch.Tensor, grid) -> torch.Tensor:
        """``[B, N, C]`` → six spatial tokens ``[B, 6, D]``."""
        fmap = to_map(x, grid)  # [B, C, h, w]
        if tuple(grid) != tuple(self.config.reference_grid):
            fmap = F.interpolate(fmap, size=self.config.reference_grid, mode="bilinear", align_corners=False)
        pooled = torch.stack([conv(fmap).mean(dim=(2, 3)) for conv in self.convs], dim=1)  # [B, 6, c'|C]
        if self.config.mode == "factorised":
            pooled = self.pointwise(pooled)  # [B, 6, c']
        return self.token_proj(pooled)  # [B, 6, D]

    def _project(self, x, grid, **kwargs) -> ProjectorOutput:
        base = self.base._project(x, grid, **kwargs)  # [B, M_base, D]
        if self.multi_scale:
            x, grid = x[self.config.spatial_scale], grid[self.config.spatial_scale]  # [B, T, N_s, C_s]
        b, t = x.shape[:2]
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
        from .registry import get_projector_class

        c = config
        base_cfg = c.base_config()
        total = get_projector_class(c.base).count_parameters(base_cfg)
        channels = c.spatial_dim(base_cfg)
        cd, ks = c.token_dim(channels), c.kernel_sizes
        if c.mode == "faithful":
            total += sum(channels * cd * k * k + cd for k in ks)
        else:
            total += sum(channels * k * k + channels for k in ks) + channels * cd + cd
        return total + Mlp.count(cd, c.output_dim, c.output_dim, 2)
