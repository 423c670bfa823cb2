"""VLM composition: vision tower + projector + causal LM, tokenizer, peft adapters, save/load.

An existing InternVL-hf / llava-hf / Qwen2.5-VL checkpoint splits into the same parts with
`load_pretrained_vlm` (or `ModelConfig.pretrained`).
"""

from tbi_train.model.adapters import attach_adapters, is_adapter_param, save_adapter
from tbi_train.model.build import build_vlm, load_vlm, save_vlm
from tbi_train.model.image import ImageTransform
from tbi_train.model.pretrained import detect_family, load_pretrained_vlm
from tbi_train.model.pretrained_image import PretrainedImageTransform
from tbi_train.model.pretrained_qwen import NativeResolutionVLM
from tbi_train.model.pyramid_drop import PyramidDrop
from tbi_train.model.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tokenizer, train_bpe_tokenizer
from tbi_train.model.vision import VisionTower, build_vision_tower
from tbi_train.model.vlm import VLM

__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "VLM",
    "ImageTransform",
    "NativeResolutionVLM",
    "PretrainedImageTransform",
    "PyramidDrop",
    "VisionTower",
    "attach_adapters",
    "build_tokenizer",
    "build_vision_tower",
    "build_vlm",
    "detect_family",
    "is_adapter_param",
    "load_pretrained_vlm",
    "load_vlm",
    "save_adapter",
    "save_vlm",
    "train_bpe_tokenizer",
]
