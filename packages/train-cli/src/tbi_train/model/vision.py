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
    """

    def __init__(self, model: nn.Module, image_size: int, patch_size: int, feature_layer: int):
        super().__init__()
        self.model = model
        self.image_size = image_size
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.feature_layer = feature_layer

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, 3, H, W] -> features [N, grid_h * grid_w, C]."""
        out = self.model(pixel_values=pixel_values, output_hidden_states=True)
        hidden = out.hidden_states[self.feature_layer]  # [N, extra + P, C]
        extra = hidden.shape[1] - self.grid[0] * self.grid[1]
        if extra < 0:
            raise TrainError(
                f"vision tower returned {hidden.shape[1]} tokens for a {self.grid} grid; "
                "check model.vision.patch_size / the checkpoint's image size."
            )
        return hidden[:, extra:]  # [N, P, C]: class/register tokens lead the sequence in CLIP/DINOv2


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
    if cfg.gradient_checkpointing and getattr(model, "supports_gradient_checkpointing", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return VisionTower(model, image_size, patch_size, cfg.feature_layer)


def _as_int(value, name: str, path: str) -> int:
    if isinstance(value, list | tuple):
        value = value[0]
    if not isinstance(value, int):
        raise TrainError(
            f"vision checkpoint {path} has no integer config.{name}; it is not a ViT-style tower."
        )
    return value
