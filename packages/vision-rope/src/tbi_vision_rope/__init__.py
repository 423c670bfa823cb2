"""2D-RoPE, window attention and native resolution for vision transformers, with a fused Triton kernel."""

__version__ = "0.1.0"
