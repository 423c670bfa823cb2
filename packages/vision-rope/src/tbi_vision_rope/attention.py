"""``windowed_rope_attention``: attention inside windows (or whole images) with 2D-RoPE on q and k.

For tokens ``i, j`` of a packed batch in window-major order (see :mod:`tbi_vision_rope.layout`):

    q̃_i = R(θ_i) q_i,  k̃_j = R(θ_j) k_j,  θ_i = pos_h[i] · freq_h + pos_w[i] · freq_w
    out_i = Σ_{j ∈ S(i)} softmax_j(scale · q̃_i · k̃_j) v_j

with ``S(i)`` the tokens of the same window (window layers) or the same frame/image (global layers).
This is the primitive of ``_triton_attention.triton_windowed_rope_attention``; backends:

- ``sdpa``: PyTorch, the CPU path and the reference; segments of equal length are batched, in cache-sized
  chunks, never with a dense T×T mask: windows through the fused node of :mod:`._small_windows`, long
  segments (global layers) through ``F.scaled_dot_product_attention``.
- ``flash``: ``flash_attn.flash_attn_varlen_func`` over the layout's ``cu_seqlens`` (CUDA, when installed).
- ``triton``: the fused kernel (RoPE inside the kernel, windows decided from per-token ids).
- ``auto``: triton on CUDA when importable, else flash on CUDA when installed, else sdpa.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Literal

import torch
import torch.nn.functional as F

from ._small_windows import small_window_attention
from .errors import VisionRopeError
from .layout import SegmentGroups, WindowLayout
from .rope import Rope2D, apply_rope, rope_tables, rotate

Backend = Literal["auto", "sdpa", "flash", "triton"]
TRITON_HEAD_DIMS = (64, 72, 80, 128)
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Elements of q per chunk (512 KB in fp32): about what one core's L2 holds for q, k, v and the scores.
_CHUNK_ELEMENTS = 1 << 17
# Segments up to this length go through the fused small-window path (its saved softmax is [L, L] per head).
_SMALL_WINDOW = 256


def windowed_rope_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: WindowLayout,
    rope: Rope2D | None = None,
    *,
    global_attention: bool = False,
    backend: Backend = "auto",
    scale: float | None = None,
) -> torch.Tensor:
    """Windowed (or per-image global) non-causal attention with 2D-RoPE; autograd-capable.

    Args:
        q, k, v: ``[T, H, D]`` packed tokens in the layout's window-major order.
        layout: the batch's :class:`~tbi_vision_rope.layout.WindowLayout`.
        rope: the :class:`~tbi_vision_rope.rope.Rope2D` applied to q and k, or None for no rotation.
        global_attention: attend within whole frames/images (a global layer) instead of windows.
        backend: ``auto``, ``sdpa``, ``flash`` or ``triton``.
        scale: softmax scale, default ``1 / sqrt(D)``.

    Returns:
        ``[T, H, D]`` in q's dtype, window-major order.

    Raises:
        VisionRopeError: shape/layout/rope mismatches, an unknown or unavailable backend, head dims or
            dtypes the triton kernel does not support; always before any kernel launch.
    """
    _check_inputs(q, k, v, layout, rope)
    name = _resolve_backend(backend, q)
    layout = layout.to(q.device)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    # A layout without windows has only global layers (its per-window groups would isolate prefix tokens).
    global_attention = global_attention or layout.window == 0
    freqs = rope.frequencies() if rope is not None else None
    rope_layout = rope.layout if rope is not None else "half"
    if name == "triton":
        return _triton(q, k, v, layout, freqs, rope_layout, global_attention, scale)
    if name == "flash":
        if freqs is not None:
            q = apply_rope(q, layout.pos_h, layout.pos_w, *freqs, rope_layout)  # [T, H, D]
            k = apply_rope(k, layout.pos_h, layout.pos_w, *freqs, rope_layout)  # [T, H, D]
        return _flash(q, k, v, layout, global_attention, scale)
    segments = layout.global_groups if global_attention else layout.window_groups
    return _sdpa(q, k, v, segments, layout, freqs, rope_layout, scale)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends usable for tensors on ``device`` (``auto`` picks the first)."""
    device = torch.device(device)
    found = []
    if device.type == "cuda" and _triton_module() is not None:
        found.append("triton")
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        found.append("flash")
    return [*found, "sdpa"]


def _check_inputs(q, k, v, layout: WindowLayout, rope: Rope2D | None) -> None:
    if q.dim() != 3 or q.shape != k.shape or q.shape != v.shape:
        raise VisionRopeError(
            f"q, k, v must share one shape [T, H, D]; got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    tokens, heads, dim = q.shape
    if tokens != layout.num_tokens:
        raise VisionRopeError(
            f"q has {tokens} tokens but the layout describes {layout.num_tokens} (grid_thw={list(layout.grid_thw)}, "
            f"num_prefix={layout.num_prefix}); build the layout from the same images as the tokens"
        )
    if rope is not None and (rope.num_heads != heads or rope.head_dim != dim):
        raise VisionRopeError(
            f"rope was built for {rope.num_heads} heads x {rope.head_dim} dims but q has {heads} x {dim}; "
            "build Rope2D(num_heads, head_dim) to match the attention"
        )


def _triton_module():
    if importlib.util.find_spec("triton") is None:
        return None
    try:
        return importlib.import_module("tbi_vision_rope._triton_attention")
    except ImportError:
        return None


def _resolve_backend(backend: str, q: torch.Tensor) -> str:
    if backend == "auto":
        name = available_backends(q.device)[0]
        if name == "triton" and (q.shape[-1] not in TRITON_HEAD_DIMS or q.dtype not in _TRITON_DTYPES):
            name = available_backends(q.device)[1]
        return name
    if backend == "sdpa":
        return backend
    if backend == "triton":
        if q.shape[-1] not in TRITON_HEAD_DIMS:
            raise VisionRopeError(
                f"backend='triton' supports head dims {TRITON_HEAD_DIMS}, got {q.shape[-1]}; use backend='sdpa'"
            )
        if q.dtype not in _TRITON_DTYPES:
            raise VisionRopeError(
                f"backend='triton' supports fp32/fp16/bf16, got {q.dtype}; cast q, k, v first"
            )
        if _triton_module() is None:
            raise VisionRopeError(
                "backend='triton' needs triton and tbi_vision_rope._triton_attention; install the [triton] extra "
                "or use backend='sdpa'"
            )
        return backend
    if backend == "flash":
        if importlib.util.find_spec("flash_attn") is None or not q.is_cuda:
            raise VisionRopeError(
                f"backend='flash' needs the flash-attn package and CUDA tensors (q is on {q.device}); "
                "pip install flash-attn on a GPU machine or use backend='sdpa'"
            )
        return backend
    raise VisionRopeError(f"unknown backend {backend!r}: use 'auto', 'sdpa', 'flash' or 'triton'")


def _sdpa(q, k, v, segments: SegmentGroups, layout: WindowLayout, freqs, rope_layout: str, scale: float):
    heads, dim = q.shape[1:]
    outs = []
    for length, _count, index in segments.groups:
        tensors = [q, k, v]
        if freqs is not None:
            tensors += rope_tables(
                layout.pos_h, layout.pos_w, *freqs, torch.promote_types(q.dtype, torch.float32)
            )
        if index is not None:
            tensors = [x.index_select(0, index) for x in tensors]  # [count*L, ...]
        # Chunks of whole segments small enough to stay in cache, so time grows linearly with the tokens.
        rows = max(1, _CHUNK_ELEMENTS // (length * heads * dim)) * length
        if length <= _SMALL_WINDOW:
            cos, sin = tensors[3:] if freqs is not None else (None, None)
            outs.append(
                small_window_attention(
                    *tensors[:3], cos, sin, rope_layout == "interleaved", length, scale, rows
                )
            )
            continue
        # long segments (global layers): memory-efficient SDPA; split, not slicing, so that backward
        # concatenates the chunk gradients once
        for qc, kc, vc, *tables in zip(*(x.split(rows) for x in tensors)):
            n = qc.shape[0] // length
            if tables:
                qc, kc = rotate(qc, *tables, rope_layout), rotate(kc, *tables, rope_layout)  # [n*L, H, D]
            qc, kc, vc = (x.view(n, length, heads, dim).transpose(1, 2) for x in (qc, kc, vc))  # [n, H, L, D]
            out = F.scaled_dot_product_attention(qc, kc, vc, scale=scale)  # [n, H, L, D]
            outs.append(out.transpose(1, 2).reshape(n * length, heads, dim))  # [n*L, H, D]
    out = outs[0] if len(outs) == 1 else torch.cat(outs)  # [T, H, D] in group order
    return out if segments.restore is None else out.index_select(0, segments.restore)


def _flash(q, k, v, layout: WindowLayout, global_attention: bool, scale: float) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    cu = layout.cu_seqlens if global_attention else layout.cu_window_seqlens
    max_len = (layout.global_groups if global_attention else layout.window_groups).max_len
    return flash_attn_varlen_func(
        q, k, v, cu, cu, max_len, max_len, dropout_p=0.0, softmax_scale=scale, causal=False
    )  # [T, H, D]


def _triton(q, k, v, layout: WindowLayout, freqs, rope_layout: str, global_attention: bool, scale: float):
    module = _triton_module()
    heads, dim = q.shape[1:]
    if freqs is None:
        zeros = torch.zeros(heads, dim // 2, device=q.device, dtype=torch.float32)
        freqs = (zeros, zeros)
    freq_h, freq_w = (f.to(q.device).expand(heads, -1).contiguous() for f in freqs)
    seq_id = layout.global_seq_id if global_attention else layout.window_seq_id
    return module.triton_windowed_rope_attention(
        q,
        k,
        v,
        seq_id,
        layout.pos_h,
        layout.pos_w,
        freq_h,
        freq_w,
        0 if global_attention else layout.window,
        rope_layout,
        scale=scale,
    )
