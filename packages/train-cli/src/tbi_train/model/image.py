"""Image preprocessing for the vision tower: PIL image -> normalised tensor [3, H, W]."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

__all__ = ["ImageTransform"]


class ImageTransform:
    """Resize to size x size (bicubic), scale to [0, 1], normalise: x = (pixel / 255 - mean) / std.

    Picklable (plain attributes), so data-loader workers can run it.
    """

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...]):
        self.size = size
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)  # [H, W, 3]
        x = x.permute(2, 0, 1)  # [3, H, W]
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std

    def __repr__(self) -> str:
        return f"ImageTransform(size={self.size}, mean={self.mean}, std={self.std})"
