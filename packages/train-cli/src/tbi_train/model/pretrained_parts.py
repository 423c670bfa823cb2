"""Pieces shared by the decompositions of existing VLMs: weight copying into zoo projectors, the ModelConfig."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from tbi_train.config import (
    LMConfig,
    LoraSpec,
    ModelConfig,
    PeftConfig,
    ProjectorSpec,
    TokenizerConfig,
    VisionConfig,
)
from tbi_train.errors import TrainError

__all__ = ["copy_weights", "model_config"]


def copy_weights(projector: nn.Module, mapping: dict[str, nn.Module], where: Path) -> None:
    """Copy each source module's weight/bias into the projector's submodule of the given name (shapes checked)."""
    state = {}
    for target, module in mapping.items():
        for key, value in module.state_dict().items():
            state[f"{target}.{key}"] = value
    own = projector.state_dict()
    bad = {
        k: (tuple(v.shape), tuple(own[k].shape))
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    }
    if set(state) != set(own) or bad:
        raise TrainError(
            f"{where}: the projector weights do not map onto {type(projector).__name__}: "
            f"keys {sorted(state)} vs {sorted(own)}, shape mismatches {bad}."
        )
    projector.load_state_dict(state, strict=True)


def model_config(
    path: Path,
    *,
    projector: str,
    options: dict,
    image_size: int,
    patch_size: int,
    layer: int,
    transform,
    text_config,
    tokenizer,
    config,
) -> ModelConfig:
    """The ModelConfig describing the decomposed model (sizes for reference; adapters off)."""
    token_id = getattr(config, "image_token_id", None)
    if token_id is None:
        token_id = config.image_token_index
    token = tokenizer.convert_ids_to_tokens(int(token_id))
    if token is None or tokenizer.convert_tokens_to_ids(token) != int(token_id):
        raise TrainError(
            f"{path / 'config.json'}: image token id {token_id} is not a token of the checkpoint's tokenizer."
        )
    vision = VisionConfig(
        hidden_size=config.vision_config.hidden_size,
        image_size=image_size,
        patch_size=patch_size,
        feature_layer=layer,
        image_mean=tuple(transform.mean),
        image_std=tuple(transform.std),
        gradient_checkpointing=False,
    )
    lm = LMConfig(
        hidden_size=text_config.hidden_size,
        num_layers=text_config.num_hidden_layers,
        num_heads=text_config.num_attention_heads,
        num_kv_heads=getattr(text_config, "num_key_value_heads", text_config.num_attention_heads),
        intermediate_size=text_config.intermediate_size,
        max_position_embeddings=text_config.max_position_embeddings,
    )
    off = LoraSpec(enabled=False)
    return ModelConfig(
        vision=vision,
        projector=ProjectorSpec(name=projector, options=tuple(sorted(options.items()))),
        lm=lm,
        tokenizer=TokenizerConfig(path=str(path), image_pad_token=token),
        peft=PeftConfig(lm=off, vision=off, projector=off),
    )
