"""Attention probabilities of a vision tower's self-attention layers, computed from hooked inputs.

Fused attention (sdpa, the windowed RoPE op, the Triton kernel) never materialises the probabilities, so a
forward pre-hook on each attention module takes its input hidden states x [B, T, C] and recomputes, in at
least float32, with the module's own projections (LoRA adapters included):

    q = norm_q(W_q x), k = norm_k(W_k x)                  # [B, T, H, D]  (norms: InternViT's qk-norm)
    q, k = R(θ) q, R(θ) k                                 # modernised towers: 2D-RoPE at the layout positions
    P[b, h] = softmax_j(scale · q_i · k_j + mask_ij)      # [B, H, T, T]

mask_ij = 0 when j is visible from i and -inf otherwise: everything in a plain tower; in a modernised
(`tbi_vision_rope.modernize`) window layer only the tokens of i's window (prefix tokens among themselves),
in a global layer only the tokens of i's image. A query's probabilities are therefore exactly zero outside
its window. Rows and columns are in the tower's input order (prefix tokens first, then patches row-major).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from tbi_train.errors import TrainError

__all__ = ["AttentionCapture", "attention_layers"]

Sink = Callable[[int, int, torch.Tensor], None]
"""sink(layer, image index in the batch, probabilities [H, T, T]) receives one image of one layer."""


def attention_layers(tower: nn.Module) -> list[nn.Module]:
    """The self-attention module of each encoder layer, in order (CLIP, SigLIP, DINOv2, InternViT, modernised).

    Raises:
        TrainError: the tower has no module with q_proj / k_proj and a head count (e.g. Qwen2.5-VL's fused qkv).
    """
    found = [
        m
        for m in tower.modules()
        if hasattr(m, "q_proj") and hasattr(m, "k_proj") and hasattr(m, "head_dim") and _heads(m) is not None
    ]
    if not found:
        raise TrainError(
            f"{type(tower).__name__} has no self-attention module with q_proj/k_proj; attention maps and "
            "entropy support CLIP, SigLIP, DINOv2 and InternViT towers (plain or modernised)."
        )
    return found


class AttentionCapture:
    """Context manager: while open, each forward of `tower` sends the chosen layers' probabilities to `sink`.

    Args:
        tower: the transformers vision model (`VisionTower.model`).
        sink: called as sink(layer, image, probabilities [H, T, T] float32) once per image and layer.
        layers: 0-based encoder layers to capture (negative counts from the end); None: all.
        grid: (h, w) patch grid of the input images; needed by modernised towers to rebuild their layout.

    Raises:
        TrainError: an unsupported tower or a layer index out of range.
    """

    def __init__(
        self,
        tower: nn.Module,
        sink: Sink,
        layers: Sequence[int] | None = None,
        grid: tuple[int, int] | None = None,
    ):
        self.modules = attention_layers(tower)
        depth = len(self.modules)
        chosen = range(depth) if layers is None else layers
        bad = [i for i in chosen if not -depth <= i < depth]
        if bad:
            raise TrainError(f"attention layers {bad} out of range: the tower has layers 0..{depth - 1}.")
        self.layers = sorted({i % depth for i in chosen})
        self.sink = sink
        self.info = getattr(tower, "tbi_vision_rope", None)
        if self.info is not None and grid is None:
            raise TrainError("a modernised (tbi_vision_rope) tower needs grid=(h, w) to rebuild its windows.")
        self.grid = grid
        self._handles: list = []

    def __enter__(self) -> AttentionCapture:
        for layer in self.layers:
            hook = self._hook(layer)
            self._handles.append(self.modules[layer].register_forward_pre_hook(hook, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, layer: int):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]  # [B, T, C]
            with torch.no_grad():
                for b, probs in enumerate(self.probabilities(module, hidden)):
                    self.sink(layer, b, probs)  # [H, T, T]

        return hook

    def probabilities(self, module: nn.Module, hidden: torch.Tensor):
        """Yields the probabilities [H, T, T] of each image of the batch for one attention module."""
        batch, tokens, _ = hidden.shape
        heads, dim = _heads(module), int(module.head_dim)
        q, k = module.q_proj(hidden), module.k_proj(hidden)  # [B, T, H*D]
        if hasattr(module, "q_norm"):
            q, k = module.q_norm(q), module.k_norm(k)
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        q = q.to(dtype).reshape(batch, tokens, heads, dim)  # [B, T, H, D]
        k = k.to(dtype).reshape(batch, tokens, heads, dim)  # [B, T, H, D]
        group = None
        if self.info is not None:
            q, k, group = self._rotate(module, q, k)  # group [B, T] segment id of each token
        scale = float(getattr(module, "scale", None) or getattr(module, "scaling", dim**-0.5))
        for b in range(batch):
            scores = torch.einsum("ihd,jhd->hij", q[b], k[b]) * scale  # [H, T, T]
            if group is not None:
                visible = group[b].view(-1, 1) == group[b].view(1, -1)  # [T, T]
                scores = scores.masked_fill(~visible, float("-inf"))
            yield scores.softmax(dim=-1)  # [H, T, T]

    def _rotate(self, module, q: torch.Tensor, k: torch.Tensor):
        """2D-RoPE of a modernised layer and the id of the segment (window or image) each token attends in."""
        from tbi_vision_rope import apply_rope, build_layout

        batch, tokens, heads, dim = q.shape
        info = self.info
        h, w = self.grid
        if tokens != info.num_prefix + h * w:
            raise TrainError(
                f"hidden states have {tokens} tokens but grid {self.grid} with {info.num_prefix} prefix tokens "
                f"has {info.num_prefix + h * w}; pass the grid the images were encoded at."
            )
        layout = build_layout([(1, h, w)] * batch, info.window, num_prefix=info.num_prefix, device=q.device)
        flat_q = layout.to_window_order(q.reshape(batch * tokens, heads, dim))  # [B*T, H, D] window-major
        flat_k = layout.to_window_order(k.reshape(batch * tokens, heads, dim))
        if module.rope is not None:
            freqs = module.rope.frequencies()
            flat_q = apply_rope(flat_q, layout.pos_h, layout.pos_w, *freqs, module.rope.layout)
            flat_k = apply_rope(flat_k, layout.pos_h, layout.pos_w, *freqs, module.rope.layout)
        # Layout contract: a window layer lets i see j iff same window_seq_id (frame; prefix tokens have
        # their own) and same window (pos_h // W, pos_w // W); a global layer iff same global_seq_id.
        if module.global_attention or layout.window == 0:
            group = layout.global_seq_id.long()  # [B*T] window-major
        else:
            side = max(h, w) // layout.window + 1  # windows per axis, an upper bound
            cell = (layout.pos_h.long() // layout.window) * side + layout.pos_w.long() // layout.window
            group = layout.window_seq_id.long() * side * side + cell  # [B*T]
        q = layout.to_input_order(flat_q).reshape(batch, tokens, heads, dim)
        k = layout.to_input_order(flat_k).reshape(batch, tokens, heads, dim)
        return q, k, layout.to_input_order(group).reshape(batch, tokens)  # group [B, T]


def _heads(module: nn.Module) -> int | None:
    value = getattr(module, "num_heads", None) or getattr(module, "num_attention_heads", None)
    return int(value) if isinstance(value, int) else None
