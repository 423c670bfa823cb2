"""Fused per-entry merge kernels (numba, compiled once and cached on disk).

Each kernel makes one pass over entries [lo, hi) of a chunk: it loads the base b [C] and the M fine-tunes
t [M, C] (bf16 bit patterns as uint16, or float32), forms δ_i = t_i − b in float64, applies the DARE mask and
the TIES trim, and either collects the trim threshold's statistics or writes the merged entry. Working
block by block (512 entries, every model's deltas in L1) in branch-free loops the compiler vectorises
replaces the ~35 whole-chunk tensor passes of an eager implementation; the kernels release the GIL, so
threads split a chunk between cores.

DARE draws come from a counter-based generator: u_j = ⌊splitmix64(key + (j + 1)·φ) / 2¹¹⌋ / 2⁵³ for the
flat entry index j, where key is a hash of (seed, tensor, model). A draw depends only on (key, j), so any
chunking or threading gives the same mask.

Error returns: the kernels that check their inputs return ``(who, j)`` for the first non-finite input entry
(``who`` = −1 for the base, i for model i; j local to the chunk) when ``check`` is set, else ``(-2, -1)``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic, overload

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_TWO_M53 = 1.0 / (1 << 53)
OK = -2
_BLOCK = 512  # entries per inner block: the block's deltas of every model stay in L1


@intrinsic
def _u32_as_f32(typingctx, x):
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return sig, codegen


@intrinsic
def _f32_as_u32(typingctx, x):
    sig = types.uint32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.uint32))

    return sig, codegen


def _load(a, j):
    """a[j] as float64, from bf16 bit patterns (uint16) or float32."""


@overload(_load, inline="always")
def _load_impl(a, j):
    if isinstance(a.dtype, types.Integer):
        return lambda a, j: np.float64(_u32_as_f32(np.uint32(a[j]) << np.uint32(16)))
    return lambda a, j: np.float64(a[j])


def _store(out, j, v):
    """out[j] = v rounded to float32, then to bf16 (round to nearest even, as torch) for uint16 outputs."""


@overload(_store, inline="always")
def _store_impl(out, j, v):
    if isinstance(out.dtype, types.Integer):

        def impl(out, j, v):
            f = np.float32(v)
            u = _f32_as_u32(f)
            r = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
            out[j] = np.uint16(r if f == f else np.uint32(0x7FC0))

        return impl

    def impl(out, j, v):
        out[j] = v

    return impl


@njit(inline="always")
def _uniform(key, g):
    """U[0, 1) draw number g of the stream ``key`` (splitmix64 of the counter)."""
    z = key + (np.uint64(g) + np.uint64(1)) * _GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    z = z ^ (z >> _S31)
    return np.float64(z >> _S11) * _TWO_M53


@njit(inline="always")
def _finite(x):
    return x - x == 0.0


@njit(inline="always")
def _mag_bits(d):
    """Bit pattern of float32(|d|): orders like the value for non-negative floats."""
    return _f32_as_u32(np.float32(abs(d)))


@njit(nogil=True, cache=True)
def keep_mask(key, keep_prob, start, out):
    """out[j] = (u_{start + j} < keep_prob): the DARE keep mask of entries [start, start + len(out))."""
    for j in range(out.shape[0]):
        out[j] = _uniform(key, start + j) < keep_prob


@njit(inline="always")
def _first_bad(b, t, lo, hi):
    """(who, j) of the first non-finite input entry in [lo, hi), or (OK, -1)."""
    for j in range(lo, hi):
        if not _finite(_load(b, j)):
            return -1, j
        for i in range(t.shape[0]):
            if not _finite(_load(t[i], j)):
                return i, j
    return OK, -1


@njit(inline="always")
def _n_bad(b, t, lo, hi):
    """Number of non-finite input values in [lo, hi) (a branch-free reduction the compiler vectorises)."""
    bad = 0
    bs = b[lo:hi]
    for q in range(hi - lo):
        bad += not _finite(_load(bs, q))
    for i in range(t.shape[0]):
        ts = t[i, lo:hi]
        for q in range(hi - lo):
            bad += not _finite(_load(ts, q))
    return bad


@njit(inline="always")
def _deltas(b, t, i, s, e, j0, key, keep_prob, dare, trim, thr, cut, factor, dst):
    """dst[q] = sparsified δ_i of entry s + q, for q < e − s.

    Block views indexed from 0 and one branch-free loop per case let the compiler drop negative-index
    handling and vectorise (the DARE draws are made in dst first, then multiply the deltas)."""
    bs = b[s:e]
    ts = t[i, s:e]
    g = j0 + s
    n = e - s
    if dare:
        for q in range(n):
            dst[q] = np.float64(_uniform(key, g + q) < keep_prob)
        if trim:  # the trim ranks the masked, not yet rescaled deltas
            for q in range(n):
                d = (_load(ts, q) - _load(bs, q)) * dst[q]
                bits = _mag_bits(d)
                dst[q] = d * np.float64((bits > thr) | ((bits == thr) & (g + q < cut))) * factor
        else:
            for q in range(n):
                dst[q] *= (_load(ts, q) - _load(bs, q)) * factor
    elif trim:
        for q in range(n):
            d = _load(ts, q) - _load(bs, q)
            bits = _mag_bits(d)
            dst[q] = d * np.float64((bits > thr) | ((bits == thr) & (g + q < cut))) * factor
    else:
        for q in range(n):
            dst[q] = (_load(ts, q) - _load(bs, q)) * factor


@njit(nogil=True, cache=True)
def hist_pass(b, t, lo, hi, j0, keys, keep_prob, dare, hibin, hist):
    """Magnitude histograms of the DARE-masked deltas, per model.

    hibin[i] < 0: hist[i, bits >> 16] += 1 for every entry (high halves of the float32 bit pattern).
    hibin[i] >= 0: hist[i, bits & 0xFFFF] += 1 for the entries whose high half equals hibin[i].
    """
    m = t.shape[0]
    d = np.empty(_BLOCK)
    for s in range(lo, hi, _BLOCK):
        e = min(hi, s + _BLOCK)
        for i in range(m):
            _deltas(b, t, i, s, e, j0, keys[i], keep_prob, dare, False, np.uint32(0), 0, 1.0, d)
            h = hibin[i]
            for q in range(e - s):
                bits = _mag_bits(d[q])
                if h < 0:
                    hist[i, bits >> np.uint32(16)] += 1
                elif (bits >> np.uint32(16)) == h:
                    hist[i, bits & np.uint32(0xFFFF)] += 1


@njit(nogil=True, cache=True)
def bracket_pass(
    b, t, lo, hi, j0, keys, keep_prob, dare, lo_bits, hi_bits, above, cand_bits, cand_pos, n_cand, check
):
    """Per model: count the entries whose masked |δ_i| bit pattern exceeds hi_bits[i] (``above``) and
    append those within [lo_bits[i], hi_bits[i]] to cand_bits[i] / cand_pos[i] (flat index), up to
    their capacity; n_cand[i] counts every candidate, so n_cand > capacity means the buffers overflowed."""
    m = t.shape[0]
    cap = cand_bits.shape[1]
    d = np.empty(_BLOCK)
    for s in range(lo, hi, _BLOCK):
        e = min(hi, s + _BLOCK)
        if check and _n_bad(b, t, s, e):
            return _first_bad(b, t, s, e)
        for i in range(m):
            _deltas(b, t, i, s, e, j0, keys[i], keep_prob, dare, False, np.uint32(0), 0, 1.0, d)
            h = hi_bits[i]
            low = lo_bits[i]
            a = 0
            c = n_cand[i]
            for q in range(e - s):
                bits = _mag_bits(d[q])
                a += bits > h
                if bits >= low and bits <= h:
                    if c < cap:
                        cand_bits[i, c] = bits
                        cand_pos[i, c] = j0 + s + q
                    c += 1
            above[i] += a
            n_cand[i] = c
    return OK, -1


@njit(nogil=True, cache=True)
def magnitude_bits(b, t, lo, hi, j0, keys, keep_prob, dare, out):
    """out[i, q] = bit pattern of the masked |δ_i| of entry lo + q (the threshold's sample)."""
    d = np.empty(_BLOCK)
    for s in range(lo, hi, _BLOCK):
        e = min(hi, s + _BLOCK)
        for i in range(t.shape[0]):
            _deltas(b, t, i, s, e, j0, keys[i], keep_prob, dare, False, np.uint32(0), 0, 1.0, d)
            for q in range(e - s):
                out[i, s - lo + q] = _mag_bits(d[q])


@njit(nogil=True, cache=True)
def count_ties(b, t, lo, hi, j0, keys, keep_prob, dare, thr, active, counts):
    """counts[i] += number of entries whose masked |δ_i| has the threshold's bit pattern thr[i] (active models)."""
    d = np.empty(_BLOCK)
    for s in range(lo, hi, _BLOCK):
        e = min(hi, s + _BLOCK)
        for i in range(t.shape[0]):
            if active[i]:
                _deltas(b, t, i, s, e, j0, keys[i], keep_prob, dare, False, np.uint32(0), 0, 1.0, d)
                c = 0
                for q in range(e - s):
                    c += _mag_bits(d[q]) == thr[i]
                counts[i] += c


@njit(nogil=True, cache=True)
def nth_tie(b, t, i, lo, hi, j0, key, keep_prob, dare, thr, nth):
    """Local index of the nth (1-based) entry in [lo, hi) whose masked |δ_i| has bit pattern thr, or hi."""
    seen = 0
    d = np.empty(_BLOCK)
    for s in range(lo, hi, _BLOCK):
        e = min(hi, s + _BLOCK)
        _deltas(b, t, i, s, e, j0, key, keep_prob, dare, False, np.uint32(0), 0, 1.0, d)
        for q in range(e - s):
            seen += _mag_bits(d[q]) == thr
            if seen == nth:
                return s + q
    return hi


@njit(nogil=True, cache=True)
def l1_pass(b, t, lo, hi, j0, keys, keep_prob, sums):
    """sums[i, 0] += Σ|δ_i|, sums[i, 1] += Σ|m_i ⊙ δ_i| (mergekit's DARE rescale)."""
    d = np.empty(_BLOCK)
    for s in range(lo, hi, _BLOCK):
        e = min(hi, s + _BLOCK)
        for i in range(t.shape[0]):
            _deltas(b, t, i, s, e, j0, keys[i], keep_prob, False, False, np.uint32(0), 0, 1.0, d)
            full = 0.0
            masked = 0.0
            for q in range(e - s):
                a = abs(d[q])
                full += a
                masked += a * np.float64(_uniform(keys[i], j0 + s + q) < keep_prob)
            sums[i, 0] += full
            sums[i, 1] += masked


@njit(nogil=True, cache=True)
def merge_pass(
    b, t, out, lo, hi, j0, keys, keep_prob, dare, trim, thr, cut, factor, w, mode, mass, norm, total, scale,
    kept, conflicts, check,
):  # fmt: skip
    """Write the merged entries [lo, hi) to ``out``; count kept deltas per model and sign conflicts.

    Per entry: δ_i = t_i − b; DARE: δ_i = 0 unless u < keep_prob; trim: keep iff bits(|δ_i|) > thr[i], or
    equal and j0 + j < cut[i] (ties kept in flat order); δ_i ×= factor[i].
    mode 0 (task arithmetic): θ = b + scale · Σ w_i δ_i (÷ total when norm).
    mode 1/2/3 (TIES paper/mergekit/peft): elect γ on δ_i (1, 3) or w_i δ_i (2) by mass (Σ) or count (Σ sgn),
    γ = +1 on a tie; A = {i : sgn = γ}; θ = b + scale · Σ_A w_i δ_i (÷ Σ_A w_i, or ÷ |A| in mode 3, when norm).
    Work goes block by block, model by model, in branch-free loops the compiler vectorises.
    """
    m = t.shape[0]
    d = np.empty((m, _BLOCK))
    acc = np.empty(_BLOCK)
    den = np.empty(_BLOCK)
    gamma = np.empty(_BLOCK)
    pos = np.empty(_BLOCK, dtype=np.bool_)
    neg = np.empty(_BLOCK, dtype=np.bool_)
    for s in range(lo, hi, _BLOCK):
        e = min(hi, s + _BLOCK)
        n = e - s
        if check and _n_bad(b, t, s, e):
            return _first_bad(b, t, s, e)
        for i in range(m):
            _deltas(b, t, i, s, e, j0, keys[i], keep_prob, dare, trim, thr[i], cut[i], factor[i], d[i])
        pos[:n] = False
        neg[:n] = False
        for i in range(m):
            di = d[i]
            c = 0
            for q in range(n):
                x = di[q]
                pos[q] |= x > 0.0
                neg[q] |= x < 0.0
                c += x != 0.0
            kept[i] += c
        c = 0
        for q in range(n):
            c += pos[q] & neg[q]
        conflicts[0] += c
        acc[:n] = 0.0
        if mode == 0:
            for i in range(m):
                wi = w[i]
                di = d[i]
                for q in range(n):
                    acc[q] += wi * di[q]
            if norm:
                for q in range(n):
                    acc[q] /= total
        else:
            gamma[:n] = 0.0  # the votes first
            for i in range(m):
                ws = w[i] if mode == 2 else 1.0  # mergekit elects on the weighted deltas
                di = d[i]
                for q in range(n):
                    x = ws * di[q]
                    gamma[q] += x if mass else np.float64(x > 0.0) - np.float64(x < 0.0)
            for q in range(n):
                gamma[q] = 2.0 * np.float64(gamma[q] >= 0.0) - 1.0  # +1 on a tie
            den[:n] = 0.0
            for i in range(m):
                wi = w[i]
                ws = wi if mode == 2 else 1.0
                wd = 1.0 if mode == 3 else wi
                di = d[i]
                for q in range(n):
                    agree = np.float64(ws * di[q] * gamma[q] > 0.0)  # zero deltas never agree
                    acc[q] += wi * di[q] * agree
                    den[q] += wd * agree
            if norm:
                for q in range(n):
                    acc[q] /= den[q] + np.float64(den[q] == 0.0)
        for q in range(n):
            _store(out, s + q, _load(b, s + q) + scale * acc[q])
    return OK, -1
