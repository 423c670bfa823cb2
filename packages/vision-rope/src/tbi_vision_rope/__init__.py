"""2D-RoPE, window attention and native resolution for vision transformers, with a fused Triton kernel."""

from .attention import available_backends, windowed_rope_attention
from .errors import VisionRopeError
from .layout import WindowLayout, build_layout, default_global_layers
from .modernize import ModernizedInfo, RopeWindowAttention, modernize
from .packing import PackedImages, pack_images
from .qwen import QwenVisionSettings, qwen2_5_vl_settings
from .rope import Rope2D, RopeConfig, apply_rope
from .taps import PackedEncoding, Tap, encode_packed, extract_taps

__version__ = "0.1.0"

__all__ = [
    "ModernizedInfo",
    "PackedEncoding",
    "PackedImages",
    "QwenVisionSettings",
    "Rope2D",
    "RopeConfig",
    "RopeWindowAttention",
    "Tap",
    "VisionRopeError",
    "WindowLayout",
    "apply_rope",
    "available_backends",
    "build_layout",
    "default_global_layers",
    "encode_packed",
    "extract_taps",
    "modernize",
    "pack_images",
    "qwen2_5_vl_settings",
    "windowed_rope_attention",
]
