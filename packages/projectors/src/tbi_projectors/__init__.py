"""The vision-to-language projector zoo (MLP, C-Abstractor, Perceiver, pixel-shuffle, spatial tokens, token compression)."""

__version__ = "0.1.0"
