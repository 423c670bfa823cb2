"""Fused per-entry merge kernels (numba, compiled once and cached on disk).

Each kernel makes one pass over entries [lo, hi) of a chunk: it loads the base b [C] and the M fine-tunes
t (a tuple of M arrays [C]; bf16 bit patterns as uint16, or float32), forms δ_i = t_i − b in float32,
applies the DARE mask and the TIES trim, and either collects the trim threshold's statistics or writes the
merged entry. Work goes block by block (512 entries, every model's deltas in L1), each step one
branch-free loop the compiler vectorises; the kernels release the GIL, so threads split a chunk between
cores.

DARE draws come from a counter-based generator: entry j of the stream (k_lo, k_hi) is kept iff
h((j_lo + k_lo) ⊕ (k_hi + j_hi)) < keep_threshold, with h Wellons' ``lowbias32`` 32-bit mixer (a bijection
with near-ideal avalanche), j_lo/j_hi the low/high 32 bits of the flat index and keep_threshold =
round(keep_prob · 2³²). A draw depends only on the key and j, so any chunking or threading gives the same
mask; two 32-bit multiplies keep it at a few instructions per entry.

Error returns: the kernels that check their inputs return ``(who, j)`` for the first non-finite input entry
(``who`` = −1 for the base, i for model i; j local to the chunk) when ``check`` is set, else ``(-2, -1)``.
A non-finite input makes its delta non-finite whatever the mask (NaN·0 and ∞·0 are NaN), so the check
looks at the block's deltas, already in L1, and reads the inputs again only when one is not finite (a
delta can also overflow from finite inputs; then the inputs pass and the merge goes on).
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic, overload

OK = -2
_BLOCK = 512  # entries per inner block: the block's deltas of every model stay in L1
_U32 = np.uint32
_F32 = np.float32
_ZERO, _ONE, _TWO = (
    _F32(0.0),
    _F32(1.0),
    _F32(2.0),
)  # float32 constants: a float literal would widen the loops


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


@intrinsic
def _mul32(typingctx, a, b):
    """a · b mod 2³² (numba would widen a uint32 product to 64 bits)."""
    sig = types.uint32(types.uint32, types.uint32)

    def codegen(context, builder, signature, args):
        return builder.mul(args[0], args[1])

    return sig, codegen


def _load(a, j):
    """a[j] as float32, from bf16 bit patterns (uint16) or float32."""


@overload(_load, inline="always")
def _load_impl(a, j):
    if isinstance(a.dtype, types.Integer):
        return lambda a, j: _u32_as_f32(_U32(a[j]) << _U32(16))
    return lambda a, j: np.float32(a[j])


def _store(out, j, v):
    """out[j] = v rounded to float32, then to bf16 (round to nearest even, as torch) for uint16 outputs."""


@overload(_store, inline="always")
def _store_impl(out, j, v):
    if isinstance(out.dtype, types.Integer):

        def impl(out, j, v):
            f = np.float32(v)
            u = _f32_as_u32(f)
            r = (u + _U32(0x7FFF) + ((u >> _U32(16)) & _U32(1))) >> _U32(16)
            ok = _U32(f == f)  # NaN stays a (quiet) NaN; select by arithmetic, not a branch
            out[j] = np.uint16(r * ok + _U32(0x7FC0) * (_U32(1) - ok))

        return impl

    def impl(out, j, v):
        out[j] = v

    return impl


@njit(inline="always")
def _mix32(x):
    """Wellons' lowbias32: a bijective 32-bit mixer with low avalanche bias."""
    x = _U32(x ^ (x >> _U32(16)))
    x = _mul32(x, _U32(0x7FEB352D))
    x = _U32(x ^ (x >> _U32(15)))
    x = _mul32(x, _U32(0x846CA68B))
    return _U32(x ^ (x >> _U32(16)))


@njit(inline="always")
def _draws(k_lo, k_hi, g, n, out):
    """out[q] = the 32-bit draw of flat entry g + q of the stream (k_lo, k_hi), for q < n."""
    for q in range(n):
        j = g + q
        out[q] = _mix32(_U32(_U32(_U32(j & 0xFFFFFFFF) + k_lo) ^ _U32(k_hi + _U32(j >> 32))))


@njit(inline="always")
def _finite(x):
    return x - x == _ZERO


@njit(inline="always")
def _mag_bits(d):
    """Bit pattern of float32(|d|): orders like the value for non-negative floats."""
    return _f32_as_u32(np.float32(abs(d)))


@njit(inline="always")
def _split(key):
    return _U32(key & np.uint64(0xFFFFFFFF)), _U32(key >> np.uint64(32))


@njit(nogil=True, cache=True)
def keep_mask(key, keep_thr, start, out):
    """out[j] = draw_{start + j} < keep_thr: the DARE keep mask of entries [start, start + len(out))."""
    k_lo, k_hi = _split(key)
    d = np.empty(_BLOCK, dtype=np.uint32)
    n = out.shape[0]
    for s in range(0, n, _BLOCK):
        e = min(n, s + _BLOCK)
        _draws(k_lo, k_hi, start + s, e - s, d)
        for q in range(e - s):
            out[s + q] = d[q] < keep_thr


@njit(inline="always")
def _first_bad(b, t, lo, hi):
    """(who, j) of the first non-finite input entry in [lo, hi), or (OK, -1)."""
    for j in range(lo, hi):
        if not _finite(_load(b, j)):
            return -1, j
        for i in range(len(t)):
            if not _finite(_load(t[i], j)):
                return i, j
    return OK, -1


def _count_bad(a):
    """Number of NaN/Inf values in a (bf16 bit patterns or float32)."""


@overload(_count_bad)
def _count_bad_impl(a):
    if isinstance(a.dtype, types.Integer):

        def impl(a):  # bf16: all exponent bits set, tested on the 16-bit patterns (twice the lanes)
            bad = 0
            for q in range(a.shape[0]):
                bad += (a[q] & np.uint16(0x7F80)) == np.uint16(0x7F80)
            return bad

        return impl

    def impl(a):
        bad = 0
        for q in range(a.shape[0]):
            bad += not _finite(a[q])
        return bad

    return impl


@njit(inline="always")
def _n_bad(b, t, lo, hi):
    """Number of non-finite input values in [lo, hi) (branch-free reductions the compiler vectorises)."""
    bad = _count_bad(b[lo:hi])
    for i in range(len(t)):
        bad += _count_bad(t[i][lo:hi])
    return bad


@njit(inline="always")
def _deltas(b, ti, s, e, j0, key, keep_thr, dare, trim, thr, cut, factor, dst, draws):
    """dst[q] = sparsified δ_i of entry s + q, for q < e − s (ti = t[i]).

    Block views indexed from 0 and one branch-free loop per case let the compiler drop negative-index
    handling and vectorise; ``draws`` is scratch for the DARE draws. The trim ranks the masked, not yet
    rescaled deltas."""
    bs = b[s:e]
    ts = ti[s:e]
    g = j0 + s
    n = e - s
    if dare:
        k_lo, k_hi = _split(key)
        _draws(k_lo, k_hi, g, n, draws)
        if trim:
            for q in range(n):
                x = (_load(ts, q) - _load(bs, q)) * _F32(draws[q] < keep_thr)
                bits = _mag_bits(x)
                dst[q] = x * (factor * _F32((bits > thr) | ((bits == thr) & (g + q < cut))))
        else:
            for q in range(n):
                dst[q] = (_load(ts, q) - _load(bs, q)) * (factor * _F32(draws[q] < keep_thr))
    elif trim:
        for q in range(n):
            x = _load(ts, q) - _load(bs, q)
            bits = _mag_bits(x)
            dst[q] = x * (factor * _F32((bits > thr) | ((bits == thr) & (g + q < cut))))
    else:
        for q in range(n):
            dst[q] = (_load(ts, q) - _load(bs, q)) * factor


@njit(nogil=True, cache=True)
def hist_pass(b, t, lo, hi, j0, keys, keep_thr, dare, hibin, hist):
    """Magnitude histograms of the DARE-masked deltas, per model.

    hibin[i] < 0: hist[i, bits >> 16] += 1 for every entry (high halves of the float32 bit pattern).
    hibin[i] >= 0: hist[i, bits & 0xFFFF] += 1 for the entries whose high half equals hibin[i].
    """
    d = np.empty(_BLOCK, dtype=np.float32)
    draws = np.empty(_BLOCK, dtype=np.uint32)
    for s in range(lo, hi, _BLOCK):
        e = min(hi, s + _BLOCK)
        for i in range(len(t)):
            _deltas(b, t[i], s, e, j0, keys[i], keep_thr, dare, False, _U32(0), 0, _ONE, d, draws)
            h = hibin[i]
            for q in range(e - s):
                bits = _mag_bits(d[q])
                if h < 0:
                    hist[i, bits >> _U32(16)] += 1
                elif (bits >> _U32(16)) == h:
                    hist[i, bits & _U32(0xFFFF)] += 1


@njit(nogil=True, cache=True)
def bracket_pass(
    b, t, lo, hi, j0, keys, keep_thr, dare, lo_bits, hi_bits, above, cand_bits, cand_pos, n_cand, check
):
    """Per model: count the entries whose masked |δ_i| bit pattern exceeds hi_bits[i] (``above``) and
    append those within [lo_bits[i], hi_bits[i]] to cand_bits[i] / cand_pos[i] (flat index), up to
    their capacity; n_cand[i] counts every candidate, so n_cand > capacity means the buffers overflowed."""
    cap = cand_bits.shape[1]
    d = np.empty(_BLOCK, dtype=np.float32)
    draws = np.empty(_BLOCK, dtype=np.uint32)
    bits = np.empty(_BLOCK, dtype=np.uint32)
    for s in range(lo, hi, _BLOCK):
        e = min(hi, s + _BLOCK)
        n = e - s
        for i in range(len(t)):
            _deltas(b, t[i], s, e, j0, keys[i], keep_thr, dare, False, _U32(0), 0, _ONE, d, draws)
            if check and _count_bad(d[:n]) and _n_bad(b, t, s, e):
                return _first_bad(b, t, s, e)
            h = hi_bits[i]
            low = lo_bits[i]
            a = 0
            inside = 0
            for q in range(n):  # vectorised: bit patterns, the count above and the count inside
                x = _mag_bits(d[q])
                bits[q] = x
                a += x > h
                inside += (x >= low) & (x <= h)
            above[i] += a
            if inside:
                c = n_cand[i]
                for q in range(n):
                    x = bits[q]
                    if x >= low and x <= h:
                        if c < cap:
                            cand_bits[i, c] = x
                            cand_pos[i, c] = j0 + s + q
                        c += 1
                n_cand[i] = c
    return OK, -1


@njit(nogil=True, cache=True)
def sample_bits(b, t, j0, starts, length, keys, keep_thr, dare, out, first):
    """out[i, (first + r)·length + q] = bit pattern of the masked |δ_i| of local entry starts[r] + q (flat
    index j0 + starts[r] + q): the blocks of the threshold's sample."""
    d = np.empty(_BLOCK, dtype=np.float32)
    draws = np.empty(_BLOCK, dtype=np.uint32)
    for r in range(starts.shape[0]):
        lo = starts[r]
        col = (first + r) * length - lo
        for s in range(lo, lo + length, _BLOCK):
            e = min(lo + length, s + _BLOCK)
            for i in range(len(t)):
                _deltas(b, t[i], s, e, j0, keys[i], keep_thr, dare, False, _U32(0), 0, _ONE, d, draws)
                for q in range(e - s):
                    out[i, col + s + q] = _mag_bits(d[q])


@njit(nogil=True, cache=True)
def count_ties(b, t, lo, hi, j0, keys, keep_thr, dare, thr, active, counts):
    """counts[i] += number of entries whose masked |δ_i| has the threshold's bit pattern thr[i] (active models)."""
    d = np.empty(_BLOCK, dtype=np.float32)
    draws = np.empty(_BLOCK, dtype=np.uint32)
    for s in range(lo, hi, _BLOCK):
        e = min(hi, s + _BLOCK)
        for i in range(len(t)):
            if active[i]:
                _deltas(b, t[i], s, e, j0, keys[i], keep_thr, dare, False, _U32(0), 0, _ONE, d, draws)
                c = 0
                for q in range(e - s):
                    c += _mag_bits(d[q]) == thr[i]
                counts[i] += c


@njit(nogil=True, cache=True)
def nth_tie(b, t, i, lo, hi, j0, key, keep_thr, dare, thr, nth):
    """Local index of the nth (1-based) entry in [lo, hi) whose masked |δ_i| has bit pattern thr, or hi."""
    seen = 0
    d = np.empty(_BLOCK, dtype=np.float32)
    draws = np.empty(_BLOCK, dtype=np.uint32)
    for s in range(lo, hi, _BLOCK):
        e = min(hi, s + _BLOCK)
        _deltas(b, t[i], s, e, j0, key, keep_thr, dare, False, _U32(0), 0, _ONE, d, draws)
        for q in range(e - s):
            seen += _mag_bits(d[q]) == thr
            if seen == nth:
                return s + q
    return hi


@njit(nogil=True, cache=True)
def l1_pass(b, t, lo, hi, j0, keys, keep_thr, sums):
    """sums[i, 0] += Σ|δ_i|, sums[i, 1] += Σ|m_i ⊙ δ_i| (mergekit's DARE rescale)."""
    d = np.empty(_BLOCK, dtype=np.float32)
    draws = np.empty(_BLOCK, dtype=np.uint32)
    for s in range(lo, hi, _BLOCK):
        e = min(hi, s + _BLOCK)
        for i in range(len(t)):
            _deltas(b, t[i], s, e, j0, keys[i], keep_thr, False, False, _U32(0), 0, _ONE, d, draws)
            k_lo, k_hi = _split(keys[i])
            _draws(k_lo, k_hi, j0 + s, e - s, draws)
            full = 0.0
            masked = 0.0
            for q in range(e - s):  # float64 sums: a tensor's L1 norm adds up millions of terms
                a = np.float64(abs(d[q]))
                full += a
                masked += a * np.float64(draws[q] < keep_thr)
            sums[i, 0] += full
            sums[i, 1] += masked


@njit(inline="always")
def _combine(bs, os, d, n, w, ws, wd, mode, mass, norm, total, scale):
    """Write θ = b + scale · (merged δ) for the block's n entries; return its sign conflicts.

    One loop over the entries with the models' loops inside: the number of models is a compile-time
    constant (the length of the inputs' tuple), so those loops unroll and the entry loop vectorises.
    mode, mass and norm are literals at every call site, so each combination compiles to its own loop."""
    m = d.shape[0]
    conflicts = 0
    for q in range(n):
        n_pos = 0
        n_neg = 0
        for i in range(m):
            n_pos += d[i, q] > _ZERO
            n_neg += d[i, q] < _ZERO
        conflicts += (n_pos > 0) & (n_neg > 0)
        acc = _ZERO
        if mode == 0:
            for i in range(m):
                acc += w[i] * d[i, q]
            if norm:
                acc /= total
        else:
            vote = _ZERO
            for i in range(m):
                x = ws[i] * d[i, q]
                if mass:
                    vote += x
                else:
                    vote += _F32(x > _ZERO) - _F32(x < _ZERO)
            gamma = _TWO * _F32(vote >= _ZERO) - _ONE  # +1 on a tie
            den = _ZERO
            for i in range(m):
                x = d[i, q]
                agree = _F32(ws[i] * x * gamma > _ZERO)  # zero deltas never agree
                acc += w[i] * x * agree
                den += wd[i] * agree
            if norm:
                acc /= den + _F32(den == _ZERO)
        _store(os, q, _load(bs, q) + scale * acc)
    return conflicts


@njit(nogil=True, cache=True, error_model="numpy")
def merge_pass(
    b, t, out, lo, hi, j0, keys, keep_thr, dare, trim, thr, cut, factor, w, mode, mass, norm, total, scale,
    kept, conflicts, check,
):  # fmt: skip
    """Write the merged entries [lo, hi) to ``out``; count kept deltas per model and sign conflicts.

    Per entry: δ_i = t_i − b; DARE: δ_i = 0 unless draw < keep_thr; trim: keep iff bits(|δ_i|) > thr[i], or
    equal and j0 + j < cut[i] (ties kept in flat order); δ_i ×= factor[i].
    mode 0 (task arithmetic): θ = b + scale · Σ w_i δ_i (÷ total when norm).
    mode 1/2/3 (TIES paper/mergekit/peft): elect γ on δ_i (1, 3) or w_i δ_i (2) by mass (Σ) or count (Σ sgn),
    γ = +1 on a tie; A = {i : sgn = γ}; θ = b + scale · Σ_A w_i δ_i (÷ Σ_A w_i, or ÷ |A| in mode 3, when norm).
    """
    m = len(t)
    d = np.empty((m, _BLOCK), dtype=np.float32)
    draws = np.empty(_BLOCK, dtype=np.uint32)
    ws = np.empty(m, dtype=np.float32)  # election weights: mergekit elects on the weighted deltas
    wd = np.empty(m, dtype=np.float32)  # denominator weights: peft divides by the number of agreeing models
    for i in range(m):
        ws[i] = w[i] if mode == 2 else _ONE
        wd[i] = _ONE if mode == 3 else w[i]
    for s in range(lo, hi, _BLOCK):
        e = min(hi, s + _BLOCK)
        n = e - s
        for i in range(m):
            _deltas(b, t[i], s, e, j0, keys[i], keep_thr, dare, trim, thr[i], cut[i], factor[i], d[i], draws)
            di = d[i]
            if check and _count_bad(di[:n]) and _n_bad(b, t, s, e):
                return _first_bad(b, t, s, e)
            c = 0
            for q in range(n):
                c += di[q] != _ZERO
            kept[i] += c
        bs = b[s:e]
        os = out[s:e]
        if mode == 0 and norm:
            c = _combine(bs, os, d, n, w, ws, wd, 0, True, True, total, scale)
        elif mode == 0:
            c = _combine(bs, os, d, n, w, ws, wd, 0, True, False, total, scale)
        elif mass and norm:
            c = _combine(bs, os, d, n, w, ws, wd, 1, True, True, total, scale)
        elif mass:
            c = _combine(bs, os, d, n, w, ws, wd, 1, True, False, total, scale)
        elif norm:
            c = _combine(bs, os, d, n, w, ws, wd, 1, False, True, total, scale)
        else:
            c = _combine(bs, os, d, n, w, ws, wd, 1, False, False, total, scale)
        conflicts[0] += c
    return OK, -1


@njit(nogil=True, cache=True)
def select_candidates(parts_bits, parts_pos, counts, rank, want_cut):
    """The threshold among the candidates of one model: (bit pattern of the rank-th largest, flat index
    below which entries with that pattern are kept, or -1 when every one is).

    parts_bits[r][:counts[r]] are range r's candidate patterns, parts_pos[r] their flat indexes (ascending
    within each range); want_cut=False skips the tie cut. A radix select on the high, then the low 16 bits finds the value in two
    counting passes; the kept ties are the first ones in flat order."""
    hist = np.zeros(1 << 16, dtype=np.int64)
    hi = 0  # the scans start at the largest bin in use, not at the top of the range
    for r in range(len(counts)):
        for q in range(counts[r]):
            x = np.int64(parts_bits[r][q] >> _U32(16))
            hist[x] += 1
            hi = max(hi, x)
    above = 0
    while above + hist[hi] < rank:
        above += hist[hi]
        hi -= 1
    hist[:] = 0
    lo = 0
    for r in range(len(counts)):
        for q in range(counts[r]):
            x = parts_bits[r][q]
            if (x >> _U32(16)) == hi:
                y = np.int64(x & _U32(0xFFFF))
                hist[y] += 1
                lo = max(lo, y)
    while above + hist[lo] < rank:
        above += hist[lo]
        lo -= 1
    thr = _U32((hi << 16) | lo)
    keep_ties = rank - above
    if keep_ties == hist[lo] or not want_cut:
        return thr, -1
    # each range's positions ascend: merge the ranges' ties in flat order up to the keep_ties-th
    ptr = np.zeros(len(counts), dtype=np.int64)
    for _ in range(keep_ties):
        best = -1
        for r in range(len(counts)):
            while ptr[r] < counts[r] and parts_bits[r][ptr[r]] != thr:
                ptr[r] += 1
            if ptr[r] < counts[r] and (best < 0 or parts_pos[r][ptr[r]] < parts_pos[best][ptr[best]]):
                best = r
        pos = parts_pos[best][ptr[best]]
        ptr[best] += 1
    return thr, pos + 1


@njit(nogil=True, cache=True)
def kth_largest(bits, rank):
    """The rank-th largest (1-based) of a uint32 array, by the same two counting passes."""
    one = np.zeros(1, dtype=np.int64)
    one[0] = bits.shape[0]
    return select_candidates((bits,), (np.empty(0, dtype=np.int64),), one, rank, False)[0]
