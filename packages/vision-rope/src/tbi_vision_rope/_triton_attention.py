"""Fused windowed 2D-RoPE attention in Triton: forward and backward (FlashAttention-2 style).

The op computes, for every head h and query token t of a packed, window-major sequence::

    rot(x)_t    = R(theta_t) x_t            pairs (x1_j, x2_j) -> (x1 c - x2 s, x2 c + x1 s)
    theta_t,h,j = pos_h[t] * freq_h[h, j] + pos_w[t] * freq_w[h, j]
    allowed     = seq_id[t] == seq_id[u]  and (window == 0  or  (pos_h // W, pos_w // W) equal)
    out_t       = sum_u softmax_u(scale * rot(q)_t . rot(k)_u  over allowed u) v_u

Pairs are (j, j + D/2) for ``rope_layout="half"`` (rotate_half, Qwen2-VL) and (2j, 2j + 1) for
``"interleaved"`` (EVA / timm).

How it is computed (one file, as in Triton's fused-attention tutorial: kernels, launcher,
``autograd.Function``):

* q/k tiles are rotated in registers right after they are loaded; no rotated copy exists in memory. The
  forward rotates in chunks of 16 pairs (cos/sin computed once per chunk of a tile) and never forms a
  [rows, D] operand: q.k is a sum of per-chunk dots, keys are read transposed for the right-hand operand
  and V / O in two column halves. This keeps every dot's result at least as tall as wide, so Triton puts
  its warps on rows (not on columns, which replicated the left operand in every warp); the 128-row tile
  that packs two 8x8 (or eight 4x4) windows compiles without spills.
* Window membership is decided inside the kernel from the per-token (seq_id, pos_h, pos_w). Tokens are
  window-major, so the keys a query tile can see form one contiguous range
  ``[start of its first token's window, end of its last token's window)``; the per-token window start/end
  come from a few device-side torch ops (``_window_bounds``), and each program loops over that range
  only. Several small windows share one tile; the element mask separates them.
* Forward: online softmax in base 2, saving the log-sum-exp. Backward: ``delta = rowsum(dO * O)``, then
  one kernel per key tile for dK/dV and one per query tile for dQ, both recomputing P from the saved
  log-sum-exp. Frequency gradients use dR/dtheta = R J (J = [[0, -1], [1, 0]]):
  ``dL/dtheta = g2 * x1 - g1 * x2`` with g = dL/dx and x the unrotated pair, summed over tokens
  weighted by pos_h (for freq_h) and pos_w (for freq_w) with fp32 atomics into [H, D/2]: in the dQ
  kernel's epilogue for the queries, in a separate pass over (K, dK) for the keys (``_bwd_freq_kernel``;
  dK is then produced in fp32 and cast), which frees the registers 32-row key tiles need.
* Head dims 64/72/80/128: each member of the rotation pairs is a [rows, next_pow2(D/2)] register tile
  loaded with a column mask, so nothing is padded in memory (tensors stay [T, H, D]); see the README.
  The rotated members are joined pair by pair into one [rows, 2 next_pow2(D/2)] dot operand.
* ``compile_resource_usage`` compiles every autotune configuration ahead of time for a CUDA target
  (no GPU needed) and reports registers, shared memory and spills.

On a machine without a GPU the kernels run under ``TRITON_INTERPRET=1`` (set before this module is
imported) with 64-wide tiles.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

SUPPORTED_HEAD_DIMS = (64, 72, 80, 128)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ROPE_LAYOUTS = ("half", "interleaved")
_LOG2E = 1.4426950408889634


# --------------------------------------------------------------------------------------------------
# Autotune lists (the interpreter gets one 64x64 tile: it is slow and has no timer to tune with)
# --------------------------------------------------------------------------------------------------


def _configs(kind: str, interpret: bool) -> list[triton.Config]:
    """Autotune configurations of kernel ``kind`` ("fwd", "bwd_dkdv" or "bwd_dq").

    BLOCK_M is the query tile, BLOCK_N the key tile, in every kernel. Every entry compiles without register
    spills for sm_80 and sm_90 at head dim 128 (tests/test_triton_compile.py). Larger tiles spilled on
    sm_80: forward 64 x 64 and 128 x 64; dK/dV with 32 or 64 query x 32 key rows or 64 key rows; dQ 64 x 32
    and 64 x 64.
    """
    if interpret:
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=1)]
    table = {
        "fwd": [(64, 32, 4, 2), (128, 32, 8, 1), (128, 32, 8, 2)],
        "bwd_dkdv": [(32, 16, 8, 2), (16, 32, 8, 2)],
        "bwd_dq": [(64, 16, 8, 1), (32, 32, 8, 1)],
    }[kind]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in table
    ]


# --------------------------------------------------------------------------------------------------
# Device helpers
# --------------------------------------------------------------------------------------------------


@triton.jit
def _load_pairs(X, rows, row_mask, stride_t, HALF: tl.constexpr, HALF_P: tl.constexpr,
                INTERLEAVED: tl.constexpr, ROWS: tl.constexpr, VOLATILE: tl.constexpr = False,
                TRANS: tl.constexpr = False, J0: tl.constexpr = 0):  # fmt: skip
    """The two members of every rotation pair of a [ROWS, D] tile of one head, as fp32 [ROWS, HALF_P] each
    ([HALF_P, ROWS] with ``TRANS``).

    Interleaved pairs are read as one contiguous row (vectorised loads) and split into even/odd columns;
    half-split pairs are two contiguous column ranges. Columns at or beyond D/2 pairs are masked to zero.
    ``VOLATILE`` re-reads memory: it keeps CSE from merging a re-load after a loop with the load before it,
    which would keep the earlier tile live in registers through the whole loop. ``TRANS`` reads the tile
    transposed straight from memory, for the right-hand operand of a dot: transposing a computed register
    tile instead made the compiler build that operand in a warp-replicated register layout.
    """
    if TRANS:
        ptr = X + rows.to(tl.int64)[None, :] * stride_t
    else:
        ptr = X + rows.to(tl.int64)[:, None] * stride_t
    if INTERLEAVED:
        cols = 2 * J0 + tl.arange(0, 2 * HALF_P)
        if TRANS:
            x = tl.load(
                ptr + cols[:, None],
                mask=row_mask[None, :] & (cols < 2 * HALF)[:, None],
                other=0.0,
                volatile=VOLATILE,
            )
            x1, x2 = tl.split(tl.permute(tl.reshape(x, [HALF_P, 2, ROWS]), (0, 2, 1)))
        else:
            x = tl.load(
                ptr + cols[None, :],
                mask=row_mask[:, None] & (cols < 2 * HALF)[None, :],
                other=0.0,
                volatile=VOLATILE,
            )
            x1, x2 = tl.split(tl.reshape(x, [ROWS, HALF_P, 2]))
    else:
        j = J0 + tl.arange(0, HALF_P)
        if TRANS:
            mask = row_mask[None, :] & (j < HALF)[:, None]
            x1 = tl.load(ptr + j[:, None], mask=mask, other=0.0, volatile=VOLATILE)
            x2 = tl.load(ptr + HALF + j[:, None], mask=mask, other=0.0, volatile=VOLATILE)
        else:
            mask = row_mask[:, None] & (j < HALF)[None, :]
            x1 = tl.load(ptr + j[None, :], mask=mask, other=0.0, volatile=VOLATILE)
            x2 = tl.load(ptr + HALF + j[None, :], mask=mask, other=0.0, volatile=VOLATILE)
    return x1.to(tl.float32), x2.to(tl.float32)


@triton.jit
def _store_pairs(X, rows, row_mask, stride_t, x1, x2, HALF: tl.constexpr, HALF_P: tl.constexpr,
                 INTERLEAVED: tl.constexpr, ROWS: tl.constexpr):  # fmt: skip
    """Inverse of _load_pairs: write pair members x1, x2 [ROWS, HALF_P] back to their columns."""
    ptr = X + rows.to(tl.int64)[:, None] * stride_t
    if INTERLEAVED:
        cols = tl.arange(0, 2 * HALF_P)
        x = tl.reshape(tl.join(x1, x2), [ROWS, 2 * HALF_P])
        tl.store(
            ptr + cols[None, :], x.to(X.dtype.element_ty), mask=row_mask[:, None] & (cols < 2 * HALF)[None, :]
        )
    else:
        j = tl.arange(0, HALF_P)
        mask = row_mask[:, None] & (j < HALF)[None, :]
        tl.store(ptr + j[None, :], x1.to(X.dtype.element_ty), mask=mask)
        tl.store(ptr + HALF + j[None, :], x2.to(X.dtype.element_ty), mask=mask)


@triton.jit
def _rope_cos_sin(ph, pw, fh, fw, TRANS: tl.constexpr = False):  # -> cos, sin [R, HALF_P] fp32
    """cos/sin of theta[r, j] = pos_h[r] * freq_h[j] + pos_w[r] * freq_w[j] ([HALF_P, R] with ``TRANS``).

    Plain fp32 arithmetic instead of tl.cos/tl.sin: libdevice's exact sinf/cosf inline a long slow path
    per element that pushed every configuration to 255 registers with spills. Here theta = k pi/2 + r,
    with r from a three-part Cody-Waite reduction (|r| <= pi/4, exact products for |k| < 2^16), then
    Cephes' minimax polynomials (abs. error ~1e-7) and the quadrant k mod 4 picks signs and swaps.
    """
    if TRANS:
        theta = fh[:, None] * ph.to(tl.float32)[None, :] + fw[:, None] * pw.to(tl.float32)[None, :]
    else:
        theta = ph.to(tl.float32)[:, None] * fh[None, :] + pw.to(tl.float32)[:, None] * fw[None, :]
    k = tl.floor(theta * 0.6366197723675814 + 0.5)
    r = theta - k * 1.5703125
    r = r - k * 4.837512969970703125e-4
    r = r - k * 7.54978995489188216e-8
    r2 = r * r
    s = r + r * r2 * (-1.6666654611e-1 + r2 * (8.3321608736e-3 + r2 * -1.9515295891e-4))
    c = (
        1.0
        - 0.5 * r2
        + r2 * r2 * (4.166664568298827e-2 + r2 * (-1.388731625493765e-3 + r2 * 2.443315711809948e-5))
    )
    quadrant = k.to(tl.int32) & 3
    odd = (quadrant & 1) != 0
    sin = tl.where(odd, c, s)
    cos = tl.where(odd, s, c)
    sin = tl.where((quadrant & 2) != 0, -sin, sin)
    cos = tl.where(((quadrant + 1) & 2) != 0, -cos, cos)
    return cos, sin


@triton.jit
def _load_rotated(X, rows, row_mask, stride_t, cos, sin, HALF: tl.constexpr, HALF_P: tl.constexpr,
                  INTERLEAVED: tl.constexpr, ROWS: tl.constexpr):  # fmt: skip
    """Load a [ROWS, D] tile of one head and rotate each pair by its angle: [ROWS, 2 HALF_P] fp32 (backward).

    The result holds pair j in columns (2j, 2j + 1) whatever the memory layout; q and k use the same order,
    so one dot over 2 HALF_P columns is the rotated q.k. The join/reshape also keeps the compiler from
    moving the rotation into the (warp-replicated) dot-operand layout, which multiplied its registers.
    """
    x1, x2 = _load_pairs(X, rows, row_mask, stride_t, HALF, HALF_P, INTERLEAVED, ROWS)
    return tl.reshape(tl.join(x1 * cos - x2 * sin, x2 * cos + x1 * sin), [ROWS, 2 * HALF_P])


@triton.jit
def _split_pairs(x, ROWS: tl.constexpr, HALF_P: tl.constexpr):
    """[ROWS, 2 HALF_P] in pair order -> the two members [ROWS, HALF_P] each."""
    return tl.split(tl.reshape(x, [ROWS, HALF_P, 2]))


@triton.jit
def _load_halves(X, rows, row_mask, stride_t, HEAD_DIM: tl.constexpr, D_P: tl.constexpr):
    """Columns [0, D_P/2) and [D_P/2, D_P) of a [rows, D] tile (masked at D): [rows, D_P/2] each.

    Two half-width operands instead of one [rows, D_P] tile: with every dot's result at least as tall as
    it is wide, Triton's chained-dot heuristic spreads warps over rows instead of columns (which had
    replicated the whole left operand in every warp's registers).
    """
    c = tl.arange(0, D_P // 2)
    ptr = X + rows.to(tl.int64)[:, None] * stride_t + c[None, :]
    a = tl.load(ptr, mask=row_mask[:, None] & (c < HEAD_DIM)[None, :], other=0.0)
    b = tl.load(ptr + D_P // 2, mask=row_mask[:, None] & (c + D_P // 2 < HEAD_DIM)[None, :], other=0.0)
    return a, b


@triton.jit
def _store_halves(X, rows, row_mask, stride_t, a, b, HEAD_DIM: tl.constexpr, D_P: tl.constexpr):
    """Inverse of _load_halves."""
    c = tl.arange(0, D_P // 2)
    ptr = X + rows.to(tl.int64)[:, None] * stride_t + c[None, :]
    tl.store(ptr, a.to(X.dtype.element_ty), mask=row_mask[:, None] & (c < HEAD_DIM)[None, :])
    tl.store(
        ptr + D_P // 2, b.to(X.dtype.element_ty), mask=row_mask[:, None] & (c + D_P // 2 < HEAD_DIM)[None, :]
    )


@triton.jit
def _window_keys(ph, pw, window, GLOBAL: tl.constexpr):
    """Window row/column index (floor(pos / W)) of each token; all zero for global attention."""
    if GLOBAL:
        return ph * 0, pw * 0
    # Floor division (as torch's ``//``) also for negative positions; both operands of ``//`` are >= 0.
    wh = tl.where(ph >= 0, ph // window, -((window - 1 - ph) // window))
    ww = tl.where(pw >= 0, pw // window, -((window - 1 - pw) // window))
    return wh, ww


@triton.jit
def _accumulate_freq_grad(DFreqH, DFreqW, h, j, j_mask, g1, g2, x1, x2, ph, pw, HALF: tl.constexpr):
    """dfreq_h[h, j] += sum_t pos_h[t] dL/dtheta[t, j] (and w for freq_w).

    With g = dL/dx (unrotated frame) and x the unrotated pair, dR/dtheta = R J (J = [[0, -1], [1, 0]]) gives
    dL/dtheta = g'^T R J x = g^T J x = g2 x1 - g1 x2, so neither rotated copy is needed.
    """
    dtheta = g2 * x1 - g1 * x2  # [R, HALF_P]
    d_fh = tl.sum(dtheta * ph.to(tl.float32)[:, None], axis=0)  # [HALF_P]
    d_fw = tl.sum(dtheta * pw.to(tl.float32)[:, None], axis=0)  # [HALF_P]
    tl.atomic_add(DFreqH + h * HALF + j, d_fh, mask=j_mask)
    tl.atomic_add(DFreqW + h * HALF + j, d_fw, mask=j_mask)


# --------------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------------


@triton.jit
def _qk_chunk(X, rows, row_mask, stride_t, ph, pw, FreqH, FreqW, h, HALF: tl.constexpr, CH: tl.constexpr,
              J0: tl.constexpr, INTERLEAVED: tl.constexpr, ROWS: tl.constexpr, TRANS: tl.constexpr,
              LOWP: tl.constexpr):  # fmt: skip
    """Rotated pair members of pairs [J0, J0 + CH) of a q/k tile: [ROWS, CH] x2 ([CH, ROWS] with TRANS).

    cos/sin are computed for just these pairs, so a tile is rotated in chunks and the polynomial's
    temporaries cover CH columns at a time (registers).
    """
    j = J0 + tl.arange(0, CH)
    fh = tl.load(FreqH + h * HALF + j, mask=j < HALF, other=0.0)
    fw = tl.load(FreqW + h * HALF + j, mask=j < HALF, other=0.0)
    cos, sin = _rope_cos_sin(ph, pw, fh, fw, TRANS)
    x1, x2 = _load_pairs(X, rows, row_mask, stride_t, HALF, CH, INTERLEAVED, ROWS, False, TRANS, J0)
    y1 = x1 * cos - x2 * sin
    y2 = x2 * cos + x1 * sin
    if LOWP:
        y1 = y1.to(X.dtype.element_ty)
        y2 = y2.to(X.dtype.element_ty)
    return y1, y2


@triton.jit
def _fwd_kernel(
    Q, K, V, Out, Lse,  # [T, H, D] x4, [T, H] fp32
    SeqId, PosH, PosW, FreqH, FreqW,  # [T] int32 x3, [H, D/2] fp32 x2
    WinStart, WinEnd,  # [T] int32: first token / one past the last token of each token's window
    T, H, window, qk_scale,  # qk_scale = softmax scale * log2(e)
    HEAD_DIM: tl.constexpr, HALF: tl.constexpr, HALF_P: tl.constexpr, D_P: tl.constexpr,
    INTERLEAVED: tl.constexpr, GLOBAL: tl.constexpr, LOWP: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    stride_t = H * HEAD_DIM
    head_off = h * HEAD_DIM
    CH: tl.constexpr = 16  # pairs per rotation chunk (the smallest bf16 MMA depth)

    m_start = pid_m * BLOCK_M
    offs_m = m_start + tl.arange(0, BLOCK_M)
    m_mask = offs_m < T
    seq_m = tl.load(SeqId + offs_m, mask=m_mask, other=-1)
    ph_m = tl.load(PosH + offs_m, mask=m_mask, other=0)
    pw_m = tl.load(PosW + offs_m, mask=m_mask, other=0)
    wh_m, ww_m = _window_keys(ph_m, pw_m, window, GLOBAL)
    q_ptr = Q + head_off
    # rot(q) in chunks of CH pairs, [BLOCK_M, CH] per member: 2 chunks for D = 64, 4 otherwise.
    q1a, q2a = _qk_chunk(q_ptr, offs_m, m_mask, stride_t, ph_m, pw_m, FreqH, FreqW, h, HALF, CH, 0, INTERLEAVED,
                         BLOCK_M, False, LOWP)  # fmt: skip
    q1b, q2b = _qk_chunk(q_ptr, offs_m, m_mask, stride_t, ph_m, pw_m, FreqH, FreqW, h, HALF, CH, CH, INTERLEAVED,
                         BLOCK_M, False, LOWP)  # fmt: skip
    if HALF_P // CH == 4:
        q1c, q2c = _qk_chunk(q_ptr, offs_m, m_mask, stride_t, ph_m, pw_m, FreqH, FreqW, h, HALF, CH, 2 * CH,
                             INTERLEAVED, BLOCK_M, False, LOWP)  # fmt: skip
        q1d, q2d = _qk_chunk(q_ptr, offs_m, m_mask, stride_t, ph_m, pw_m, FreqH, FreqW, h, HALF, CH, 3 * CH,
                             INTERLEAVED, BLOCK_M, False, LOWP)  # fmt: skip

    # Keys of this tile's windows: [window start of its first token, window end of its last token).
    lo = tl.load(WinStart + m_start)
    hi = tl.load(WinEnd + tl.minimum(m_start + BLOCK_M, T) - 1)
    lo = (lo // BLOCK_N) * BLOCK_N

    # A finite initial max keeps exp2(m_i - m_new) at 1 while a row has only seen masked keys.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc_a = tl.zeros([BLOCK_M, D_P // 2], dtype=tl.float32)  # output columns [0, D_P/2)
    acc_b = tl.zeros([BLOCK_M, D_P // 2], dtype=tl.float32)  # output columns [D_P/2, D_P)
    k_ptr = K + head_off
    for n_start in range(lo, hi, BLOCK_N):
        offs_n = n_start + tl.arange(0, BLOCK_N)
        n_mask = offs_n < hi
        seq_n = tl.load(SeqId + offs_n, mask=n_mask, other=-2)
        ph_n = tl.load(PosH + offs_n, mask=n_mask, other=0)
        pw_n = tl.load(PosW + offs_n, mask=n_mask, other=0)
        wh_n, ww_n = _window_keys(ph_n, pw_n, window, GLOBAL)
        # rot(k)^T chunk by chunk, [CH, BLOCK_N] per member, loaded transposed (right-hand dot operand):
        # cos/sin polynomials over whole [D/2, BLOCK_N] tiles had spilled.
        k1, k2 = _qk_chunk(k_ptr, offs_n, n_mask, stride_t, ph_n, pw_n, FreqH, FreqW, h, HALF, CH, 0,
                           INTERLEAVED, BLOCK_N, True, LOWP)  # fmt: skip
        s = tl.dot(q1a, k1, input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
        s = tl.dot(q2a, k2, acc=s, input_precision=DOT_PRECISION)
        k1, k2 = _qk_chunk(k_ptr, offs_n, n_mask, stride_t, ph_n, pw_n, FreqH, FreqW, h, HALF, CH, CH,
                           INTERLEAVED, BLOCK_N, True, LOWP)  # fmt: skip
        s = tl.dot(q1b, k1, acc=s, input_precision=DOT_PRECISION)
        s = tl.dot(q2b, k2, acc=s, input_precision=DOT_PRECISION)
        if HALF_P // CH == 4:
            k1, k2 = _qk_chunk(k_ptr, offs_n, n_mask, stride_t, ph_n, pw_n, FreqH, FreqW, h, HALF, CH, 2 * CH,
                               INTERLEAVED, BLOCK_N, True, LOWP)  # fmt: skip
            s = tl.dot(q1c, k1, acc=s, input_precision=DOT_PRECISION)
            s = tl.dot(q2c, k2, acc=s, input_precision=DOT_PRECISION)
            k1, k2 = _qk_chunk(k_ptr, offs_n, n_mask, stride_t, ph_n, pw_n, FreqH, FreqW, h, HALF, CH, 3 * CH,
                               INTERLEAVED, BLOCK_N, True, LOWP)  # fmt: skip
            s = tl.dot(q1d, k1, acc=s, input_precision=DOT_PRECISION)
            s = tl.dot(q2d, k2, acc=s, input_precision=DOT_PRECISION)
        allowed = (
            (seq_m[:, None] == seq_n[None, :])
            & (wh_m[:, None] == wh_n[None, :])
            & (ww_m[:, None] == ww_n[None, :])
        )
        s = tl.where(allowed, s * qk_scale, float("-inf"))
        va, vb = _load_halves(V + head_off, offs_n, n_mask, stride_t, HEAD_DIM, D_P)  # [BLOCK_N, D_P/2] x2
        if not LOWP:
            va = va.to(tl.float32)
            vb = vb.to(tl.float32)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        p = p.to(va.dtype)
        acc_a = tl.dot(p, va, acc=acc_a * alpha[:, None], input_precision=DOT_PRECISION)  # [BLOCK_M, D_P/2]
        acc_b = tl.dot(p, vb, acc=acc_b * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new

    # Padding rows (beyond T) saw no key; keep them finite, they are not stored.
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    _store_halves(Out + head_off, offs_m, m_mask, stride_t, acc_a / l_safe[:, None], acc_b / l_safe[:, None],
                  HEAD_DIM, D_P)  # fmt: skip
    tl.store(Lse + offs_m * H + h, m_i + tl.log2(l_safe), mask=m_mask)


# --------------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------------


@triton.jit
def _bwd_delta_kernel(Out, DOut, Delta, T, H, HEAD_DIM: tl.constexpr, D_P: tl.constexpr, BLOCK: tl.constexpr):
    """Delta[t, h] = sum_d dO[t, h, d] * O[t, h, d] (fp32), over BLOCK flattened (t, h) rows."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    row_mask = rows < T * H
    d = tl.arange(0, D_P)
    mask = row_mask[:, None] & (d < HEAD_DIM)[None, :]
    offs = rows.to(tl.int64)[:, None] * HEAD_DIM + d[None, :]
    o = tl.load(Out + offs, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DOut + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Delta + rows, tl.sum(o * do, axis=1), mask=row_mask)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DOut, Lse, Delta, DK, DV,
    SeqId, PosH, PosW, FreqH, FreqW, WinStart, WinEnd,
    T, H, window, sm_scale, qk_scale,
    HEAD_DIM: tl.constexpr, HALF: tl.constexpr, HALF_P: tl.constexpr, D_P: tl.constexpr,
    INTERLEAVED: tl.constexpr, GLOBAL: tl.constexpr, LOWP: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One program per (key tile, head): dV = P^T dO, dK = R^T (scale dS^T rot(Q)), dS = P (dP - delta).

    The keys' frequency gradients come from the stored dK in _bwd_freq_kernel: in this kernel their
    epilogue pushed 32-row key tiles into spills.
    """
    pid_n = tl.program_id(0)
    h = tl.program_id(1)
    stride_t = H * HEAD_DIM
    head_off = h * HEAD_DIM

    j = tl.arange(0, HALF_P)
    j_mask = j < HALF
    d = tl.arange(0, D_P)
    d_mask = d < HEAD_DIM
    fh = tl.load(FreqH + h * HALF + j, mask=j_mask, other=0.0)
    fw = tl.load(FreqW + h * HALF + j, mask=j_mask, other=0.0)

    n_start = pid_n * BLOCK_N
    offs_n = n_start + tl.arange(0, BLOCK_N)
    n_mask = offs_n < T
    seq_n = tl.load(SeqId + offs_n, mask=n_mask, other=-2)
    ph_n = tl.load(PosH + offs_n, mask=n_mask, other=0)
    pw_n = tl.load(PosW + offs_n, mask=n_mask, other=0)
    wh_n, ww_n = _window_keys(ph_n, pw_n, window, GLOBAL)
    cos_n, sin_n = _rope_cos_sin(ph_n, pw_n, fh, fw)
    k = _load_rotated(
        K + head_off, offs_n, n_mask, stride_t, cos_n, sin_n, HALF, HALF_P, INTERLEAVED, BLOCK_N
    )
    nd_offs = offs_n.to(tl.int64)[:, None] * stride_t + head_off + d[None, :]
    nd_mask = n_mask[:, None] & d_mask[None, :]
    v = tl.load(V + nd_offs, mask=nd_mask, other=0.0)  # [BLOCK_N, D_P]
    if LOWP:
        k = k.to(K.dtype.element_ty)  # [BLOCK_N, 2 HALF_P]
    else:
        v = v.to(tl.float32)

    # Attention is symmetric in (seq, window), so the queries that see this key tile are the same range.
    lo = tl.load(WinStart + n_start)
    hi = tl.load(WinEnd + tl.minimum(n_start + BLOCK_N, T) - 1)
    lo = (lo // BLOCK_M) * BLOCK_M

    dv = tl.zeros([BLOCK_N, D_P], dtype=tl.float32)
    dk = tl.zeros([BLOCK_N, 2 * HALF_P], dtype=tl.float32)  # gradient wrt rot(k), pair order
    for m_start in range(lo, hi, BLOCK_M):
        offs_m = m_start + tl.arange(0, BLOCK_M)
        m_mask = offs_m < hi
        seq_m = tl.load(SeqId + offs_m, mask=m_mask, other=-1)
        ph_m = tl.load(PosH + offs_m, mask=m_mask, other=0)
        pw_m = tl.load(PosW + offs_m, mask=m_mask, other=0)
        wh_m, ww_m = _window_keys(ph_m, pw_m, window, GLOBAL)
        cos_m, sin_m = _rope_cos_sin(ph_m, pw_m, fh, fw)
        q = _load_rotated(
            Q + head_off, offs_m, m_mask, stride_t, cos_m, sin_m, HALF, HALF_P, INTERLEAVED, BLOCK_M
        )
        do = tl.load(
            DOut + offs_m.to(tl.int64)[:, None] * stride_t + head_off + d[None, :],
            mask=m_mask[:, None] & d_mask[None, :],
            other=0.0,
        )  # [BLOCK_M, D_P]
        if LOWP:
            q = q.to(Q.dtype.element_ty)
        else:
            do = do.to(tl.float32)
        lse = tl.load(Lse + offs_m * H + h, mask=m_mask, other=0.0)  # [BLOCK_M]
        delta = tl.load(Delta + offs_m * H + h, mask=m_mask, other=0.0)  # [BLOCK_M]

        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)  # [BLOCK_N, BLOCK_M]
        allowed_t = (
            (seq_n[:, None] == seq_m[None, :])
            & (wh_n[:, None] == wh_m[None, :])
            & (ww_n[:, None] == ww_m[None, :])
        )
        p_t = tl.where(allowed_t, tl.exp2(s_t * qk_scale - lse[None, :]), 0.0)  # [BLOCK_N, BLOCK_M]
        dv = tl.dot(p_t.to(do.dtype), do, acc=dv, input_precision=DOT_PRECISION)  # [BLOCK_N, D_P]
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # [BLOCK_N, BLOCK_M]
        ds_t = (p_t * (dp_t - delta[None, :])).to(q.dtype)
        dk = tl.dot(ds_t, q, acc=dk, input_precision=DOT_PRECISION)  # [BLOCK_N, 2 HALF_P]

    tl.store(DV + nd_offs, dv.to(DV.dtype.element_ty), mask=nd_mask)  # dv is final before the dk epilogue
    dk1, dk2 = _split_pairs(dk * sm_scale, BLOCK_N, HALF_P)
    # Positions and keys are re-read (volatile) rather than kept live through the loop: registers.
    ph_n = tl.load(PosH + offs_n, mask=n_mask, other=0, volatile=True)
    pw_n = tl.load(PosW + offs_n, mask=n_mask, other=0, volatile=True)
    cos_n, sin_n = _rope_cos_sin(ph_n, pw_n, fh, fw)
    # Back to the unrotated frame: dk = R^T dk'.
    dk_a = dk1 * cos_n + dk2 * sin_n
    dk_b = dk2 * cos_n - dk1 * sin_n
    _store_pairs(DK + head_off, offs_n, n_mask, stride_t, dk_a, dk_b, HALF, HALF_P, INTERLEAVED, BLOCK_N)


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DOut, Lse, Delta, DQ, DFreqH, DFreqW,
    SeqId, PosH, PosW, FreqH, FreqW, WinStart, WinEnd,
    T, H, window, sm_scale, qk_scale,
    HEAD_DIM: tl.constexpr, HALF: tl.constexpr, HALF_P: tl.constexpr, D_P: tl.constexpr,
    INTERLEAVED: tl.constexpr, GLOBAL: tl.constexpr, LOWP: tl.constexpr, DOT_PRECISION: tl.constexpr,
    FREQ_GRAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One program per (query tile, head): dQ = R^T (scale dS rot(K)), dS = P (dO V^T - delta)."""
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    stride_t = H * HEAD_DIM
    head_off = h * HEAD_DIM

    j = tl.arange(0, HALF_P)
    j_mask = j < HALF
    d = tl.arange(0, D_P)
    d_mask = d < HEAD_DIM
    fh = tl.load(FreqH + h * HALF + j, mask=j_mask, other=0.0)
    fw = tl.load(FreqW + h * HALF + j, mask=j_mask, other=0.0)

    m_start = pid_m * BLOCK_M
    offs_m = m_start + tl.arange(0, BLOCK_M)
    m_mask = offs_m < T
    seq_m = tl.load(SeqId + offs_m, mask=m_mask, other=-1)
    ph_m = tl.load(PosH + offs_m, mask=m_mask, other=0)
    pw_m = tl.load(PosW + offs_m, mask=m_mask, other=0)
    wh_m, ww_m = _window_keys(ph_m, pw_m, window, GLOBAL)
    cos_m, sin_m = _rope_cos_sin(ph_m, pw_m, fh, fw)
    q = _load_rotated(
        Q + head_off, offs_m, m_mask, stride_t, cos_m, sin_m, HALF, HALF_P, INTERLEAVED, BLOCK_M
    )
    do = tl.load(
        DOut + offs_m.to(tl.int64)[:, None] * stride_t + head_off + d[None, :],
        mask=m_mask[:, None] & d_mask[None, :],
        other=0.0,
    )  # [BLOCK_M, D_P]
    if LOWP:
        q = q.to(Q.dtype.element_ty)  # [BLOCK_M, 2 HALF_P]
    else:
        do = do.to(tl.float32)
    lse = tl.load(Lse + offs_m * H + h, mask=m_mask, other=0.0)
    delta = tl.load(Delta + offs_m * H + h, mask=m_mask, other=0.0)

    lo = tl.load(WinStart + m_start)
    hi = tl.load(WinEnd + tl.minimum(m_start + BLOCK_M, T) - 1)
    lo = (lo // BLOCK_N) * BLOCK_N

    dq = tl.zeros([BLOCK_M, 2 * HALF_P], dtype=tl.float32)  # gradient wrt rot(q), pair order
    for n_start in range(lo, hi, BLOCK_N):
        offs_n = n_start + tl.arange(0, BLOCK_N)
        n_mask = offs_n < hi
        seq_n = tl.load(SeqId + offs_n, mask=n_mask, other=-2)
        ph_n = tl.load(PosH + offs_n, mask=n_mask, other=0)
        pw_n = tl.load(PosW + offs_n, mask=n_mask, other=0)
        wh_n, ww_n = _window_keys(ph_n, pw_n, window, GLOBAL)
        cos_n, sin_n = _rope_cos_sin(ph_n, pw_n, fh, fw)
        k = _load_rotated(
            K + head_off, offs_n, n_mask, stride_t, cos_n, sin_n, HALF, HALF_P, INTERLEAVED, BLOCK_N
        )
        v = tl.load(
            V + offs_n.to(tl.int64)[:, None] * stride_t + head_off + d[None, :],
            mask=n_mask[:, None] & d_mask[None, :],
            other=0.0,
        )  # [BLOCK_N, D_P]
        if LOWP:
            k = k.to(K.dtype.element_ty)
        else:
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
        allowed = (
            (seq_m[:, None] == seq_n[None, :])
            & (wh_m[:, None] == wh_n[None, :])
            & (ww_m[:, None] == ww_n[None, :])
        )
        p = tl.where(allowed, tl.exp2(s * qk_scale - lse[:, None]), 0.0)  # [BLOCK_M, BLOCK_N]
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
        ds = (p * (dp - delta[:, None])).to(k.dtype)
        dq = tl.dot(ds, k, acc=dq, input_precision=DOT_PRECISION)  # [BLOCK_M, 2 HALF_P]

    dq1, dq2 = _split_pairs(dq * sm_scale, BLOCK_M, HALF_P)
    ph_m = tl.load(PosH + offs_m, mask=m_mask, other=0, volatile=True)
    pw_m = tl.load(PosW + offs_m, mask=m_mask, other=0, volatile=True)
    cos_m, sin_m = _rope_cos_sin(ph_m, pw_m, fh, fw)
    dq_a = dq1 * cos_m + dq2 * sin_m
    dq_b = dq2 * cos_m - dq1 * sin_m
    if FREQ_GRAD:
        q_a, q_b = _load_pairs(
            Q + head_off, offs_m, m_mask, stride_t, HALF, HALF_P, INTERLEAVED, BLOCK_M, True
        )
        _accumulate_freq_grad(DFreqH, DFreqW, h, j, j_mask, dq_a, dq_b, q_a, q_b, ph_m, pw_m, HALF)
    _store_pairs(DQ + head_off, offs_m, m_mask, stride_t, dq_a, dq_b, HALF, HALF_P, INTERLEAVED, BLOCK_M)


@triton.jit
def _bwd_freq_kernel(X, DX, PosH, PosW, DFreqH, DFreqW, T, H, HEAD_DIM: tl.constexpr, HALF: tl.constexpr,
                     HALF_P: tl.constexpr, INTERLEAVED: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """dfreq_h/w[h, :] += frequency gradients of a [BLOCK, D] tile of one head from the stored x and dL/dx.

    A separate pass for the keys (x = K, dx = dK): one read of K and dK per call with learnable frequencies.
    """
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    h = tl.program_id(1)
    row_mask = rows < T
    stride_t = H * HEAD_DIM
    ph = tl.load(PosH + rows, mask=row_mask, other=0)
    pw = tl.load(PosW + rows, mask=row_mask, other=0)
    x1, x2 = _load_pairs(X + h * HEAD_DIM, rows, row_mask, stride_t, HALF, HALF_P, INTERLEAVED, BLOCK)
    g1, g2 = _load_pairs(DX + h * HEAD_DIM, rows, row_mask, stride_t, HALF, HALF_P, INTERLEAVED, BLOCK)
    j = tl.arange(0, HALF_P)
    _accumulate_freq_grad(DFreqH, DFreqW, h, j, j < HALF, g1, g2, x1, x2, ph, pw, HALF)


_TUNE_KEY = ["HEAD_DIM", "GLOBAL", "INTERLEAVED", "LOWP"]
_INTERPRET = bool(triton.knobs.runtime.interpret)
_fwd = triton.autotune(configs=_configs("fwd", _INTERPRET), key=_TUNE_KEY)(_fwd_kernel)
_bwd_dkdv = triton.autotune(configs=_configs("bwd_dkdv", _INTERPRET), key=_TUNE_KEY)(_bwd_dkdv_kernel)
_bwd_dq = triton.autotune(
    configs=_configs("bwd_dq", _INTERPRET), key=[*_TUNE_KEY, "FREQ_GRAD"], reset_to_zero=["DFreqH", "DFreqW"]
)(_bwd_dq_kernel)


# --------------------------------------------------------------------------------------------------
# Host side: checks, window ranges, launches, autograd
# --------------------------------------------------------------------------------------------------


def _window_bounds(
    seq_id: torch.Tensor, pos_h: torch.Tensor, pos_w: torch.Tensor, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """First token and one past the last token of each token's window run, ``[T]`` int32 each.

    A run is a maximal stretch of consecutive tokens with equal (seq_id, pos_h // W, pos_w // W) (only
    seq_id when W = 0). Device-side torch ops only: no host synchronisation, no sort, no gather.
    """
    t = seq_id.numel()
    change = seq_id[1:] != seq_id[:-1]  # [T-1]
    if window > 0:
        wh = torch.div(pos_h, window, rounding_mode="floor")
        ww = torch.div(pos_w, window, rounding_mode="floor")
        change = change | (wh[1:] != wh[:-1]) | (ww[1:] != ww[:-1])
    idx = torch.arange(t, device=seq_id.device, dtype=torch.int32)
    edge = torch.ones(1, dtype=torch.bool, device=seq_id.device)
    is_first = torch.cat([edge, change])  # [T]
    is_last = torch.cat([change, edge])  # [T]
    start = torch.where(is_first, idx, 0).cummax(0).values
    end = torch.where(is_last, idx + 1, t).flip(0).cummin(0).values.flip(0)
    return start.to(torch.int32).contiguous(), end.to(torch.int32).contiguous()


def _check_inputs(q, k, v, seq_id, pos_h, pos_w, freq_h, freq_w, window, rope_layout, scale) -> None:
    """Raise VisionRopeError naming the offending values before anything is launched."""
    from .errors import VisionRopeError

    where = "triton_windowed_rope_attention"
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise VisionRopeError(f"{where}: {name} must be a [T, H, D] tensor, got {shape}")
    if not (q.shape == k.shape == v.shape):
        raise VisionRopeError(
            f"{where}: q, k, v must have the same [T, H, D] shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in SUPPORTED_DTYPES:
        raise VisionRopeError(
            f"{where}: q, k, v must share one dtype among float32/float16/bfloat16, got {q.dtype}, {k.dtype}, "
            f"{v.dtype}; cast them with .to(dtype)"
        )
    t, h, d = q.shape
    if d not in SUPPORTED_HEAD_DIMS:
        raise VisionRopeError(
            f"{where}: head dim {d} is not supported by the Triton kernel (supported: {SUPPORTED_HEAD_DIMS}); "
            "use the sdpa backend for other head dims"
        )
    if t == 0 or h == 0:
        raise VisionRopeError(
            f"{where}: q has shape {tuple(q.shape)}: there must be at least one token and head"
        )
    for name, x in (("seq_id", seq_id), ("pos_h", pos_h), ("pos_w", pos_w)):
        if not isinstance(x, torch.Tensor) or x.shape != (t,) or x.is_floating_point() or x.is_complex():
            got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise VisionRopeError(
                f"{where}: {name} must be an integer tensor of shape [T] = ({t},), got {got}"
            )
    for name, x in (("freq_h", freq_h), ("freq_w", freq_w)):
        if not isinstance(x, torch.Tensor) or x.shape != (h, d // 2) or not x.is_floating_point():
            got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise VisionRopeError(
                f"{where}: {name} must be a float tensor of shape [H, D/2] = ({h}, {d // 2}), got {got}"
            )
    tensors = {"q": q, "k": k, "v": v, "seq_id": seq_id, "pos_h": pos_h, "pos_w": pos_w}
    tensors |= {"freq_h": freq_h, "freq_w": freq_w}
    devices = {name: x.device for name, x in tensors.items()}
    if len(set(devices.values())) > 1:
        raise VisionRopeError(f"{where}: all inputs must be on one device, got {devices}")
    if q.device.type != "cuda" and not _INTERPRET:
        raise VisionRopeError(
            f"{where}: inputs are on {q.device}; the Triton kernel needs CUDA tensors, or TRITON_INTERPRET=1 set "
            "before tbi_vision_rope._triton_attention is first imported (slow); use the sdpa backend on the CPU"
        )
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise VisionRopeError(f"{where}: window must be an int >= 0 (0 = global), got {window!r}")
    if rope_layout not in ROPE_LAYOUTS:
        raise VisionRopeError(f"{where}: rope_layout must be one of {ROPE_LAYOUTS}, got {rope_layout!r}")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise VisionRopeError(f"{where}: scale must be a positive finite number or None, got {scale!r}")


def _constexprs(q: torch.Tensor, window: int, interleaved: bool) -> dict:
    """Compile-time parameters shared by the kernels for inputs like ``q``."""
    d = q.shape[-1]
    # The interpreter's bf16 arithmetic is broken: there bf16 tiles are computed in fp32 after loading.
    lowp = q.dtype == torch.float16 or (q.dtype == torch.bfloat16 and not _INTERPRET)
    return {
        "HEAD_DIM": d,
        "HALF": d // 2,
        "HALF_P": triton.next_power_of_2(d // 2),
        "D_P": triton.next_power_of_2(d),
        "INTERLEAVED": interleaved,
        "GLOBAL": window == 0,
        "LOWP": lowp,
        "DOT_PRECISION": "tf32" if lowp else "ieee",
    }


class _WindowedRopeAttention(torch.autograd.Function):
    """Autograd wrapper: forward saves (O, log-sum-exp); backward recomputes P tile by tile."""

    @staticmethod
    def forward(
        ctx, q, k, v, freq_h, freq_w, seq_id, pos_h, pos_w, win_start, win_end, window, interleaved, scale
    ):
        t, h, _ = q.shape
        meta = _constexprs(q, window, interleaved)
        out = torch.empty_like(q)  # [T, H, D]
        lse = torch.empty((t, h), device=q.device, dtype=torch.float32)  # [T, H], base 2
        _fwd[lambda m: (triton.cdiv(t, m["BLOCK_M"]), h)](
            q, k, v, out, lse, seq_id, pos_h, pos_w, freq_h, freq_w, win_start, win_end,
            t, h, max(window, 1), scale * _LOG2E, **meta,
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, out, lse, freq_h, freq_w, seq_id, pos_h, pos_w, win_start, win_end)
        ctx.window = window
        ctx.interleaved = interleaved
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, freq_h, freq_w, seq_id, pos_h, pos_w, win_start, win_end = ctx.saved_tensors
        t, h, d = q.shape
        window, scale = ctx.window, ctx.scale
        meta = _constexprs(q, window, ctx.interleaved)
        freq_grad = bool(ctx.needs_input_grad[3] or ctx.needs_input_grad[4])
        dout = dout.contiguous()

        delta = torch.empty((t, h), device=q.device, dtype=torch.float32)  # [T, H]
        rows = 64
        _bwd_delta_kernel[(triton.cdiv(t * h, rows),)](
            out, dout, delta, t, h, HEAD_DIM=d, D_P=meta["D_P"], BLOCK=rows
        )

        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)  # [T, H, D]
        if freq_grad:  # the frequency pass reads dK: unrounded, as the in-kernel sums over tokens cancel
            dk = torch.empty_like(k, dtype=torch.float32)
        # Separate frequency-gradient buffers: the dQ autotuner zeroes its own while tuning.
        dfreq = [torch.zeros((h, d // 2), device=q.device, dtype=torch.float32) for _ in range(4)]
        common = (seq_id, pos_h, pos_w, freq_h, freq_w, win_start, win_end, t, h, max(window, 1))
        _bwd_dkdv[lambda m: (triton.cdiv(t, m["BLOCK_N"]), h)](
            q, k, v, dout, lse, delta, dk, dv, *common, scale, scale * _LOG2E, **meta
        )
        if freq_grad:
            _bwd_freq_kernel[(triton.cdiv(t, rows), h)](
                k, dk, pos_h, pos_w, dfreq[0], dfreq[1], t, h, HEAD_DIM=d, HALF=d // 2, HALF_P=meta["HALF_P"],
                INTERLEAVED=meta["INTERLEAVED"], BLOCK=rows,
            )  # fmt: skip
            dk = dk.to(k.dtype)
        _bwd_dq[lambda m: (triton.cdiv(t, m["BLOCK_M"]), h)](
            q, k, v, dout, lse, delta, dq, dfreq[2], dfreq[3], *common, scale, scale * _LOG2E,
            FREQ_GRAD=freq_grad, **meta,
        )  # fmt: skip
        dfreq_h = dfreq[0] + dfreq[2] if ctx.needs_input_grad[3] else None
        dfreq_w = dfreq[1] + dfreq[3] if ctx.needs_input_grad[4] else None
        return dq, dk, dv, dfreq_h, dfreq_w, None, None, None, None, None, None, None, None


def triton_windowed_rope_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_id: torch.Tensor,
    pos_h: torch.Tensor,
    pos_w: torch.Tensor,
    freq_h: torch.Tensor,
    freq_w: torch.Tensor,
    window: int,
    rope_layout: str,
    scale: float | None = None,
) -> torch.Tensor:
    """Windowed (or per-sequence global) attention with 2D-RoPE applied inside a fused Triton kernel.

    ``out[t] = sum_u softmax_u(scale * rot(q)[t] . rot(k)[u]) v[u]`` over the keys u allowed for t, with
    ``rot`` the rotation by ``theta[t, h, j] = pos_h[t] * freq_h[h, j] + pos_w[t] * freq_w[h, j]``
    (see the module docstring). Non-causal.

    Args:
        q, k, v: ``[T, H, D]`` packed tokens in window-major order (each window's tokens contiguous, each
            image/frame's tokens contiguous); float32/float16/bfloat16; D in {64, 72, 80, 128}.
            Non-contiguous inputs are made contiguous.
        seq_id: ``[T]`` integer image/frame id; different ids never attend to each other.
        pos_h, pos_w: ``[T]`` integer patch row/column inside the frame.
        freq_h, freq_w: ``[H, D/2]`` float per-head frequencies (computed in fp32); they get gradients
            when they require grad.
        window: W > 0: t and u attend iff same seq_id and ``(pos_h // W, pos_w // W)`` equal; 0: whole seq_id.
        rope_layout: ``"half"`` (pair j with j + D/2) or ``"interleaved"`` (pair 2j with 2j + 1).
        scale: softmax scale, default ``1 / sqrt(D)``.

    Returns:
        ``[T, H, D]`` in the dtype of ``q``.

    Raises:
        VisionRopeError: bad shapes, dtypes, head dims, devices or arguments, before any launch.
    """
    _check_inputs(q, k, v, seq_id, pos_h, pos_w, freq_h, freq_w, window, rope_layout, scale)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    seq_id, pos_h, pos_w = (x.to(torch.int32).contiguous() for x in (seq_id, pos_h, pos_w))
    win_start, win_end = _window_bounds(seq_id, pos_h, pos_w, window)
    return _WindowedRopeAttention.apply(
        q.contiguous(), k.contiguous(), v.contiguous(),
        freq_h.float().contiguous(), freq_w.float().contiguous(),
        seq_id, pos_h, pos_w, win_start, win_end, window, rope_layout == "interleaved", float(scale),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Ahead-of-time compilation for a GPU target (no device needed): resource usage per configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelResources:
    """Resource usage of one kernel configuration compiled for one GPU architecture (from ``ptxas -v``)."""

    kernel: str
    """Kernel name: "fwd", "bwd_dkdv", "bwd_dq", "bwd_delta" or "bwd_freq"."""
    arch: int
    """Compute capability, e.g. 80 (A100) or 90 (H100)."""
    head_dim: int
    """Head dimension D the kernel was specialised for."""
    block_m: int
    """Query tile rows."""
    block_n: int
    """Key tile rows."""
    num_warps: int
    """Warps per program."""
    num_stages: int
    """Software-pipelining stages."""
    registers: int
    """Registers per thread."""
    shared_bytes: int
    """Shared memory per program (Triton's allocation)."""
    spill_stores: int
    """Bytes of register spill stores (0 for a healthy kernel)."""
    spill_loads: int
    """Bytes of register spill loads."""


def _compile_in_subprocess(**kwargs) -> list[KernelResources]:
    """compile_resource_usage in a fresh interpreter-free Python process.

    Under TRITON_INTERPRET=1 every @triton.jit function, triton.language's own included, is an interpreter
    object for the life of the process, and those cannot be compiled.
    """
    code = (
        "import json, sys, dataclasses, torch\n"
        "from tbi_vision_rope._triton_attention import compile_resource_usage\n"
        "kw = json.loads(sys.argv[1]); kw['dtype'] = getattr(torch, kw['dtype'])\n"
        "print(json.dumps([dataclasses.asdict(r) for r in compile_resource_usage(**kw)]))\n"
    )
    kwargs = {**kwargs, "dtype": str(kwargs["dtype"]).removeprefix("torch.")}
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kwargs)], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"compiling the Triton kernels failed:\n{done.stderr[-4000:]}")
    return [KernelResources(**row) for row in json.loads(done.stdout.splitlines()[-1])]


def _signature(kernel, constexprs: dict, dtype: str) -> dict:
    """Triton type string of every argument of ``kernel`` (16-bit tensors as ``dtype``)."""
    ints = {"SeqId", "PosH", "PosW", "WinStart", "WinEnd"}
    fp32 = {"Lse", "Delta", "FreqH", "FreqW", "DFreqH", "DFreqW"}
    scalars = {"T": "i32", "H": "i32", "window": "i32", "sm_scale": "fp32", "qk_scale": "fp32"}
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in scalars:
            sig[name] = scalars[name]
        elif name in ints:
            sig[name] = "*i32"
        elif name in fp32:
            sig[name] = "*fp32"
        else:
            sig[name] = f"*{dtype}"
    return sig


def _compile_with_ptxas_log(src, target, options) -> tuple[object, str]:
    """``triton.compile`` bypassing the cache, returning the kernel and the ``ptxas -v`` log it printed."""
    out = io.StringIO()
    with (
        triton.knobs.compilation.scope(),
        triton.knobs.nvidia.scope(),
        contextlib.redirect_stdout(out),
    ):
        triton.knobs.compilation.always_compile = True
        triton.knobs.nvidia.dump_ptxas_log = True
        compiled = triton.compile(src, target=target, options=options)
    return compiled, out.getvalue()


def _parse_ptxas_log(log: str) -> tuple[int, int, int]:
    """(registers, spill store bytes, spill load bytes) from a ``ptxas -v`` log of one kernel."""
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if regs is None or spills is None:
        raise RuntimeError(f"unexpected ptxas -v output:\n{log}")
    return int(regs.group(1)), int(spills.group(1)), int(spills.group(2))


def compile_resource_usage(
    archs: tuple[int, ...] = (80, 90),
    head_dims: tuple[int, ...] = SUPPORTED_HEAD_DIMS,
    dtype: torch.dtype = torch.bfloat16,
    rope_layout: str = "half",
    window: int = 8,
    freq_grad: bool = True,
) -> list[KernelResources]:
    """Compile every autotune configuration of every kernel for each CUDA ``arch``; no GPU needed.

    Uses ``triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", arch, 32))`` and
    reads registers and spills from the ``ptxas -v`` log of that compilation, shared memory from Triton's
    metadata. Slow (seconds per configuration): it runs the full Triton and ptxas pipeline.
    """
    if _INTERPRET:
        return _compile_in_subprocess(
            archs=list(archs), head_dims=list(head_dims), dtype=dtype, rope_layout=rope_layout,
            window=window, freq_grad=freq_grad,
        )  # fmt: skip
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    mod = sys.modules[__name__]
    type_name = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    kernels = {
        "fwd": (mod._fwd_kernel, _configs("fwd", False), {}),
        "bwd_dkdv": (mod._bwd_dkdv_kernel, _configs("bwd_dkdv", False), {}),
        "bwd_dq": (mod._bwd_dq_kernel, _configs("bwd_dq", False), {"FREQ_GRAD": freq_grad}),
        "bwd_delta": (mod._bwd_delta_kernel, [triton.Config({"BLOCK": 64}, num_warps=4, num_stages=1)], {}),
        "bwd_freq": (mod._bwd_freq_kernel, [triton.Config({"BLOCK": 64}, num_warps=4, num_stages=1)], {}),
    }
    rows = []
    for arch in archs:
        target = GPUTarget("cuda", arch, 32)
        for head_dim in head_dims:
            probe = torch.empty((1, 1, head_dim), dtype=dtype)
            meta = _constexprs(probe, window, rope_layout == "interleaved")
            for name, (fn, configs, extra) in kernels.items():
                for config in configs:
                    constexprs = {**meta, **extra, **config.kwargs}
                    constexprs = {key: val for key, val in constexprs.items() if key in fn.arg_names}
                    signature = _signature(fn, constexprs, type_name)
                    # As the launcher specialises them: torch allocations are 16-byte aligned.
                    attrs = {
                        (i,): [["tt.divisibility", 16]]
                        for i, name in enumerate(fn.arg_names)
                        if signature[name].startswith("*")
                    }
                    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
                    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
                    compiled, log = _compile_with_ptxas_log(src, target, options)
                    regs, spill_st, spill_ld = _parse_ptxas_log(log)
                    rows.append(
                        KernelResources(
                            kernel=name,
                            arch=arch,
                            head_dim=head_dim,
                            block_m=config.kwargs.get("BLOCK_M", config.kwargs.get("BLOCK", 0)),
                            block_n=config.kwargs.get("BLOCK_N", 0),
                            num_warps=config.num_warps,
                            num_stages=config.num_stages,
                            registers=regs,
                            shared_bytes=int(compiled.metadata.shared),
                            spill_stores=spill_st,
                            spill_loads=spill_ld,
                        )
                    )
    return rows
