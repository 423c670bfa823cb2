"""What every projector returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ProjectorOutput:
    """The visual tokens a projector hands to the language model.

    Attributes:
        tokens: ``[B, M, D]`` visual tokens (for packed input ``B`` = number of images, padded to the longest).
        grid: ``(h', w')`` when the tokens of one frame form a row-major grid, else ``None``.
        kept_indices: ``[B, M]`` index of the input token each output token came from, when the module drops
            tokens (see each projector's docstring for the index space); ``None`` when nothing is dropped.
            Padding positions of packed input hold ``-1``.
        attention: optional attention/pooling weights for visualisation (``[B, M, N]`` unless stated), or ``None``.
        lengths: ``[B]`` number of valid tokens per row for packed input (the rest is zero padding), else ``None``.
    """

    tokens: torch.Tensor
    grid: tuple[int, int] | None = None
    kept_indices: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    lengths: torch.Tensor | None = None
