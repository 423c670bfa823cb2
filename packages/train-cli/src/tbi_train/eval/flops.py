"""FLOPs of one image through the VLM: counted on real forward passes and predicted by closed-form formulas.

Counted: `count_flops(fn)` runs `fn` under `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions,
attention kernels; one multiply-add = 2 FLOPs). torch's table has no entry for the CPU flash-attention kernel
(`aten._scaled_dot_product_flash_attention_for_cpu`, what `F.scaled_dot_product_attention` runs on the CPU), so
without help every global attention on the CPU would count as zero; it is added here with torch's own
formula for the CUDA kernels. Like torch's counter, attention is counted dense (a causal mask is not
subtracted).

Predicted (matmul FLOPs only; norms, activations, softmax and RoPE are ignored, as by the counter):

    patch embedding   2 · h·w · (3·p²) · C
    ViT layer         2·N·(4C² + 2C·I)  +  4·C · Σ_s n_s²          N = prefix + h·w tokens
                      (global layer: one segment of N tokens, i.e. 4·N²·C; window layer: one segment per
                      W×W window, n_s = tokens in window s (edge windows cut short) plus one segment of the
                      prefix tokens; with every window full, Σ n_s² = N·S, the 4·N·S·C of a span S = W²)
    SigLIP pooling    2·C²·(2 + 2N) + 4·N·C + 4·C·I   (one probe query attending N tokens, then the MLP)
    projector         mlp2x_gelu: 2·N·(C·D + (depth−1)·D²); linear: 2·N·C·D;
                      pixel-shuffle-mlp: 2·M·(f²C·D + D²) with M = ⌈h/f⌉·⌈w/f⌉;
                      adaptive-compression: 2·M·(f²C·D + D²) + 2·K·f²·(C·D + D²) (+ 2·M·f²C learned scorer),
                      K = round(fine_fraction · M) blocks kept at full resolution
    LM prefill        per layer 2·L·(D·H·d + 2·D·K·d + H·d·D + 3·D·I) + 4·L²·H·d,  plus 2·D·V for the one
                      position whose logits are computed (L = visual tokens + text tokens, K key/value heads)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tbi_train.errors import TrainError

__all__ = [
    "LMShape",
    "TowerShape",
    "count_flops",
    "lm_prefill_flops",
    "lm_shape",
    "projector_flops",
    "tower_shape",
    "vit_flops",
    "window_sizes",
]

# Tokens before the patches in each family's sequence (class token; SigLIP has none).
_PREFIX_TOKENS = {"SiglipVisionModel": 0, "CLIPVisionModel": 1, "Dinov2Model": 1, "InternVLVisionModel": 1}


@dataclass(frozen=True)
class TowerShape:
    """What the ViT FLOP formula needs to know about a vision tower."""

    hidden_size: int
    """Width C."""
    intermediate_size: int
    """MLP width I."""
    num_layers: int
    """Encoder layers."""
    patch_size: int
    """Patch side p in pixels."""
    num_channels: int = 3
    """Input channels of the patch embedding."""
    num_prefix: int = 0
    """Class/register tokens before the patches (CLIP 1, SigLIP 0)."""
    window: int = 0
    """Window side W in patches; 0: every layer global."""
    global_layers: tuple[int, ...] = ()
    """0-based layers with global attention when `window` > 0."""
    pooling_head: bool = False
    """A SigLIP attention-pooling head runs after the encoder (`vision_use_head`)."""


@dataclass(frozen=True)
class LMShape:
    """What the prefill FLOP formula needs to know about a decoder-only LM (gated MLP, GQA)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    gated_mlp: bool = True
    """Three MLP matrices (gate, up, down; Llama/Qwen) instead of two."""


def tower_shape(model: nn.Module) -> TowerShape:
    """The `TowerShape` of a transformers ViT (CLIP, SigLIP, DINOv2, InternViT), modernised or not.

    Raises:
        TrainError: the model is not one of these families or its config lacks the sizes.
    """
    name = type(model).__name__
    if name not in _PREFIX_TOKENS:
        raise TrainError(
            f"no FLOP formula for a {name} tower (known: {sorted(_PREFIX_TOKENS)}); the measured counts still apply."
        )
    cfg = model.config
    hidden = int(cfg.hidden_size)
    inter = getattr(cfg, "intermediate_size", None) or int(getattr(cfg, "mlp_ratio", 4) * hidden)
    patch = cfg.patch_size[0] if isinstance(cfg.patch_size, list | tuple) else cfg.patch_size
    info = getattr(model, "tbi_vision_rope", None)
    window = int(info.window) if info is not None else 0
    return TowerShape(
        hidden_size=hidden,
        intermediate_size=int(inter),
        num_layers=int(cfg.num_hidden_layers),
        patch_size=int(patch),
        num_channels=int(getattr(cfg, "num_channels", 3)),
        num_prefix=_PREFIX_TOKENS[name] + int(getattr(cfg, "num_register_tokens", 0) or 0),
        window=window,
        global_layers=tuple(info.global_layers) if window else (),
        pooling_head=name == "SiglipVisionModel" and _has_pooling_head(model),
    )


def _has_pooling_head(model: nn.Module) -> bool:
    holder = getattr(model, "vision_model", model)  # transformers 4.x nests the tower, 5.x does not
    return getattr(holder, "head", None) is not None


def lm_shape(lm: nn.Module) -> LMShape:
    """The `LMShape` of a transformers causal LM from its config (gated MLP when it has `gate_proj` layers)."""
    cfg = lm.config
    heads = int(cfg.num_attention_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    gated = any(name.endswith("gate_proj") for name, _ in lm.named_modules())
    return LMShape(
        hidden_size=int(cfg.hidden_size),
        intermediate_size=int(cfg.intermediate_size),
        num_layers=int(cfg.num_hidden_layers),
        num_heads=heads,
        num_kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
        head_dim=int(head_dim),
        vocab_size=int(lm.get_output_embeddings().weight.shape[0]),
        gated_mlp=gated,
    )


def window_sizes(grid: tuple[int, int], window: int) -> list[int]:
    """Tokens per W×W window of an h×w patch grid, raster order; the last row/column of windows is cut short."""
    h, w = grid
    if window <= 0:
        return [h * w]
    rows = [min(window, h - r) for r in range(0, h, window)]
    cols = [min(window, w - c) for c in range(0, w, window)]
    return [r * c for r in rows for c in cols]


def vit_flops(shape: TowerShape, grid: tuple[int, int]) -> int:
    """Matmul FLOPs of one image through the tower's patch embedding and encoder layers (module docstring)."""
    h, w = grid
    c, p = shape.hidden_size, shape.patch_size
    n = shape.num_prefix + h * w
    total = 2 * h * w * shape.num_channels * p * p * c
    dense_span = 4 * c * n * n
    windows = window_sizes(grid, shape.window)
    window_span = 4 * c * (sum(s * s for s in windows) + shape.num_prefix**2)
    for layer in range(shape.num_layers):
        total += 2 * n * (4 * c * c + 2 * c * shape.intermediate_size)
        is_global = not shape.window or layer in shape.global_layers
        total += dense_span if is_global else window_span
    if shape.pooling_head:
        total += 2 * c * c * (2 + 2 * n) + 4 * n * c + 4 * c * shape.intermediate_size
    return total


def projector_flops(projector: nn.Module, grid: tuple[int, int]) -> int | None:
    """Matmul FLOPs of one image through a `tbi_projectors` projector, or None when it has no formula here."""
    cfg = projector.config
    h, w = grid
    c, d = cfg.input_dim, cfg.output_dim
    if projector.name == "mlp2x_gelu":
        return 2 * h * w * (c * d + (cfg.depth - 1) * d * d)
    if projector.name == "linear":
        return 2 * h * w * c * d
    if projector.name == "pixel-shuffle-mlp":
        f = cfg.factor
        m = -(-h // f) * -(-w // f)
        return 2 * m * (f * f * c * d + d * d)
    if projector.name == "adaptive-compression":
        f = cfg.factor
        blocks = -(-h // f) * -(-w // f)
        fine = min(blocks, round(cfg.fine_fraction * blocks))
        total = 2 * blocks * (f * f * c * d + d * d) + 2 * fine * f * f * (c * d + d * d)
        return total + (2 * blocks * f * f * c if cfg.score == "learned" else 0)
    return None


def lm_prefill_flops(shape: LMShape, length: int) -> int:
    """Matmul FLOPs of a prefill over `length` positions with logits for the last one (module docstring)."""
    d, hd = shape.hidden_size, shape.head_dim
    proj = d * shape.num_heads * hd + 2 * d * shape.num_kv_heads * hd + shape.num_heads * hd * d
    mlp = (3 if shape.gated_mlp else 2) * d * shape.intermediate_size
    per_layer = 2 * length * (proj + mlp) + 4 * length * length * shape.num_heads * hd
    return shape.num_layers * per_layer + 2 * d * shape.vocab_size


def count_flops(fn: Callable[[], object]) -> tuple[int, dict[str, int]]:
    """Run `fn()` under `FlopCounterMode`: (total FLOPs, FLOPs per aten op), CPU flash attention included."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_flash(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    mapping = {} if op is None else {op: cpu_flash}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    per_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), per_op
