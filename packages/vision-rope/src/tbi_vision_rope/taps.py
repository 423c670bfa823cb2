"""Multi-scale taps (hidden states of chosen layers with their grids) and native-resolution encoding.

Layer numbers are 1-based block outputs, like ``hidden_states[L]`` of Hugging Face models: seed 000 taps
layers 8/16/24 of InternViT for its pyramid projector.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .errors import VisionRopeError
from .layout import build_layout
from .modernize import _find_family, _grid


@dataclass(frozen=True)
class Tap:
    """Patch tokens after block ``layer`` (1-based), prefix tokens removed.

    ``hidden``: ``[B, h*w, C]`` for a batch of equal-size images (``grid = (h, w)``), or ``[h*w, C]`` for
    one image of a packed batch.
    """

    layer: int
    hidden: torch.Tensor
    grid: tuple[int, int]

    def as_map(self) -> torch.Tensor:
        """``[B, C, h, w]`` (or ``[C, h, w]``) feature map, ready for convolutional projectors."""
        h, w = self.grid
        return self.hidden.transpose(-1, -2).reshape(*self.hidden.shape[:-2], -1, h, w)


@dataclass(frozen=True)
class PackedEncoding:
    """Output of :func:`encode_packed`: per image ``last_hidden [N_i, C]`` (prefix tokens first),
    its ``grid`` (h, w) and ``taps`` (one list of :class:`Tap` per image)."""

    last_hidden: list[torch.Tensor]
    grids: list[tuple[int, int]]
    taps: list[list[Tap]]


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks, in order: the modules that own each self-attention."""
    return [parent for parent, _, _ in _find_family(model)[2]]


def _check_layers(layers: Sequence[int], num_layers: int) -> list[int]:
    bad = [layer for layer in layers if not 1 <= int(layer) <= num_layers]
    if bad:
        raise VisionRopeError(f"tap layers {bad} out of range: use 1..{num_layers} (1-based block outputs)")
    return [int(layer) for layer in layers]


@contextmanager
def _capture(blocks: list[nn.Module], layers: list[int]):
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for layer in layers:

        def hook(module, inputs, output, layer=layer):
            captured[layer] = output[0] if isinstance(output, tuple) else output

        handles.append(blocks[layer - 1].register_forward_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def extract_taps(model: nn.Module, pixel_values: torch.Tensor, layers: Sequence[int] = (8, 16, 24), **kwargs):
    """Runs ``model(pixel_values, **kwargs)`` and returns ``(outputs, [Tap, ...])`` for ``layers``.

    Works on modernized and original towers of the four supported families.

    Raises:
        VisionRopeError: an unsupported model or layers outside ``1..num_layers``.
    """
    family, embeddings, _ = _find_family(model)
    blocks = _blocks(model)
    layers = _check_layers(layers, len(blocks))
    grid = _grid(embeddings, family, pixel_values)
    with _capture(blocks, layers) as captured:
        outputs = model(pixel_values, **kwargs)
    taps = [Tap(layer, captured[layer][:, family.num_prefix :], grid) for layer in layers]
    return outputs, taps


def encode_packed(
    model: nn.Module, images: Sequence[torch.Tensor], layers: Sequence[int] = ()
) -> PackedEncoding:
    """Native resolution: encodes images ``[C, H_i, W_i]`` of different sizes as one packed sequence.

    The tower must be modernized with ``drop_abs_pos=True``. No padding tokens: every layer sees
    ``[1, Σ N_i, C]`` and attention never crosses images, so each image's result equals encoding it alone.

    Raises:
        VisionRopeError: an unmodernized tower, one that keeps absolute positions, no images, bad layers.
    """
    info = getattr(model, "tbi_vision_rope", None)
    if info is None or not info.drop_abs_pos:
        raise VisionRopeError(
            "encode_packed needs a tower patched by modernize(..., drop_abs_pos=True): absolute position "
            "embeddings are tied to one image size"
        )
    if not images:
        raise VisionRopeError("encode_packed got no images: pass a non-empty list of [C, H, W] tensors")
    family, embeddings, _ = _find_family(model)
    blocks = _blocks(model)
    layers = _check_layers(layers, len(blocks))
    embedded = [embeddings(image[None]) for image in images]  # each [1, N_i, C]
    grids = [_grid(embeddings, family, image) for image in images]
    context = model._tbi_context
    context.packed = build_layout(
        [(1, h, w) for h, w in grids], info.window, num_prefix=info.num_prefix, device=embedded[0].device
    )
    try:
        hidden = torch.cat(embedded, dim=1)  # [1, T, C]
        if family.pre_norm:
            hidden = getattr(model, family.pre_norm)(hidden)
        with _capture(blocks, layers) as captured:
            for block in blocks:
                # CLIP/SigLIP/DINOv2 blocks take an attention mask argument, InternViT's do not
                has_mask = "attention_mask" in inspect.signature(block.forward).parameters
                out = block(hidden, None) if has_mask else block(hidden)
                hidden = out[0] if isinstance(out, tuple) else out  # [1, T, C]
        if family.post_norm:
            hidden = getattr(model, family.post_norm)(hidden)
    finally:
        context.packed = None
    sizes = [e.shape[1] for e in embedded]
    last = list(hidden[0].split(sizes))
    per_layer = {layer: captured[layer][0].split(sizes) for layer in layers}
    taps = [
        [Tap(layer, per_layer[layer][i][family.num_prefix :], grids[i]) for layer in layers]
        for i in range(len(images))
    ]
    return PackedEncoding(last, grids, taps)
