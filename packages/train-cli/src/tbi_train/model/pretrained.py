"""Start from an existing VLM: decompose a local InternVL / LLaVA / Qwen2.5-VL checkpoint into our VLM.

The checkpoint is loaded once with its own transformers class (so every key renaming transformers knows
about applies), then taken apart without copying the big parts:

    InternVL (-hf)  vision_tower -> VisionTower (last state, CLS dropped)   multi_modal_projector -> pixel-shuffle-mlp
    LLaVA (-hf)     vision_tower -> VisionTower (layer -2, CLS dropped)     multi_modal_projector -> mlp2x_gelu
    Qwen2.5-VL      visual (minus merger) -> NativeVisionTower              visual.merger -> PatchMergerProjector

The language model (decoder + lm_head, tied weights kept tied) becomes the VLM's causal LM, and the
checkpoint's image processor becomes its preprocessing (`PretrainedImageTransform`). Logits of the
decomposed model equal the original's on the same inputs (tested on tiny random checkpoints).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from tbi_train.errors import TrainError
from tbi_train.model.pretrained_fixed import decompose_fixed_resolution
from tbi_train.model.pretrained_image import PretrainedImageTransform
from tbi_train.model.pretrained_qwen import decompose_qwen2_5_vl
from tbi_train.model.vlm import VLM

__all__ = ["FAMILIES", "detect_family", "load_pretrained_vlm"]

logger = logging.getLogger(__name__)

FAMILIES: dict[str, tuple[str, str]] = {
    "internvl": ("internvl", "InternVLForConditionalGeneration"),
    "llava": ("llava", "LlavaForConditionalGeneration"),
    "qwen2_5_vl": ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"),
}
"""Supported families: name -> (config.json `model_type`, transformers class)."""

_REMOTE_LAYOUTS = {
    "internvl_chat": "the original OpenGVLab InternVL layout (remote code); use the '-hf' conversion "
    "(e.g. OpenGVLab/InternVL2_5-8B-MPO-hf, or transformers' convert_internvl_weights_to_hf.py)",
    "llava_llama": "the original haotian-liu LLaVA layout; use the llava-hf conversion (llava-hf/llava-1.5-7b-hf)",
}


def detect_family(path: str | Path) -> str:
    """The family of a local checkpoint from its config.json `model_type` (or `architectures`).

    Raises:
        TrainError: no config.json, or a model type that is not one of FAMILIES.
    """
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise TrainError(
            f"{config_file} does not exist; point at a local checkpoint folder holding config.json."
        )
    try:
        values = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise TrainError(f"{config_file} is not valid JSON: {exc}.") from exc
    model_type = values.get("model_type")
    architectures = values.get("architectures") or []
    for family, (family_type, cls_name) in FAMILIES.items():
        if model_type == family_type or cls_name in architectures:
            return family
    if model_type in _REMOTE_LAYOUTS:
        raise TrainError(f"{config_file}: model_type={model_type!r} is {_REMOTE_LAYOUTS[model_type]}.")
    raise TrainError(
        f"{config_file}: model_type={model_type!r}, architectures={architectures} is not a supported VLM; "
        f"supported model_type values: {sorted(t for t, _ in FAMILIES.values())}."
    )


def load_pretrained_vlm(
    path: str | Path,
    family: str | None = None,
    trust_remote_code: bool = False,
    dtype: torch.dtype | None = None,
    tokenizer=None,
) -> VLM:
    """Load a local InternVL-hf / llava-hf / Qwen2.5-VL checkpoint as a VLM of tower + zoo projector + LM.

    Args:
        path: local checkpoint folder (config.json, safetensors weights, tokenizer, preprocessor_config.json).
            Never resolved on the Hub: a missing folder is an error.
        family: "internvl", "llava" or "qwen2_5_vl"; detected from config.json when None (and checked
            against it when given).
        trust_remote_code: allow checkpoint-provided Python code (only when the user asks for it).
        dtype: parameter dtype (default: transformers' choice, fp32 on CPU).
        tokenizer: the tokenizer to use (a saved copy of the checkpoint's); default: the one in `path`.

    Returns:
        A `VLM` in eval mode (a `NativeResolutionVLM` for Qwen2.5-VL) whose `image_transform` is the
        checkpoint's own preprocessing and whose `config.tokenizer.image_pad_token` is the family's image token.

    Raises:
        TrainError: a missing folder, an unsupported or mismatched family, or a configuration the
            decomposition cannot reproduce exactly (the message names the config key).
    """
    path = Path(path)
    if not path.is_dir():
        raise TrainError(
            f"{path} is not a local folder; pass the path of a downloaded checkpoint (Hub ids are never fetched)."
        )
    detected = detect_family(path)
    if family is not None and family != detected:
        if family not in FAMILIES:
            raise TrainError(f"family={family!r} is unknown; choose one of {sorted(FAMILIES)}.")
        raise TrainError(f"family={family!r} but {path / 'config.json'} describes a {detected!r} checkpoint.")
    import transformers
    from transformers import AutoTokenizer

    cls = getattr(transformers, FAMILIES[detected][1])
    kwargs = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    original = cls.from_pretrained(path, **kwargs)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code
        )
    transform = PretrainedImageTransform.from_pretrained(
        path, detected, **_text_markers(original.config, detected, tokenizer)
    )
    if detected == "qwen2_5_vl":
        vlm = decompose_qwen2_5_vl(original, tokenizer, transform, path)
    else:
        vlm = decompose_fixed_resolution(original, detected, tokenizer, transform, path)
    _check_materialised(vlm, path)
    logger.info(
        "decomposed %s checkpoint %s into vision + %s + LM", detected, path, vlm.config.projector.name
    )
    return vlm.eval()


def _text_markers(config, family: str, tokenizer) -> dict:
    """The image-pad token and (Qwen2.5-VL) the vision start/end tokens, as the checkpoint's tokenizer spells them."""
    token_id = getattr(config, "image_token_id", None)
    if token_id is None:
        token_id = config.image_token_index
    out = {"image_token": tokenizer.convert_ids_to_tokens(int(token_id))}
    if family == "qwen2_5_vl":
        markers = []
        for key, default in (
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        ):
            token_id = getattr(config, key, None)
            token = tokenizer.convert_ids_to_tokens(int(token_id)) if token_id is not None else None
            if token is None and tokenizer.convert_tokens_to_ids(default) != tokenizer.unk_token_id:
                token = default  # an id outside the vocabulary: the processor's own spelling
            if token is None:
                raise TrainError(
                    f"{key}={token_id} is not a token of the checkpoint's tokenizer, nor is {default}; "
                    "save the tokenizer the checkpoint was trained with next to it."
                )
            markers.append(token)
        out["markers"] = tuple(markers)
    return out


def _check_materialised(vlm: nn.Module, path: Path) -> None:
    meta = [n for n, t in [*vlm.named_parameters(), *vlm.named_buffers()] if t.is_meta]
    if meta:
        raise TrainError(f"{path}: tensors {meta[:5]} were not loaded from the checkpoint.")
