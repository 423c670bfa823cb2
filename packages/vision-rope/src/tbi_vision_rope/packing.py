"""Native-resolution packing: images of different sizes become one token sequence, no tiling, no padding.

Each image ``[C, H, W]`` (or video ``[F, C, H, W]``) is cut into ``p × p`` patches, flattened to
``[t·h·w, C·p·p]`` in the input order of :mod:`tbi_vision_rope.layout` (raster, or merge-block major), and
the images are concatenated: ``patches [T, C·p·p]``, ``grid_thw [N, 3]``, ``cu_seqlens [N + 1]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import VisionRopeError


@dataclass(frozen=True)
class PackedImages:
    """A packed batch: ``patches [T, C·p·p]``, ``grid_thw [N, 3]`` and ``cu_seqlens [N + 1]`` (int32)."""

    patches: torch.Tensor
    grid_thw: torch.Tensor
    cu_seqlens: torch.Tensor

    def split(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Splits per-token outputs ``[T, ...]`` (input order) back into one tensor per image."""
        return list(tokens.split((self.cu_seqlens[1:] - self.cu_seqlens[:-1]).tolist()))


def pack_images(
    images: Sequence[torch.Tensor], patch_size: int, *, merge_size: int = 1, crop: bool = False
) -> PackedImages:
    """Packs images ``[C, H, W]`` or videos ``[F, C, H, W]`` of any sizes into one patch sequence.

    Args:
        images: the images/videos; all with the same channel count.
        patch_size: patch side ``p`` in pixels.
        merge_size: order tokens merge-block major with this block side (Qwen2.5-VL: 2).
        crop: drop the right/bottom pixels that do not fill a whole patch (or merge block) instead of
            raising.

    Raises:
        VisionRopeError: no images, wrong ranks or channel counts, an image smaller than one patch (or
            merge block), a size that is not a multiple of ``p · merge_size`` without ``crop``.
    """
    if not images:
        raise VisionRopeError("pack_images got no images: pass a non-empty list of [C, H, W] tensors")
    step = patch_size * merge_size
    patches, grids = [], []
    for i, image in enumerate(images):
        video = image if image.dim() == 4 else image[None]
        if video.dim() != 4 or video.shape[1] != images[0].shape[-3]:
            raise VisionRopeError(
                f"images[{i}] has shape {tuple(image.shape)}: expected [C, H, W] or [F, C, H, W] with "
                f"C={images[0].shape[-3]} like images[0]"
            )
        frames, channels, height, width = video.shape
        if height < step or width < step:
            raise VisionRopeError(
                f"images[{i}] is {height}x{width} pixels, smaller than one {'merge block' if merge_size > 1 else 'patch'} "
                f"of {step}x{step}; upscale it or drop it"
            )
        if (height % step or width % step) and not crop:
            raise VisionRopeError(
                f"images[{i}] is {height}x{width} pixels, not a multiple of {step} (patch_size={patch_size} x "
                f"merge_size={merge_size}); resize it or pass crop=True"
            )
        h, w = height // step * merge_size, width // step * merge_size
        video = video[:, :, : h * patch_size, : w * patch_size]
        x = video.reshape(
            frames, channels, h // merge_size, merge_size, patch_size, w // merge_size, merge_size, patch_size
        )
        # [F, h/m, w/m, m, m, C, p, p]: merge blocks raster, tokens raster inside each block
        x = x.permute(0, 2, 5, 3, 6, 1, 4, 7).reshape(frames * h * w, channels * patch_size * patch_size)
        patches.append(x)
        grids.append((frames, h, w))
    lengths = torch.tensor([t * h * w for t, h, w in grids])
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).int()
    return PackedImages(torch.cat(patches), torch.tensor(grids), cu)
