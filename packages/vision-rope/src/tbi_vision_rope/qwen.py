"""Qwen2.5-VL's vision-attention settings expressed in this package's terms.

Qwen2.5-VL's ViT (head dim 80): axial 2D-RoPE with 20 frequencies ``10000^(-2i/40)`` shared by rows and
columns, laid out ``[h | w | h | w]`` for ``rotate_half`` — i.e. ``Rope2D(H, 80)`` with the default
:class:`RopeConfig`; tokens ordered by 2×2 merge units; windows of 112 px = 8 patches = 4×4 merge units;
full attention in blocks 7/15/23/31, each video frame its own sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import VisionRopeError
from .rope import RopeConfig


@dataclass(frozen=True)
class QwenVisionSettings:
    """What :func:`qwen2_5_vl_settings` reads from a Qwen2.5-VL vision config."""

    rope: RopeConfig
    """Axial half-layout RoPE with Qwen's base (``rope_theta``)."""
    window: int
    """Window side in patches (``window_size // patch_size``, 8 for Qwen2.5-VL)."""
    merge_size: int
    """Merge-unit side the tokens are ordered by (``spatial_merge_size``, 2)."""
    global_layers: tuple[int, ...]
    """Full-attention blocks (``fullatt_block_indexes``)."""


def qwen2_5_vl_settings(vision_config: Any) -> QwenVisionSettings:
    """Reads a ``Qwen2_5_VLVisionConfig`` into rope/window/merge/global-layer settings.

    Use with ``build_layout(grid_thw, s.window, merge_size=s.merge_size)`` and
    ``Rope2D(num_heads, head_dim, s.rope)`` on the tokens in Qwen's (window-major) order.
    """
    rope_parameters = getattr(vision_config, "rope_parameters", None) or {}
    theta = float(rope_parameters.get("rope_theta", 10000.0))
    patch, merge = int(vision_config.patch_size), int(vision_config.spatial_merge_size)
    window_px = int(vision_config.window_size)
    if window_px % (patch * merge):
        raise VisionRopeError(
            f"window_size={window_px} px is not a multiple of patch_size*spatial_merge_size={patch * merge}; "
            "Qwen2.5-VL windows are whole merge units"
        )
    return QwenVisionSettings(
        rope=RopeConfig(kind="axial", base_freq=theta, layout="half"),
        window=window_px // patch,
        merge_size=merge,
        global_layers=tuple(int(i) for i in vision_config.fullatt_block_indexes),
    )
