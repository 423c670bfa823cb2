"""Qwen2.5-VL taken apart: native-resolution tower, its PatchMerger as a projector, M-RoPE positions.

Qwen2.5-VL's merger is RMSNorm per patch -> concat of each 2x2 block -> Linear(4C, 4C) -> GELU ->
Linear(4C, D). The zoo's `pixel-shuffle-mlp` normalises after the concat with a LayerNorm and its
hidden width is D, so the weights cannot map onto it exactly: the merger is wrapped as its own projector
(`PatchMergerProjector`, same call shapes as the zoo) with the trained weights.

Its LM rotates queries/keys with 3-D positions (t, h, w) for image tokens (M-RoPE), so the model is a
`NativeResolutionVLM` that computes those positions from `image_grid_thw` before calling the LM.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tbi_projectors import Projector, ProjectorConfig, ProjectorError, ProjectorOutput, space_to_depth
from tbi_train.errors import TrainError
from tbi_train.model.pretrained_parts import copy_weights, model_config
from tbi_train.model.vision import VisionTower
from tbi_train.model.vlm import VLM, _splice

__all__ = [
    "NativeResolutionVLM",
    "NativeVisionTower",
    "PatchMergerConfig",
    "PatchMergerProjector",
    "decompose_qwen2_5_vl",
]

_NOMINAL_GRID = 32
"""`VLM.tokens_per_image` of a native-resolution model is quoted for a square image of 32 x 32 patches (448 px)."""


@dataclass
class PatchMergerConfig(ProjectorConfig):
    """Options of Qwen2.5-VL's PatchMerger."""

    merge_size: int = 2
    """Side of the square of patches merged into one token (Qwen2.5-VL: 2)."""
    eps: float = 1e-6
    """RMSNorm epsilon."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.merge_size < 1:
            raise ProjectorError(f"qwen2.5-vl-merger: merge_size must be >= 1, got {self.merge_size}")


class PatchMergerProjector(Projector):
    """``x -> RMSNorm(x) -> space_to_depth(., m) -> Linear(m²C, m²C) -> GELU -> Linear(m²C, D)``.

    ``[B, h·w, C] -> [B, ⌈h/m⌉·⌈w/m⌉, D]``; packed native-resolution input via ``cu_seqlens``/``grid_thw``.
    RMSNorm(x) = x / sqrt(mean(x²) + eps) * g, per patch. Parameters: ``C + (m²C)² + m²C + m²C·D + D``.
    """

    name = "qwen2.5-vl-merger"
    config_class = PatchMergerConfig

    def _build(self) -> None:
        c = self.config
        width = c.merge_size * c.merge_size * c.input_dim
        self.ln_q = nn.RMSNorm(c.input_dim, eps=c.eps)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, c.output_dim))

    def _forward_frame(self, x: torch.Tensor, grid, **kwargs) -> ProjectorOutput:
        x = self.ln_q(x)  # [B, h*w, C]
        x, out_grid = space_to_depth(x, grid, self.config.merge_size)  # [B, h'*w', m²C]
        return ProjectorOutput(tokens=self.mlp(x), grid=out_grid)  # [B, h'*w', D]

    def _tokens_per_frame(self, grid) -> int:
        m = self.config.merge_size
        return -(-grid[0] // m) * -(-grid[1] // m)

    @classmethod
    def count_parameters(cls, config: PatchMergerConfig) -> int:
        width = config.merge_size * config.merge_size * config.input_dim
        return config.input_dim + width * width + width + width * config.output_dim + config.output_dim


class _MergeUnits(nn.Module):
    """Stands in for the merger inside the tower: [P, C] -> [P / m², m²C], one row per merge window."""

    def __init__(self, unit: int):
        super().__init__()
        self.unit = unit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, self.unit * x.shape[-1])  # [P / m², m²C]


class NativeVisionTower(VisionTower):
    """Qwen2.5-VL's vision transformer (window attention, 2-D RoPE) up to, not including, its merger.

    Input: packed patches [P, 3 * t * p * p] in the processor's merge-window order and grid_thw [I, 3].
    Output: features [P, C], each image's patches frame-major then row-major (the zoo's packed layout).
    """

    def __init__(self, visual: nn.Module):
        self.merge = visual.spatial_merge_size
        visual.merger = _MergeUnits(self.merge * self.merge)
        super().__init__(visual, _NOMINAL_GRID * visual.patch_size, visual.patch_size, feature_layer=-1)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor | None = None) -> torch.Tensor:
        """pixel_values [P, 3 t p p], grid_thw [I, 3] -> features [P, C] (row-major per frame)."""
        if grid_thw is None:
            raise TrainError(
                "a native-resolution tower needs image_grid_thw [I, 3] with its packed pixel_values."
            )
        dtype = next(self.model.parameters()).dtype
        units = self.model(pixel_values.to(dtype), grid_thw=grid_thw).pooler_output  # [P / m², m²C]
        m, c = self.merge, units.shape[-1] // (self.merge * self.merge)
        out, start = [], 0
        for t, h, w in grid_thw.tolist():
            n = t * h * w // (m * m)
            x = units[start : start + n].reshape(t, h // m, w // m, m, m, c)  # [t, h/m, w/m, dy, dx, C]
            out.append(x.permute(0, 1, 3, 2, 4, 5).reshape(t * h * w, c))  # [t*h*w, C] row-major
            start += n
        return torch.cat(out)  # [P, C]


class NativeResolutionVLM(VLM):
    """A VLM fed native-resolution images (packed patches + grid_thw) and 3-D M-RoPE positions.

    position_ids [3, B, L]: text tokens count up 1-D (all three equal); an image of (t, h', w') merged
    tokens placed after text position s gets (s + t_i, s + row, s + col); text after it resumes at
    s + max(h', w'). Computed by the checkpoint's own `get_rope_index`.
    """

    def encode_images(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Packed patches [P, 3 t p p] + grid_thw [I, 3] -> image tokens [sum_i M_i, D], image-major."""
        if image_grid_thw is None:
            raise TrainError(
                "Qwen2.5-VL images need image_grid_thw [I, 3] (from image_transform.preprocess)."
            )
        features = self.vision(pixel_values, image_grid_thw)  # [P, C]
        cu = torch.cat([image_grid_thw.new_zeros(1), image_grid_thw.prod(dim=1).cumsum(0)])  # [I + 1]
        out = self.projector(features, cu_seqlens=cu, grid_thw=image_grid_thw)
        rows = [out.tokens[i, :n] for i, n in enumerate(out.lengths.tolist())]
        return torch.cat(rows)  # [sum M_i, D]

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_token_mask: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Text embeddings with the image-pad positions replaced by image tokens: [B, L, D]."""
        embeds, image_token_mask, n_slots = self._embed_text(input_ids, pixel_values, image_token_mask)
        if n_slots is None:
            return embeds
        tokens = self.encode_images(pixel_values, image_grid_thw)  # [T_img, D]
        if tokens.shape[0] != n_slots:
            raise TrainError(
                f"batch has {n_slots} image-pad tokens but the images give {tokens.shape[0]} tokens "
                f"(grid_thw {image_grid_thw.tolist()} / 4); expand each image to t*h*w/4 pad tokens."
            )
        return _splice(embeds, image_token_mask, tokens)  # [B, L, D]

    def position_ids(
        self,
        input_ids: torch.Tensor,
        image_token_mask: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """M-RoPE positions [3, B, L], or None for text only (the LM then counts 1-D)."""
        if image_grid_thw is None:
            return None
        if image_token_mask is None:
            image_token_mask = input_ids == self.image_pad_id
        positions, _ = self.lm.model.get_rope_index(
            input_ids,
            mm_token_type_ids=image_token_mask.int(),
            image_grid_thw=image_grid_thw,
            attention_mask=attention_mask,
        )
        return positions  # [3, B, L]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_token_mask: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits [B, L, V]."""
        embeds = self.embed(input_ids, pixel_values, image_token_mask, image_grid_thw)  # [B, L, D]
        positions = self.position_ids(input_ids, image_token_mask, image_grid_thw, attention_mask)
        return self.lm(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions, use_cache=False
        ).logits  # [B, L, V]

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.Tensor:
        """New token ids [B, new] (left-padded prompts), with the M-RoPE positions the original uses.

        The prompt ids travel with their spliced embeddings so transformers' generation derives the
        3-D positions (and the offset of the generated text positions) from them.
        """
        mask = input_ids == self.image_pad_id  # [B, L]
        embeds = self.embed(input_ids, pixel_values, mask, image_grid_thw)  # [B, L, D]
        extra = (
            {}
            if image_grid_thw is None
            else {"image_grid_thw": image_grid_thw, "mm_token_type_ids": mask.int()}
        )
        out = self.lm.generate(
            input_ids=input_ids,
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            **extra,
            **generate_kwargs,
        )
        return out[:, input_ids.shape[1] :]  # [B, new]: transformers returns prompt + new ids


def decompose_qwen2_5_vl(original, tokenizer, transform, path: Path) -> NativeResolutionVLM:
    """Split a loaded Qwen2_5_VLForConditionalGeneration into tower + PatchMergerProjector + LM."""
    config = original.config
    vcfg, tcfg = config.vision_config, config.text_config
    visual = original.model.visual
    merger = visual.merger
    projector = PatchMergerProjector(
        PatchMergerConfig(
            input_dim=vcfg.hidden_size,
            output_dim=vcfg.out_hidden_size,
            merge_size=vcfg.spatial_merge_size,
            eps=merger.ln_q.variance_epsilon,
        )
    )
    if vcfg.out_hidden_size != tcfg.hidden_size:
        raise TrainError(
            f"{path / 'config.json'}: vision_config.out_hidden_size={vcfg.out_hidden_size} differs from "
            f"text_config.hidden_size={tcfg.hidden_size}."
        )
    copy_weights(projector, {"ln_q": merger.ln_q, "mlp": merger.mlp}, path / "config.json")
    projector.to(merger.mlp[0].weight.dtype)
    vision = NativeVisionTower(visual)
    # The LM is the checkpoint's own class without its vision part: it owns the M-RoPE rotary embedding.
    original.model.visual = None
    cfg = model_config(
        path,
        projector=projector.name,
        options={"merge_size": vcfg.spatial_merge_size},
        image_size=vision.image_size,
        patch_size=vision.model.patch_size,
        layer=-1,
        transform=transform,
        text_config=tcfg,
        tokenizer=tokenizer,
        config=config,
    )
    return NativeResolutionVLM(vision, projector, original, tokenizer, cfg, transform)
