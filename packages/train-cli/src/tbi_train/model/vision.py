"""The vision tower: any local transformers vision model, or a random SigLIP-like tower (tiny preset).

`VisionTower(pixel_values)` returns patch features of one hidden layer with the class/register tokens
removed, so the projector sees exactly grid_h * grid_w tokens in row-major order.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tbi_train.config import VisionConfig
from tbi_train.errors import TrainError

__all__ = ["VisionTower", "build_vision_tower"]


class VisionTower(nn.Module):
    """Patch features of a transformers vision model.

    Args:
        model: a transformers vision model returning `hidden_states` (CLIPVisionModel, SiglipVisionModel, ...).
        image_size: input side in pixels.
        patch_size: patch side in pixels; grid = (image_size // patch_size,) * 2.
        feature_layer: index into `hidden_states` (-1: last layer).
        feature_layers: multi-scale taps, indexes into `hidden_states`; when non-empty the tower returns one
            feature map per index (and `feature_layer` is unused).
        concat_taps: return the taps concatenated along channels, [N, P, S·C], for a single-scale projector
            (seed 000 B2/E1 feed multi-scale features to the MLP / C-Abstractor).
    """

    def __init__(
        self,
        model: nn.Module,
        image_size: int,
        patch_size: int,
        feature_layer: int,
        feature_layers: tuple[int, ...] = (),
        concat_taps: bool = False,
    ):
        super().__init__()
        self.model = model
        self.image_size = image_size
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.feature_layer = feature_layer
        self.feature_layers = tuple(feature_layers)
        self.concat_taps = concat_taps

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def grids(self) -> tuple[int, int] | list[tuple[int, int]]:
        """The projector's `grid=` argument: the patch grid, or one per scale."""
        return (
            [self.grid] * len(self.feature_layers)
            if self.feature_layers and not self.concat_taps
            else self.grid
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """pixel_values [N, 3, H, W] -> features [N, grid_h * grid_w, C] (a list of them with feature_layers)."""
        out = self.model(pixel_values=pixel_values, output_hidden_states=True)
        if self.feature_layers:
            taps = [self._patches(out.hidden_states[i]) for i in self.feature_layers]  # S x [N, P, C]
            return torch.cat(taps, dim=-1) if self.concat_taps else taps  # [N, P, S*C] or S x [N, P, C]
        return self._patches(out.hidden_states[self.feature_layer])  # [N, P, C]

    def _patches(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, extra + P, C] -> [N, P, C]: class/register tokens lead the sequence in CLIP/DINOv2."""
        extra = hidden.shape[1] - self.grid[0] * self.grid[1]
        if extra < 0:
            raise TrainError(
                f"vision tower returned {hidden.shape[1]} tokens for a {self.grid} grid; "
                "check model.vision.patch_size / the checkpoint's image size."
            )
        return hidden[:, extra:]


def build_vision_tower(cfg: VisionConfig, trust_remote_code: bool = False) -> VisionTower:
    """Load `cfg.path` with AutoModel (vision half of a dual CLIP/SigLIP checkpoint), or random-init SigLIP."""
    if cfg.path is None:
        from transformers import SiglipVisionConfig, SiglipVisionModel

        if cfg.image_size % cfg.patch_size:
            raise TrainError(
                f"model.vision.image_size={cfg.image_size} is not a multiple of model.vision.patch_size={cfg.patch_size}."
            )
        config = SiglipVisionConfig(
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            vision_use_head=False,  # the projector reads patch features; a pooling head would never train
        )
        model = SiglipVisionModel(config)
        image_size, patch_size = cfg.image_size, cfg.patch_size
    else:
        from transformers import AutoModel

        if not Path(cfg.path).is_dir():
            raise TrainError(f"model.vision.path={cfg.path} is not a folder; point it at a local checkpoint.")
        model = AutoModel.from_pretrained(
            cfg.path, local_files_only=True, trust_remote_code=trust_remote_code
        )
        if hasattr(model, "text_model") and hasattr(model, "vision_model"):
            model = model.vision_model
        config = model.config
        image_size = _as_int(getattr(config, "image_size", None), "image_size", cfg.path)
        patch_size = _as_int(getattr(config, "patch_size", None), "patch_size", cfg.path)
    if cfg.feature_layers:
        depth = _depth(model, cfg.path)
        bad = [i for i in cfg.feature_layers if not -depth - 1 <= i <= depth]
        if bad:
            raise TrainError(
                f"model.vision.feature_layers={list(cfg.feature_layers)}: {bad} out of range; the tower has "
                f"hidden_states 0..{depth} (0: embeddings, i: after layer i)."
            )
    if cfg.rope_2d or cfg.window_attention:
        _modernize(model, cfg, image_size // patch_size, _depth(model, cfg.path))
    if cfg.gradient_checkpointing and getattr(model, "supports_gradient_checkpointing", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return VisionTower(model, image_size, patch_size, cfg.feature_layer, cfg.feature_layers)


def _window_size(grid_side: int) -> int:
    """Window side in patches: 8 (seed 001, Qwen2.5-VL), or half the grid side on grids under 16 patches."""
    return 8 if grid_side >= 16 else max(1, grid_side // 2)


def _global_layers(depth: int) -> list[int]:
    """0-based global-attention layers: 4 evenly spaced ending at the last (seed 001), one per 8 layers below 32."""
    from tbi_vision_rope import default_global_layers

    return default_global_layers(depth, min(4, max(1, depth // 8)))


def _modernize(model: nn.Module, cfg: VisionConfig, grid_side: int, depth: int) -> None:
    """2D-RoPE (seed 000 `rope_config` = RopeConfig defaults) and/or window attention, in place."""
    from tbi_vision_rope import RopeConfig, VisionRopeError, modernize

    window = _window_size(grid_side) if cfg.window_attention else 0
    try:
        modernize(
            model,
            rope=RopeConfig() if cfg.rope_2d else None,
            window=window,
            global_layers=_global_layers(depth) if window else None,
            drop_abs_pos=cfg.rope_2d,
        )
    except VisionRopeError as exc:
        raise TrainError(
            f"model.vision.rope_2d={cfg.rope_2d} / window_attention={cfg.window_attention}: {exc}; "
            "use a CLIP, SigLIP, DINOv2 or InternViT tower, or turn both off."
        ) from exc


def _depth(model: nn.Module, path: str | None) -> int:
    layers = getattr(model.config, "num_hidden_layers", None)
    if not isinstance(layers, int):
        raise TrainError(f"vision tower {path or '(random)'} has no integer config.num_hidden_layers.")
    return layers


def _as_int(value, name: str, path: str) -> int:
    if isinstance(value, list | tuple):
        value = value[0]
    if not isinstance(value, int):
        raise TrainError(
            f"vision checkpoint {path} has no integer config.{name}; it is not a ViT-style tower."
        )
    return value
