"""Fused PyTorch attention for many short segments of one length (the windows of a window layer).

One autograd node for a whole group of ``count`` segments of ``L`` tokens (``L`` small, e.g. 8×8 windows):
per cache-sized chunk of segments, rotate q and k (2D-RoPE, full-width tables: ``x c + swap(x) s``), then

    S = scale · q̃ k̃ᵀ,  P = softmax(S),  O = P v                       [n, H, L, L] / [n, H, L, D]

with explicit batched matmuls, writing O into one preallocated output. P, q̃ and k̃ are kept for backward
with head-major V (P is ``L / D`` times the size of q, i.e. no bigger than q for ``L ≤ D``; q̃, k̃, V cost
3× q of memory but save two of the six rotations and one of the head-major copies of V per chunk, each a
pass over memory that is no longer in cache); backward uses

    dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ∘ (dP - rowsum(P ∘ dP)) · scale,  dq̃ = dS k̃,  dk̃ = dSᵀ q̃,  dq = R(-θ) dq̃

plus ``∂/∂cos``, ``∂/∂sin`` of the rotation when the frequencies are learnable. Against autograd through
``F.scaled_dot_product_attention`` this avoids the per-chunk slice/cat graph, the zero-filled gradient
buffers and the strided-input copies, which on the CPU cost more than the attention itself.

The token-sized buffers it returns (O, dq, dk, dv) are fresh memory on every call. Above glibc's largest
mmap threshold (32 MB; a 128×128 grid of 16 heads × 64 fp32 is 64 MB) each is a new mapping that the
kernel faults in and zeroes 4 KB at a time: first-touching 64 MB took 40 ms here against 10 ms for
rewriting memory already mapped, while smaller buffers are recycled by malloc and cost nothing extra, so
this made the op grow faster than its token count. :func:`empty_tokens` advises transparent huge pages
for such buffers (``madvise``), one fault per 2 MB: the same first touch takes 17 ms.
"""

from __future__ import annotations

import ctypes
import sys

import torch

from .rope import _full_tables, _pair_views, _rotate_full_into

_HUGE_PAGE = 1 << 21
# glibc's largest mmap threshold: bigger buffers are always fresh mappings; smaller ones are recycled
# from the heap after the first call, and their advice would only split the heap's mapping.
_HUGE_PAGE_MIN_BYTES = 1 << 25
_MADV_HUGEPAGE = 14  # <sys/mman.h> on Linux, every architecture


def small_window_attention(q, k, v, cos, sin, interleaved: bool, length: int, scale: float, chunk_rows: int):
    """``q, k, v: [count·L, H, D]`` (segments back to back); ``cos, sin: [count·L, H|1, D/2]`` or None.

    Returns ``[count·L, H, D]`` in q's dtype.
    """
    has_rope = cos is not None
    if not has_rope:
        cos = sin = q.new_empty(0)
    return _SmallWindowAttention.apply(q, k, v, cos, sin, has_rope, interleaved, length, scale, chunk_rows)


def empty_tokens(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty(shape)``; on Linux CPUs a buffer of at least ``_HUGE_PAGE_MIN_BYTES`` is first advised
    to use transparent huge pages (``MADV_HUGEPAGE`` on its whole 2 MB pages) so that its first touch
    faults once per 2 MB instead of once per 4 KB. Advice only: where it is refused, nothing changes."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if out.device.type != "cpu" or sys.platform != "linux" or out.nbytes < _HUGE_PAGE_MIN_BYTES:
        return out
    start = -(-out.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE
    stop = (out.data_ptr() + out.nbytes) // _HUGE_PAGE * _HUGE_PAGE
    ctypes.CDLL(None).madvise(ctypes.c_void_p(start), ctypes.c_size_t(stop - start), _MADV_HUGEPAGE)
    return out


def _chunks(total: int, chunk_rows: int):
    for start in range(0, total, chunk_rows):
        yield slice(start, min(start + chunk_rows, total))


class _SmallWindowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cos, sin, has_rope, interleaved, length, scale, chunk_rows):
        tokens, heads, dim = q.shape
        compute = torch.promote_types(q.dtype, torch.float32)
        out = empty_tokens((tokens, heads, dim), compute, q.device)
        # one softmax tensor per chunk: chunk-sized blocks are recycled by the allocator, while one T-sized
        # block would be fresh (page-faulting) memory on every call
        probs, heads_kept = [], []
        for rows in _chunks(tokens, chunk_rows):
            n = (rows.stop - rows.start) // length
            qh, kh = _rotated_heads(
                q, k, cos, sin, rows, has_rope, interleaved, n, length, compute
            )  # [n, H, L, D]
            # contiguous once here, instead of a hidden copy in each of the two matmuls that read it
            vh = _heads(v[rows], n, length).to(compute).contiguous()  # [n, H, L, D]
            p = torch.matmul(qh, kh.transpose(-1, -2)).mul_(scale).softmax(-1)  # [n, H, L, L]
            probs.append(p)
            heads_kept.append((qh, kh, vh))
            _heads(out[rows], n, length).copy_(torch.matmul(p, vh))  # [n, H, L, D]
        ctx.save_for_backward(q, k, v, cos, sin)
        ctx.probs, ctx.heads_kept = probs, heads_kept
        ctx.options = (has_rope, interleaved, length, scale, chunk_rows)
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, cos, sin = ctx.saved_tensors
        has_rope, interleaved, length, scale, chunk_rows = ctx.options
        compute = torch.promote_types(q.dtype, torch.float32)
        want_tables = has_rope and (ctx.needs_input_grad[3] or ctx.needs_input_grad[4])
        dq, dk, dv = (empty_tokens(q.shape, compute, q.device) for _ in range(3))
        dcos = empty_tokens(cos.shape, cos.dtype, cos.device) if want_tables else None
        dsin = empty_tokens(sin.shape, sin.dtype, sin.device) if want_tables else None
        # p: [n, H, L, L]; qh, kh (rotated), vh: [n, H, L, D] from forward
        for rows, p, (qh, kh, vh) in zip(_chunks(q.shape[0], chunk_rows), ctx.probs, ctx.heads_kept):
            n = (rows.stop - rows.start) // length
            gh = _heads(grad[rows], n, length).to(compute).contiguous()  # [n, H, L, D]
            _heads(dv[rows], n, length).copy_(torch.matmul(p.transpose(-1, -2), gh))
            dp = torch.matmul(gh, vh.transpose(-1, -2))  # [n, H, L, L]
            # rowsum(dO ∘ O) = rowsum(P ∘ dP): no need to keep or re-read the output
            ds = dp.sub_((p * dp).sum(-1, keepdim=True)).mul_(p).mul_(scale)  # [n, H, L, L]
            dq_rot = torch.matmul(ds, kh).transpose(1, 2)  # [n, L, H, D] view of head-major memory
            dk_rot = torch.matmul(ds.transpose(-1, -2), qh).transpose(1, 2)  # [n, L, H, D]
            dq_rows, dk_rows = _by_token(dq[rows], n, length), _by_token(dk[rows], n, length)  # [n, L, H, D]
            if not has_rope:
                dq_rows.copy_(dq_rot)
                dk_rows.copy_(dk_rot)
                continue
            c, s = _by_token(cos[rows], n, length), _by_token(sin[rows], n, length)  # [n, L, H|1, P]
            c_full, s_full = _full_tables(c, s, interleaved)  # [n, L, H|1, D]
            _rotate_full_into(dq_rot, c_full, s_full, interleaved, -1.0, out=dq_rows)
            _rotate_full_into(dk_rot, c_full, s_full, interleaved, -1.0, out=dk_rows)
            if want_tables:
                g_cos, g_sin = _table_grads(dq_rot, _by_token(q[rows], n, length), interleaved, compute)
                k_cos, k_sin = _table_grads(dk_rot, _by_token(k[rows], n, length), interleaved, compute)
                g_cos += k_cos
                g_sin += k_sin
                if cos.shape[1] == 1:  # tables shared by all heads: sum the heads' contributions
                    g_cos, g_sin = g_cos.sum(2, keepdim=True), g_sin.sum(2, keepdim=True)
                _by_token(dcos[rows], n, length).copy_(g_cos)
                _by_token(dsin[rows], n, length).copy_(g_sin)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dcos, dsin, None, None, None, None, None


def _heads(x: torch.Tensor, n: int, length: int) -> torch.Tensor:
    """``[n·L, H, D]`` -> ``[n, H, L, D]`` view."""
    return x.view(n, length, *x.shape[1:]).transpose(1, 2)


def _by_token(x: torch.Tensor, n: int, length: int) -> torch.Tensor:
    """``[n·L, ...]`` -> ``[n, L, ...]`` view."""
    return x.view(n, length, *x.shape[1:])


def _rotated_heads(q, k, cos, sin, rows, has_rope, interleaved, n, length, compute):
    """Rotated q, k of the chunk as contiguous head-major ``[n, H, L, D]`` (rotation writes them there)."""
    if not has_rope:
        return _heads(q[rows], n, length).to(compute), _heads(k[rows], n, length).to(compute)
    c, s = _by_token(cos[rows], n, length), _by_token(sin[rows], n, length)  # [n, L, H|1, P]
    c_full, s_full = _full_tables(c.to(compute), s.to(compute), interleaved)  # [n, L, H|1, D]
    heads, dim = q.shape[1:]
    qh = torch.empty(n, heads, length, dim, dtype=compute, device=q.device)
    kh = torch.empty_like(qh)
    _rotate_full_into(_by_token(q[rows], n, length), c_full, s_full, interleaved, 1.0, out=qh.transpose(1, 2))
    _rotate_full_into(_by_token(k[rows], n, length), c_full, s_full, interleaved, 1.0, out=kh.transpose(1, 2))
    return qh, kh


def _table_grads(grad_rot, x, interleaved, compute):
    """Gradients of ``rot(x) = (a cos - b sin, a sin + b cos)`` w.r.t. cos and sin, per token/head/pair."""
    g_a, g_b = (t.to(compute) for t in _pair_views(grad_rot, interleaved))
    a, b = (t.to(compute) for t in _pair_views(x, interleaved))
    return g_a * a + g_b * b, g_b * a - g_a * b
