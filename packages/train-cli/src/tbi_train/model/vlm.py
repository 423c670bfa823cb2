"""VLM = vision tower + projector + causal LM; image tokens spliced at the image-pad positions (LLaVA style).

features = vision(pixel_values)                     # [N_img, P, C]
tokens   = projector(features, grid).tokens         # [N_img, M, D]
embeds   = lm.embed(input_ids)                      # [B, L, D]
embeds[image_token_mask] = tokens.flatten(0, 1)     # masked_scatter, image-major then row-major
logits   = lm(inputs_embeds=embeds, attention_mask)  # [B, L, V]
"""

from __future__ import annotations

import torch
from torch import nn

from tbi_train.config import ModelConfig
from tbi_train.errors import TrainError
from tbi_train.model.adapters import is_adapter_param
from tbi_train.model.image import ImageTransform
from tbi_train.model.vision import VisionTower

__all__ = ["VLM"]


class VLM(nn.Module):
    """A vision-language model built from three replaceable parts.

    Args:
        vision: the vision tower (patch features of one layer).
        projector: a `tbi_projectors` projector mapping [N, P, C] to [N, M, D].
        lm: a transformers causal LM with hidden size D.
        tokenizer: the tokenizer, holding `image_pad_token`.
        config: the model config it was built from (saved with the weights).
        image_transform: PIL image -> [3, H, W] tensor for this tower.
    """

    def __init__(
        self,
        vision: VisionTower,
        projector: nn.Module,
        lm: nn.Module,
        tokenizer,
        config: ModelConfig,
        image_transform: ImageTransform,
    ):
        super().__init__()
        self.vision = vision
        self.projector = projector
        self.lm = lm
        self.tokenizer = tokenizer
        self.config = config
        self.image_transform = image_transform
        self.image_pad_id = tokenizer.convert_tokens_to_ids(config.tokenizer.image_pad_token)
        self.tokens_per_image = projector.num_output_tokens(grid=vision.grid)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [N_img, 3, H, W] -> LM-space image tokens [N_img, M, D]."""
        features = self.vision(pixel_values)  # [N_img, P, C]
        return self.projector(features, grid=self.vision.grid).tokens  # [N_img, M, D]

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Text embeddings with the image-pad positions replaced by image tokens: [B, L, D]."""
        embeds = self.lm.get_input_embeddings()(input_ids)  # [B, L, D]
        if image_token_mask is None:
            image_token_mask = input_ids == self.image_pad_id  # [B, L]
        n_slots = int(image_token_mask.sum())
        if pixel_values is None or pixel_values.shape[0] == 0:
            if n_slots:
                raise TrainError(f"batch has {n_slots} image-pad tokens but no pixel_values.")
            return embeds
        tokens = self.encode_images(pixel_values.to(embeds.dtype))  # [N_img, M, D]
        if tokens.shape[0] * tokens.shape[1] != n_slots:
            raise TrainError(
                f"batch has {n_slots} image-pad tokens but {tokens.shape[0]} images x {tokens.shape[1]} tokens = "
                f"{tokens.shape[0] * tokens.shape[1]}; the collator must expand each <image> to "
                f"{self.tokens_per_image} pad tokens."
            )
        mask = image_token_mask.unsqueeze(-1).expand_as(embeds)  # [B, L, D]
        return embeds.masked_scatter(mask, tokens.reshape(-1, tokens.shape[-1]).to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits [B, L, V] (position t predicts token t + 1)."""
        embeds = self.embed(input_ids, pixel_values, image_token_mask)  # [B, L, D]
        return self.lm(
            inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False
        ).logits  # [B, L, V]

    def component_modules(self) -> dict[str, nn.Module]:
        """The three parts by name (the names phases use in `trainable`)."""
        return {"vision": self.vision, "projector": self.projector, "lm": self.lm}

    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Parameters by group: "vision", "projector", "lm" (base weights) and their "*_lora" adapters.

        Tied weights (e.g. the LM's input and output embeddings) appear once.
        """
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
        seen: set[int] = set()
        for comp, module in self.component_modules().items():
            for name, param in module.named_parameters():
                if id(param) in seen:
                    continue
                seen.add(id(param))
                group = f"{comp}_lora" if is_adapter_param(name) else comp
                groups.setdefault(group, []).append((f"{comp}.{name}", param))
        return groups
