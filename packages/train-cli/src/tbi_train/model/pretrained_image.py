"""The image preprocessing of a decomposed VLM: its checkpoint's own transformers image processor.

| family     | `__call__(image)` (one view, [3, S, S])      | family-specific                                       |
|------------|----------------------------------------------|-------------------------------------------------------|
| llava      | resize shortest edge + centre crop (CLIP)    | -                                                     |
| internvl   | resize to S x S                              | `tiles(image)`: 1..12 tiles of S x S + a thumbnail    |
| qwen2_5_vl | `PackedImage` (native-resolution patches)    | `native(images)`: packed patches + grid (t, h, w)     |

`preprocess(images)` returns the model inputs of the family's native pipeline (tiles for InternVL,
native resolution for Qwen2.5-VL), exactly as the original processor makes them. `prepare_sample(sample)`
(called by the Collator) rewrites a sample into what the family's processor feeds its model:

| family     | images                               | text                                                      |
|------------|--------------------------------------|-----------------------------------------------------------|
| llava      | unchanged                            | unchanged                                                 |
| internvl   | each image -> its tiles, as frames   | `<image>` -> `<img><image></img>`                         |
| qwen2_5_vl | unchanged (one image per frame)      | each frame -> `<|vision_start|><image><|vision_end|>`    |
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tbi_train.data.collator import PackedImage
from tbi_train.data.sample import IMAGE_PLACEHOLDER
from tbi_train.errors import TrainError

__all__ = ["PretrainedImageTransform"]

_MARKERS = {"internvl": ("<img>", "</img>"), "qwen2_5_vl": ("<|vision_start|>", "<|vision_end|>")}


class PretrainedImageTransform:
    """PIL images -> pixel tensors as the checkpoint's image processor makes them (picklable).

    Args:
        processor: a transformers image processor (CLIP, GotOcr2 for InternVL, Qwen2-VL).
        family: "llava", "internvl" or "qwen2_5_vl".
        image_token: the checkpoint's image-pad token (the Collator expands `<image>` into it).
        markers: the tokens around each image in the text (InternVL `<img>`/`</img>`, Qwen2.5-VL
            `<|vision_start|>`/`<|vision_end|>`, LLaVA none); default: the family's.
    """

    def __init__(
        self,
        processor,
        family: str,
        image_token: str | None = None,
        markers: tuple[str, str] | None = None,
    ):
        self.processor = processor
        self.family = family
        self.image_token = image_token
        self.markers = markers if markers is not None else _MARKERS.get(family, ("", ""))
        self.packed = family == "qwen2_5_vl"
        """Whether `__call__` returns native-resolution `PackedImage`s (concatenated, not stacked, by the Collator)."""
        self.mean = tuple(float(m) for m in processor.image_mean)
        self.std = tuple(float(s) for s in processor.image_std)
        crop = getattr(processor, "crop_size", None) if family == "llava" else None
        size = crop if crop is not None and getattr(processor, "do_center_crop", False) else processor.size
        self.size = getattr(size, "height", None)
        """Side of one view in pixels (None for native resolution)."""

    @classmethod
    def from_pretrained(cls, path: str | Path, family: str, **kwargs) -> PretrainedImageTransform:
        """The image processor saved in `path` (preprocessor_config.json), never fetched from the Hub."""
        from transformers import AutoImageProcessor

        config = Path(path) / "preprocessor_config.json"
        if not config.is_file():
            raise TrainError(
                f"{config} does not exist; copy the checkpoint's preprocessor_config.json next to its weights "
                "(the decomposed model must preprocess images exactly as the original)."
            )
        return cls(AutoImageProcessor.from_pretrained(path, local_files_only=True), family, **kwargs)

    def __call__(self, image: Image.Image) -> torch.Tensor | PackedImage:
        """One fixed-size view [3, S, S] (LLaVA; InternVL without tiling), or Qwen2.5-VL's native patches.

        Qwen2.5-VL: `PackedImage` with pixel_values [t h w, 3 t_p p p], grid_thw (t, h, w) in patches and
        tokens = t h w / merge_size² (the LM tokens its merger makes).
        """
        if self.family == "qwen2_5_vl":
            pixels, grid = self.native([image])  # [P, 3 t p p], [1, 3]
            merge = int(self.processor.merge_size)
            thw = tuple(int(v) for v in grid[0])
            return PackedImage(pixels, thw, thw[0] * thw[1] * thw[2] // (merge * merge))
        kwargs = {"crop_to_patches": False} if self.family == "internvl" else {}
        return self._run([image], **kwargs)["pixel_values"][0]  # [3, S, S]

    def tiles(self, image: Image.Image) -> torch.Tensor:
        """InternVL dynamic tiling: [n, 3, S, S], n - 1 tiles of the best grid (1..max tiles) + a thumbnail.

        The grid (cols, rows) with min_patches <= cols * rows <= max_patches closest in aspect ratio to the
        image is chosen; the image is resized to (cols * S, rows * S) and cut row-major; a thumbnail of the
        whole image follows when there is more than one tile (n = 1 otherwise).
        """
        if self.family != "internvl":
            raise TrainError(f"tiles() is InternVL's preprocessing; this is a {self.family} checkpoint.")
        return self._run([image], crop_to_patches=True)["pixel_values"]  # [n, 3, S, S]

    def tile_images(self, image: Image.Image) -> list[Image.Image]:
        """The tiles of `tiles(image)` as S x S PIL images, before normalisation (`self(tile)` normalises)."""
        if self.family != "internvl":
            raise TrainError(
                f"tile_images() is InternVL's preprocessing; this is a {self.family} checkpoint."
            )
        p = self.processor
        crops = p.crop_image_to_patches(
            np.asarray(image.convert("RGB")),
            min_patches=p.min_patches,
            max_patches=p.max_patches,
            patch_size=p.size,
            resample=p.resample,
        )  # list of [S, S, 3] uint8
        return [Image.fromarray(np.ascontiguousarray(c)) for c in crops]

    def prepare_sample(self, sample):
        """The sample as the family's processor feeds its model (see the module table); idempotent.

        A prepared sample carries meta["prepared_for"] = family and is returned unchanged.
        """
        if sample.meta.get("prepared_for") == self.family or self.family == "llava":
            return sample
        if self.family == "internvl":
            return self.tile_sample(sample)
        return self.native_sample(sample)

    def tile_sample(self, sample):
        """A copy of a `tbi_train.data.Sample` whose images are replaced by their InternVL tiles.

        Each single image becomes its n tiles (meta["media_frames"] entry n) and its `<image>` becomes
        `<img><image></img>`; video placeholders (several frames) keep one tile per frame, as InternVL does.
        """
        if self.family != "internvl":
            raise TrainError(
                f"tile_sample() is InternVL's preprocessing; this is a {self.family} checkpoint."
            )
        frames = list(sample.meta.get("media_frames", [1] * len(sample.images)))
        images, counts, start = [], [], 0
        for n in frames:
            media = sample.images[start : start + n]
            start += n
            tiles = self.tile_images(media[0]) if n == 1 else media
            images.extend(tiles)
            counts.append(len(tiles))
        open_, close = self.markers
        turns = [
            dict(t, value=t["value"].replace(IMAGE_PLACEHOLDER, f"{open_}{IMAGE_PLACEHOLDER}{close}"))
            for t in sample.conversations
        ]
        meta = {**sample.meta, "media_frames": counts, "prepared_for": self.family}
        return dataclasses.replace(sample, images=images, conversations=turns, meta=meta)

    def native_sample(self, sample):
        """A copy of a sample for Qwen2.5-VL: every frame its own image between the vision markers.

        An `<image>` of n frames becomes n x `<|vision_start|><image><|vision_end|>` (meta["media_frames"]
        all 1), so each image's tokens form their own run, as M-RoPE's `get_rope_index` requires.
        """
        if self.family != "qwen2_5_vl":
            raise TrainError(
                f"native_sample() is Qwen2.5-VL's preprocessing; this is a {self.family} checkpoint."
            )
        frames = iter(list(sample.meta.get("media_frames", [1] * len(sample.images))))
        open_, close = self.markers

        def expand(text: str) -> str:
            parts = text.split(IMAGE_PLACEHOLDER)
            out = [parts[0]]
            for part in parts[1:]:
                n = next(frames, 1)
                out += [f"{open_}{IMAGE_PLACEHOLDER}{close}" * n, part]
            return "".join(out)

        turns = [dict(t, value=expand(t["value"])) for t in sample.conversations]
        meta = {**sample.meta, "media_frames": [1] * len(sample.images), "prepared_for": self.family}
        return dataclasses.replace(sample, conversations=turns, meta=meta)

    def native(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """Qwen2.5-VL native resolution: packed patches [P, 3 * t * p * p] and grid_thw [I, 3] (in patches).

        Each image is resized to multiples of patch * merge within [min_pixels, max_pixels] keeping its
        aspect ratio; patches are packed in 2x2 merge-window order, as the model expects.
        """
        if self.family != "qwen2_5_vl":
            raise TrainError(f"native() is Qwen2.5-VL's preprocessing; this is a {self.family} checkpoint.")
        out = self._run(list(images))
        return out["pixel_values"], out["image_grid_thw"]

    def preprocess(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """Model inputs for `images` in the family's native pipeline.

        Returns:
            llava: {"pixel_values" [I, 3, S, S]}; internvl: {"pixel_values" [sum n_i, 3, S, S],
            "num_tiles" [I]}; qwen2_5_vl: {"pixel_values" [P, 3 t p p], "image_grid_thw" [I, 3]}.
        """
        if self.family == "qwen2_5_vl":
            pixels, grid = self.native(images)
            return {"pixel_values": pixels, "image_grid_thw": grid}
        if self.family == "internvl":
            tiles = [self.tiles(image) for image in images]
            return {
                "pixel_values": torch.cat(tiles),
                "num_tiles": torch.tensor([t.shape[0] for t in tiles], dtype=torch.long),
            }
        return {"pixel_values": torch.stack([self(image) for image in images])}

    def _run(self, images: list[Image.Image], **kwargs) -> dict[str, torch.Tensor]:
        return self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt", **kwargs)

    def __repr__(self) -> str:
        return f"PretrainedImageTransform({type(self.processor).__name__}, family={self.family!r}, size={self.size})"
