"""Converter: patch a Hugging Face vision tower in place with 2D-RoPE and windowed attention.

Supported towers (transformers 5.x module classes): CLIP (``CLIPVisionModel``), SigLIP
(``SiglipVisionModel``), DINOv2 (``Dinov2Model``) and InternViT (``InternVLVisionModel``). Every
self-attention module is replaced by :class:`RopeWindowAttention`, which keeps the original q/k/v/output
projections (same parameter names, so checkpoints still load) and calls
:func:`~tbi_vision_rope.attention.windowed_rope_attention`; the patch embedding drops the absolute
position embedding (``drop_abs_pos``). With ``rope=None``, ``window=0`` and ``drop_abs_pos=False`` the
patched tower computes exactly what the original did.

CLS tokens (CLIP, DINOv2, InternViT) are prefix tokens: in window layers they attend among themselves,
in global layers to their whole image; their RoPE position is (0, 0), i.e. they are not rotated.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from .attention import Backend, windowed_rope_attention
from .errors import VisionRopeError
from .layout import WindowLayout, build_layout, default_global_layers
from .rope import Rope2D, RopeConfig


@dataclass(frozen=True)
class _Family:
    name: str
    embeddings: str
    attention: str
    out_proj: str
    num_prefix: int
    patch_conv: str
    pre_norm: str | None
    post_norm: str | None


_FAMILIES = (
    _Family(
        "clip",
        "CLIPVisionEmbeddings",
        "CLIPAttention",
        "out_proj",
        1,
        "patch_embedding",
        "pre_layrnorm",
        None,
    ),
    _Family(
        "siglip",
        "SiglipVisionEmbeddings",
        "SiglipAttention",
        "out_proj",
        0,
        "patch_embedding",
        None,
        "post_layernorm",
    ),
    _Family(
        "dinov2",
        "Dinov2Embeddings",
        "Dinov2Attention",
        "o_proj",
        1,
        "patch_embeddings.projection",
        None,
        "layernorm",
    ),
    _Family(
        "internvit",
        "InternVLVisionEmbeddings",
        "InternVLVisionAttention",
        "projection_layer",
        1,
        "patch_embeddings.projection",
        None,
        "layernorm",
    ),
)


_MAX_CACHED_LAYOUTS = 16


class _BatchContext:
    """The grid of the batch being encoded: written by the patched embeddings, read by every attention.

    Holds the most recent layouts (keyed by batch size, grid and device) so that all layers of one
    forward, and later forwards of the same shape, share one layout.
    """

    def __init__(self, num_prefix: int, window: int) -> None:
        self.num_prefix, self.window = num_prefix, window
        self.grid: tuple[int, int] | None = None
        self.packed: WindowLayout | None = None
        self._layouts: dict[tuple, WindowLayout] = {}

    def layout(self, batch: int, tokens: int, device: torch.device) -> WindowLayout:
        if self.packed is not None:
            if batch != 1 or tokens != self.packed.num_tokens:
                raise VisionRopeError(
                    f"packed encoding expects hidden states [1, {self.packed.num_tokens}, C], got [{batch}, {tokens}, C]"
                )
            return self.packed.to(device)
        if self.grid is None:
            raise VisionRopeError(
                "the attention ran before the patched embeddings: call the model on pixel_values"
            )
        h, w = self.grid
        if tokens != self.num_prefix + h * w:
            raise VisionRopeError(
                f"hidden states have {tokens} tokens but the {h}x{w} patch grid with {self.num_prefix} prefix tokens "
                f"has {self.num_prefix + h * w}; feed the tower pixel_values, not custom token sequences"
            )
        key = (batch, h, w, str(device))
        if key not in self._layouts:
            if len(self._layouts) >= _MAX_CACHED_LAYOUTS:  # many input shapes: forget the oldest
                self._layouts.pop(next(iter(self._layouts)))
            self._layouts[key] = build_layout(
                [(1, h, w)] * batch, self.window, num_prefix=self.num_prefix, device=device
            )
        return self._layouts[key]


class RopeWindowAttention(nn.Module):
    """A vision tower's self-attention re-wired through :func:`windowed_rope_attention`.

    ``x: [B, N, C] -> q, k, v = W_q x, W_k x, W_v x`` (plus the tower's q/k norms) ``-> [B·N, H, D]``
    in window-major order ``-> windowed 2D-RoPE attention -> input order -> W_o``. Returns
    ``(output [B, N, C], None)`` like the Hugging Face modules it replaces.
    """

    def __init__(
        self,
        original: nn.Module,
        family: _Family,
        context: _BatchContext,
        rope: Rope2D | None,
        global_attention: bool,
        backend: Backend,
    ) -> None:
        super().__init__()
        for name, child in original.named_children():
            self.add_module(name, child)  # same parameter names as the original module
        self.num_heads = int(getattr(original, "num_heads", None) or original.num_attention_heads)
        self.head_dim = int(original.head_dim)
        self.scale = float(
            getattr(original, "scale", None) or getattr(original, "scaling", self.head_dim**-0.5)
        )
        self.out_name = family.out_proj
        self.rope = rope
        self.global_attention = global_attention
        self.backend = backend
        self._context = context

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs
    ):
        if attention_mask is not None:
            raise VisionRopeError(
                "RopeWindowAttention takes no attention_mask: windows and images already define who attends to whom"
            )
        batch, tokens, channels = hidden_states.shape
        layout = self._context.layout(batch, tokens, hidden_states.device)
        x = hidden_states.reshape(batch * tokens, channels)  # [B*N, C]
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # [B*N, H*D]
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (
            layout.to_window_order(t).view(-1, self.num_heads, self.head_dim) for t in (q, k, v)
        )  # [B*N, H, D]
        out = windowed_rope_attention(
            q,
            k,
            v,
            layout,
            self.rope,
            global_attention=self.global_attention,
            backend=self.backend,
            scale=self.scale,
        )  # [B*N, H, D]
        out = layout.to_input_order(out).reshape(batch, tokens, -1)  # [B, N, H*D]
        out = getattr(self, self.out_name)(out)  # [B, N, C]
        if hasattr(self, "projection_dropout"):
            out = self.projection_dropout(out)
        return out, None

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}, global={self.global_attention}, backend={self.backend}"


@dataclass(frozen=True)
class ModernizedInfo:
    """What :func:`modernize` did; stored on the model as ``model.tbi_vision_rope``."""

    family: str
    num_layers: int
    window: int
    global_layers: tuple[int, ...]
    rope: RopeConfig | None
    drop_abs_pos: bool
    num_prefix: int


def modernize(
    vision_model: nn.Module,
    rope: RopeConfig | bool | None = True,
    window: int = 0,
    global_layers: Sequence[int] | None = None,
    drop_abs_pos: bool = True,
    backend: Backend = "auto",
) -> nn.Module:
    """Patches a CLIP/SigLIP/DINOv2/InternViT vision tower in place; returns the same model.

    Args:
        vision_model: a Hugging Face vision tower (see the module docstring).
        rope: a :class:`RopeConfig`, True for the seed defaults, or None/False for no rotation.
        window: window side in patches; 0 = every layer global.
        global_layers: 0-based layers with global attention; default: 4 evenly spaced layers ending at
            the last (:func:`default_global_layers`; seed 001). Ignored when ``window`` is 0.
        drop_abs_pos: remove the absolute position embedding (its weights are deleted).
        backend: attention backend for every layer.

    Raises:
        VisionRopeError: an unsupported or already patched model, bad layer indexes or window.
    """
    if getattr(vision_model, "tbi_vision_rope", None) is not None:
        raise VisionRopeError("this model was already modernized; patch a fresh copy instead")
    family, embeddings, attentions = _find_family(vision_model)
    num_layers = len(attentions)
    if window < 0:
        raise VisionRopeError(f"window={window}: use a window side in patches > 0, or 0 for global attention")
    if global_layers is None:
        global_layers = default_global_layers(num_layers) if window else list(range(num_layers))
    bad = [i for i in global_layers if not 0 <= int(i) < num_layers]
    if bad:
        raise VisionRopeError(f"global_layers {bad} out of range: the model has layers 0..{num_layers - 1}")
    rope_config = RopeConfig() if rope is True else (rope or None)
    context = _BatchContext(family.num_prefix, window)
    for index, (parent, name, module) in enumerate(attentions):
        heads = int(getattr(module, "num_heads", None) or module.num_attention_heads)
        layer_rope = None
        if rope_config is not None:  # mixed RoPE: a different random start per layer, as in RoPE-Mixed
            layer_config = replace(rope_config, seed=rope_config.seed + index)
            layer_rope = Rope2D(heads, int(module.head_dim), layer_config).to(
                next(module.parameters()).device
            )
        is_global = not window or index in set(int(i) for i in global_layers)
        setattr(parent, name, RopeWindowAttention(module, family, context, layer_rope, is_global, backend))
    _patch_embeddings(embeddings, family, context, drop_abs_pos)
    vision_model.tbi_vision_rope = ModernizedInfo(
        family.name,
        num_layers,
        window,
        tuple(sorted(int(i) for i in global_layers)) if window else tuple(range(num_layers)),
        rope_config,
        drop_abs_pos,
        family.num_prefix,
    )
    vision_model._tbi_context = context
    return vision_model


def _find_family(model: nn.Module):
    for family in _FAMILIES:
        embeddings = [m for m in model.modules() if type(m).__name__ == family.embeddings]
        if not embeddings:
            continue
        if len(embeddings) != 1:
            raise VisionRopeError(
                f"found {len(embeddings)} {family.embeddings} modules: pass a single vision tower"
            )
        attentions = [
            (parent, name, child)
            for parent in model.modules()
            for name, child in parent.named_children()
            if type(child).__name__ == family.attention or isinstance(child, RopeWindowAttention)
        ]
        if not attentions:
            raise VisionRopeError(f"{type(model).__name__} has no {family.attention} modules to patch")
        return family, embeddings[0], attentions
    supported = ", ".join(f.embeddings.replace("Embeddings", "") for f in _FAMILIES)
    raise VisionRopeError(
        f"{type(model).__name__} is not a supported vision tower (supported: {supported}); pass the vision model "
        "itself, e.g. CLIPVisionModel, SiglipVisionModel, Dinov2Model or InternVLVisionModel"
    )


def _patch_conv(embeddings: nn.Module, family: _Family) -> nn.Conv2d:
    return embeddings.get_submodule(family.patch_conv)


def _grid(embeddings: nn.Module, family: _Family, pixel_values: torch.Tensor) -> tuple[int, int]:
    stride = _patch_conv(embeddings, family).stride
    height, width = pixel_values.shape[-2:]
    if height < stride[0] or width < stride[1]:
        raise VisionRopeError(
            f"pixel_values are {height}x{width} pixels, smaller than one {stride[0]}x{stride[1]} patch; upscale the images"
        )
    return height // stride[0], width // stride[1]


def _patch_embeddings(
    embeddings: nn.Module, family: _Family, context: _BatchContext, drop_abs_pos: bool
) -> None:
    original_forward = type(embeddings).forward

    def forward_keep_pos(self, pixel_values, *args, **kwargs):
        context.grid = _grid(self, family, pixel_values)
        return original_forward(self, pixel_values, *args, **kwargs)

    def forward_no_pos(self, pixel_values, bool_masked_pos=None, interpolate_pos_encoding=None, **kwargs):
        context.grid = _grid(self, family, pixel_values)
        batch = pixel_values.shape[0]
        if family.name in ("clip", "siglip"):
            conv = self.patch_embedding
            x = conv(pixel_values.to(conv.weight.dtype)).flatten(2).transpose(1, 2)  # [B, h*w, C]
        else:
            x = self.patch_embeddings(pixel_values)  # [B, h*w, C]
        if bool_masked_pos is not None and getattr(self, "mask_token", None) is not None:
            mask = bool_masked_pos.unsqueeze(-1).type_as(x)
            x = x * (1 - mask) + self.mask_token.expand_as(x) * mask
        if family.name == "clip":
            x = torch.cat([self.class_embedding.expand(batch, 1, -1), x], dim=1)  # [B, 1+h*w, C]
        elif family.num_prefix:
            x = torch.cat([self.cls_token.expand(batch, -1, -1), x], dim=1)  # [B, 1+h*w, C]
        return self.dropout(x) if hasattr(self, "dropout") else x

    if drop_abs_pos:
        if family.name in ("clip", "siglip"):
            del embeddings.position_embedding
            if "position_ids" in embeddings._buffers:
                del embeddings._buffers["position_ids"]
        else:
            embeddings.position_embeddings = None
    embeddings.forward = types.MethodType(forward_no_pos if drop_abs_pos else forward_keep_pos, embeddings)
