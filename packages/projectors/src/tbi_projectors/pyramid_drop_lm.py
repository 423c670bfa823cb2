"""PyramidDrop inside the language model: after layers 8/16/24 keep the top ⌊N·λ^s⌋ image tokens.

Reference: Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual
Redundancy Reduction", CVPR 2025 (Cooperx521/PyramidDrop, ``pdrop_rank_drop``). At the end of stage s
(after ``layers[s-1]`` decoder layers) the image tokens are ranked by the attention the last instruction
token pays them — computed with the *next* layer's query/key projections, head-averaged — and the top
``⌊N·λ^s⌋`` (N = image tokens of the sample before any drop) are kept in their original order.

This module is the tensor-level part a trainer calls between decoder layers; every step is vectorised over
the batch (no per-sample Python loop, unlike the reference implementation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .errors import ProjectorError


@dataclass
class PyramidDropLMConfig:
    """Options of the in-LM PyramidDrop (defaults: the paper's LLaVA-1.5 setting)."""

    layers: tuple[int, ...] = (8, 16, 24)
    """Drop after this many decoder layers have run (the paper's ``layer_list``)."""
    ratio: float = 0.5
    """λ: stage s keeps ``⌊N·λ^s⌋`` image tokens (the paper's ratio list 1, 0.5, 0.25, 0.125)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio <= 1.0:
            raise ProjectorError(f"PyramidDrop ratio λ must be in (0, 1], got {self.ratio}")
        if list(self.layers) != sorted(set(self.layers)) or any(layer < 1 for layer in self.layers):
            raise ProjectorError(
                f"PyramidDrop layers must be increasing positive ints, got {list(self.layers)}"
            )


@dataclass
class DropResult:
    """The shortened sequence after one PyramidDrop step.

    Attributes:
        hidden_states: ``[B, L', D]`` kept tokens in original order, zero-padded on the right.
        attention_mask: ``[B, L']`` 1 for real tokens, 0 for padding.
        image_mask: ``[B, L']`` which kept tokens are image tokens.
        positions: ``[B, L']`` position in the *input* sequence of each kept token, ``-1`` on padding;
            use ``gather_positions`` to shorten labels, position ids, or compose steps.
        scores: ``[B, L]`` the ranking scores of the input sequence (for logging/visualisation).
    """

    hidden_states: torch.Tensor
    attention_mask: torch.Tensor
    image_mask: torch.Tensor
    positions: torch.Tensor
    scores: torch.Tensor | None = field(repr=False, default=None)


def keep_counts(num_image_tokens: torch.Tensor, stage: int, ratio: float) -> torch.Tensor:
    """``⌊N·λ^s⌋`` per sample (``N`` [B] = image tokens before any drop, ``s`` ≥ 1)."""
    factor = ratio**stage
    return torch.floor(num_image_tokens.double() * factor + 1e-9).long()


def last_instruction_attention(
    query_states: torch.Tensor,
    key_states: torch.Tensor,
    query_index: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Head-averaged causal attention of one token per sample over the sequence.

    Args:
        query_states: ``[B, H, L, d]`` queries (after RoPE).
        key_states: ``[B, H_kv, L, d]`` keys (after RoPE); grouped-query heads are repeated to ``H``.
        query_index: ``[B]`` position of the last instruction token of each sample.
        attention_mask: ``[B, L]`` 1 for real tokens (padding gets no attention).

    Returns:
        ``[B, L]`` in float32 (float64 for float64 input): ``mean_h softmax_j(q_{h,i} · k_{h,j} / √d)`` over ``j ≤ i`` (zero elsewhere).
    """
    b, h, length, d = query_states.shape
    if key_states.shape[1] != h:
        if h % key_states.shape[1]:
            raise ProjectorError(f"query heads {h} must be a multiple of key heads {key_states.shape[1]}")
        key_states = key_states.repeat_interleave(h // key_states.shape[1], dim=1)
    idx = query_index.to(query_states.device).long().view(b, 1, 1, 1).expand(b, h, 1, d)
    q = query_states.gather(2, idx)  # [B, H, 1, d]
    dtype = torch.promote_types(query_states.dtype, torch.float32)
    logits = (q.to(dtype) @ key_states.to(dtype).transpose(-1, -2)).squeeze(2) / math.sqrt(d)  # [B, H, L]
    allowed = torch.arange(length, device=logits.device).unsqueeze(0) <= query_index.view(b, 1)  # [B, L]
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()
    logits = logits.masked_fill(~allowed.unsqueeze(1), float("-inf"))
    return logits.softmax(dim=-1).mean(dim=1)  # [B, L]


def rank_and_drop(
    hidden_states: torch.Tensor,
    scores: torch.Tensor,
    image_mask: torch.Tensor,
    keep: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> DropResult:
    """Keep every text token and the ``keep[b]`` highest-scoring image tokens of each sample, in order.

    Args:
        hidden_states: ``[B, L, D]``.
        scores: ``[B, L]`` importance of each position (only image positions are ranked).
        image_mask: ``[B, L]`` bool, True at image tokens.
        keep: ``[B]`` image tokens to keep per sample (clamped to the number present).
        attention_mask: ``[B, L]`` 1 for real tokens; padding is dropped and re-added at the end.
    """
    b, length, _ = hidden_states.shape
    if scores.shape != (b, length) or image_mask.shape != (b, length):
        raise ProjectorError(
            f"rank_and_drop: scores {tuple(scores.shape)} and image_mask {tuple(image_mask.shape)} must be "
            f"[B, L] = {(b, length)}"
        )
    device = hidden_states.device
    real = (
        torch.ones(b, length, dtype=torch.bool, device=device)
        if attention_mask is None
        else attention_mask.bool()
    )
    image = image_mask.bool() & real
    ranked = scores.to(torch.promote_types(scores.dtype, torch.float32)).masked_fill(~image, float("-inf"))
    order = ranked.argsort(dim=1, descending=True, stable=True)  # [B, L]
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(length, device=device).expand(b, length))
    kept = (real & ~image) | (image & (rank < keep.to(device).view(b, 1)))  # [B, L]

    lengths = kept.sum(dim=1)
    new_len = int(lengths.max()) if b else 0
    positions = torch.sort((~kept).to(torch.uint8), dim=1, stable=True).indices[:, :new_len]  # [B, L']
    valid = torch.arange(new_len, device=device).unsqueeze(0) < lengths.unsqueeze(1)  # [B, L']
    positions = positions.masked_fill(~valid, -1)
    return DropResult(
        hidden_states=gather_positions(hidden_states, positions, 0),
        attention_mask=valid.long(),
        image_mask=gather_positions(image, positions, False),
        positions=positions,
        scores=scores,
    )


def gather_positions(tensor: torch.Tensor, positions: torch.Tensor, fill) -> torch.Tensor:
    """``tensor[b, positions[b, j]]`` for ``[B, L, ...]`` tensors; ``fill`` where ``positions`` is ``-1``."""
    valid = positions >= 0
    idx = positions.clamp(min=0)
    extra = tensor.shape[2:]
    out = tensor.gather(1, idx.view(*idx.shape, *([1] * len(extra))).expand(*idx.shape, *extra))
    mask = valid.view(*valid.shape, *([1] * len(extra)))
    return torch.where(mask, out, torch.as_tensor(fill, dtype=tensor.dtype, device=tensor.device))


def decoder_query_key(
    layer: torch.nn.Module,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and key states ``[B, H, L, d]`` (after RoPE) that a Llama-style decoder layer would compute.

    Works by duck typing for Hugging Face Llama, Mistral, Qwen2/2.5/3 layers (``input_layernorm``,
    ``self_attn.{q,k}_proj``, ``self_attn.head_dim``, optional ``self_attn.{q,k}_norm``) with the rotary
    ``(cos, sin)`` ``[B, L, d]`` the model passes to its layers (rotate-half layout). PyramidDrop ranks with
    the layer *after* the drop point: pass ``layers[s]`` and the hidden states that enter it.
    """
    attn = getattr(layer, "self_attn", None)
    needed = ("q_proj", "k_proj", "head_dim")
    if attn is None or not hasattr(layer, "input_layernorm") or not all(hasattr(attn, n) for n in needed):
        raise ProjectorError(
            f"{type(layer).__name__} is not a Llama-style decoder layer (input_layernorm, self_attn.q_proj/"
            "k_proj/head_dim); compute the query/key states yourself and pass them to PyramidDropHook.after_layer"
        )
    b, length, _ = hidden_states.shape
    x = layer.input_layernorm(hidden_states)  # [B, L, D]
    q = attn.q_proj(x).view(b, length, -1, attn.head_dim)  # [B, L, H, d]
    k = attn.k_proj(x).view(b, length, -1, attn.head_dim)  # [B, L, H_kv, d]
    if hasattr(attn, "q_norm") and hasattr(attn, "k_norm"):  # Qwen3 normalises each head before RoPE
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)  # [B, H, L, d]
    cos, sin = (t.unsqueeze(1) for t in position_embeddings)  # [B, 1, L, d]
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


class PyramidDropHook:
    """Stateful driver for one forward pass of a decoder: call ``after_layer`` after each decoder layer.

    Example (inside a trainer's decoder loop)::

        hook = PyramidDropHook(PyramidDropLMConfig(layers=(8, 16, 24), ratio=0.5))
        hook.start(image_mask, query_index)              # [B, L] bool, [B] last instruction token
        for i, layer in enumerate(layers):
            h = layer(h, ...)
            if hook.is_drop_layer(i + 1):
                q, k = next_layer_query_key(h)           # [B, H, L, d] with RoPE, from layers[i + 1]
                res = hook.after_layer(i + 1, h, q, k, attention_mask)
                h, attention_mask = res.hidden_states, res.attention_mask  # and gather labels/positions
        hook.original_positions                          # [B, L_final] positions in the first sequence

    Tracks, across stages, each kept token's position in the original sequence and where the last
    instruction token moved to.
    """

    def __init__(self, config: PyramidDropLMConfig | None = None):
        self.config = config or PyramidDropLMConfig()
        self.image_mask: torch.Tensor | None = None
        self.query_index: torch.Tensor | None = None
        self.num_image_tokens: torch.Tensor | None = None
        self.original_positions: torch.Tensor | None = None

    def start(self, image_mask: torch.Tensor, query_index: torch.Tensor) -> None:
        """Begin a forward pass: image positions ``[B, L]`` and the last instruction token ``[B]``."""
        if image_mask.dim() != 2 or query_index.shape != image_mask.shape[:1]:
            raise ProjectorError(
                f"PyramidDropHook.start: image_mask must be [B, L] and query_index [B], got "
                f"{tuple(image_mask.shape)} and {tuple(query_index.shape)}"
            )
        if (image_mask.gather(1, query_index.long().view(-1, 1))).any():
            raise ProjectorError(
                "PyramidDropHook.start: query_index points at an image token; pass the last text token"
            )
        self.image_mask = image_mask.bool()
        self.query_index = query_index.long()
        self.num_image_tokens = self.image_mask.sum(dim=1)
        b, length = image_mask.shape
        self.original_positions = torch.arange(length, device=image_mask.device).expand(b, length).clone()

    def is_drop_layer(self, layers_done: int) -> bool:
        return layers_done in self.config.layers

    def after_layer(
        self,
        layers_done: int,
        hidden_states: torch.Tensor,
        query_states: torch.Tensor,
        key_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> DropResult:
        """Rank the image tokens by the last instruction token's attention and drop to stage s's budget."""
        if self.image_mask is None:
            raise ProjectorError("PyramidDropHook.after_layer called before start(image_mask, query_index)")
        if not self.is_drop_layer(layers_done):
            raise ProjectorError(f"layer {layers_done} is not a drop layer {list(self.config.layers)}")
        stage = self.config.layers.index(layers_done) + 1
        scores = last_instruction_attention(query_states, key_states, self.query_index, attention_mask)
        keep = keep_counts(self.num_image_tokens, stage, self.config.ratio)
        result = rank_and_drop(hidden_states, scores, self.image_mask, keep, attention_mask)
        # The query token is text, so it is always kept; find its new index without a loop.
        self.query_index = (result.positions == self.query_index.view(-1, 1)).long().argmax(dim=1)
        self.image_mask = result.image_mask
        self.original_positions = gather_positions(self.original_positions, result.positions, -1)
        return result
