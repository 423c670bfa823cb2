"""Fused per-entry merge kernels: bindings of the C functions in ``_ckernels.c``.

Each kernel makes one pass over entries [lo, hi) of a chunk: it loads the base b [C] and the M fine-tunes
t (a tuple of M arrays [C]; bf16 bit patterns as uint16, or float32), forms δ_i = t_i − b in float32,
applies the DARE mask and the TIES trim, and either collects the trim threshold's statistics or writes the
merged entry. The C code works block by block (512 entries, every model's deltas in L1), one vectorised
loop per step; ctypes releases the GIL around each call, so threads split a chunk between cores.

Why C and not a JIT: the kernels are compiled when the package is installed, so a merge process starts
in milliseconds; numba spent 0.7–0.9 s of every process initialising and loading its cached kernels, more
than twice what reading three checkpoints and writing one takes.

DARE draws come from a counter-based generator: entry j of the stream (k_lo, k_hi) is kept iff
h((j_lo + k_lo) ⊕ (k_hi + j_hi)) < keep_threshold, with h Wellons' ``lowbias32`` 32-bit mixer (a bijection
with near-ideal avalanche), j_lo/j_hi the low/high 32 bits of the flat index and keep_threshold =
round(keep_prob · 2³²). A draw depends only on the key and j, so any chunking or threading gives the same
mask; two 32-bit multiplies keep it at a few instructions per entry.

Error returns: the kernels that check their inputs return ``(who, j)`` for the first non-finite input entry
(``who`` = −1 for the base, i for model i; j local to the chunk) when ``check`` is set, else ``(OK, -1)``.
"""

from __future__ import annotations

import ctypes
from importlib.util import find_spec
from pathlib import Path

import numpy as np

OK = -2
_NO_MEMORY = -3
_KIND = {np.dtype(np.uint16): 0, np.dtype(np.float32): 1}  # bf16 bit patterns, float32

_P, _I, _I64, _U64, _U32, _F = (
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.c_int64,
    ctypes.c_uint64,
    ctypes.c_uint32,
    ctypes.c_float,
)
_SIGNATURES = {  # name: (result, arguments), as declared in _ckernels.c
    "keep_mask": (None, [_U64, _U32, _I64, _I64, _P]),
    "hist_pass": (_I, [_P, _P, _I, _I, _I64, _I64, _I64, _P, _U32, _I, _P, _P]),
    "bracket_pass": (
        _I,
        [_P, _P, _I, _I, _I64, _I64, _I64, _P, _U32, _I, _P, _P, _P, _P, _P, _I64, _P, _I, _P],
    ),
    "sample_bits": (_I, [_P, _P, _I, _I, _P, _P, _I64, _I64, _P, _U32, _I, _P, _I64]),
    "count_ties": (_I, [_P, _P, _I, _I, _I64, _I64, _I64, _P, _U32, _I, _P, _P, _P]),
    "nth_tie": (_I64, [_P, _P, _I, _I, _I, _I64, _I64, _I64, _U64, _U32, _I, _U32, _I64]),
    "l1_pass": (_I, [_P, _P, _I, _I, _I64, _I64, _I64, _P, _U32, _P]),
    "merge_pass": (
        _I,
        [
            _P,
            _P,
            _I,
            _I,
            _P,
            _I64,
            _I64,
            _I64,
            _P,
            _U32,
            _I,
            _I,
            _P,
            _P,
            _P,
            _P,
            _I,
            _I,
            _I,
            _F,
            _F,
            _P,
            _P,
            _I,
            _P,
        ],
    ),
    "select_candidates": (_I, [_P, _P, _P, _I64, _I64, _I, _P, _P]),
}


def _load_library(module: str = "tbi_merging._ckernels", source: Path | None = None) -> ctypes.CDLL:
    """The built kernels, refusing a missing build and a build older than its C source (an editable
    install does not rebuild by itself)."""
    spec = find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(
            f"tbi_merging's C kernels ({module}) are not built: install the package with pip (a C compiler "
            "is needed to build it from source), e.g. `pip install -e packages/merging`"
        )
    source = source or Path(__file__).with_name("_ckernels.c")
    if source.is_file() and source.stat().st_mtime > Path(spec.origin).stat().st_mtime:
        raise ImportError(
            f"{spec.origin} is older than {source.name}: rebuild the kernels with "
            "`pip install -e packages/merging` (or scripts/setup.sh)"
        )
    lib = ctypes.CDLL(spec.origin)
    for name, (result, arguments) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = result, arguments
    return lib


_LIB = _load_library()


def _ptr(a: np.ndarray, dtype) -> int:
    """Address of a C-contiguous array of ``dtype`` (anything else would be read as the wrong memory)."""
    if a.dtype != dtype or not a.flags.c_contiguous:
        raise TypeError(
            f"kernel argument must be a C-contiguous {np.dtype(dtype)} array, got {a.dtype} {a.shape}"
        )
    return a.ctypes.data


def _sources(b: np.ndarray, t: tuple, hi: int) -> tuple[int, ctypes.Array, int, int]:
    """(base address, the models' addresses, M, kind) after checking every source holds [0, hi)."""
    kind = _KIND.get(b.dtype)
    if kind is None:
        raise TypeError(f"kernel inputs must be uint16 (bf16 bits) or float32, got {b.dtype}")
    for a in (b, *t):
        if a.shape[0] < hi:
            raise ValueError(f"kernel input of {a.shape[0]} entries is shorter than the range end {hi}")
    addresses = (ctypes.c_void_p * max(1, len(t)))(*(_ptr(a, b.dtype) for a in t))
    return _ptr(b, b.dtype), addresses, len(t), kind


def _ok(status: int) -> None:
    if status == _NO_MEMORY:
        raise MemoryError("the merge kernels could not allocate their block buffers")


def keep_mask(key, keep_thr, start, out: np.ndarray) -> None:
    """out[j] = draw_{start + j} < keep_thr: the DARE keep mask of entries [start, start + len(out))."""
    _LIB.keep_mask(int(key), int(keep_thr), int(start), out.shape[0], _ptr(out, np.bool_))


def hist_pass(b, t, lo, hi, j0, keys, keep_thr, dare, hibin, hist) -> None:
    """Magnitude histograms of the DARE-masked deltas, per model.

    hibin[i] < 0: hist[i, bits >> 16] += 1 for every entry (high halves of the float32 bit pattern).
    hibin[i] >= 0: hist[i, bits & 0xFFFF] += 1 for the entries whose high half equals hibin[i].
    """
    bp, tp, m, kind = _sources(b, t, hi)
    _ok(
        _LIB.hist_pass(
            bp, tp, m, kind, lo, hi, j0, _ptr(keys, np.uint64), int(keep_thr), dare,
            _ptr(hibin, np.int64), _ptr(hist, np.int64),
        )
    )  # fmt: skip


def bracket_pass(
    b, t, lo, hi, j0, keys, keep_thr, dare, lo_bits, hi_bits, above, cand_bits, cand_pos, n_cand, check
) -> tuple[int, int]:
    """Per model: count the entries whose masked |δ_i| bit pattern exceeds hi_bits[i] (``above``) and
    append those within [lo_bits[i], hi_bits[i]] to cand_bits[i] / cand_pos[i] (flat index), up to
    their capacity; n_cand[i] counts every candidate, so n_cand > capacity means the buffers overflowed."""
    bp, tp, m, kind = _sources(b, t, hi)
    bad = ctypes.c_int64(-1)
    who = _LIB.bracket_pass(
        bp, tp, m, kind, lo, hi, j0, _ptr(keys, np.uint64), int(keep_thr), dare, _ptr(lo_bits, np.uint32),
        _ptr(hi_bits, np.uint32), _ptr(above, np.int64), _ptr(cand_bits, np.uint32),
        _ptr(cand_pos, np.int64), cand_bits.shape[1], _ptr(n_cand, np.int64), check, ctypes.byref(bad),
    )  # fmt: skip
    _ok(who)
    return who, bad.value


def sample_bits(b, t, at, flat, length, keys, keep_thr, dare, out) -> None:
    """The threshold's sample: out[i, r·length + q] = bit pattern of the masked |δ_i| of array entry
    at[r] + q, whose flat index is flat[r] + q (one call for every block: a call costs microseconds)."""
    bp, tp, m, kind = _sources(b, t, int(at.max()) + length if len(at) else 0)
    if len(flat) != len(at) or out.shape[1] < len(at) * length:
        raise ValueError(
            f"sample of {len(at)} blocks does not fit {len(flat)} offsets / {out.shape[1]} columns"
        )
    _ok(
        _LIB.sample_bits(
            bp, tp, m, kind, _ptr(at, np.int64), _ptr(flat, np.int64), len(at), length,
            _ptr(keys, np.uint64), int(keep_thr), dare, _ptr(out, np.uint32), out.shape[1],
        )
    )  # fmt: skip


def count_ties(b, t, lo, hi, j0, keys, keep_thr, dare, thr, active, counts) -> None:
    """counts[i] += number of entries whose masked |δ_i| has the threshold's bit pattern thr[i] (active models)."""
    bp, tp, m, kind = _sources(b, t, hi)
    _ok(
        _LIB.count_ties(
            bp, tp, m, kind, lo, hi, j0, _ptr(keys, np.uint64), int(keep_thr), dare, _ptr(thr, np.uint32),
            _ptr(active, np.bool_), _ptr(counts, np.int64),
        )
    )  # fmt: skip


def nth_tie(b, t, i, lo, hi, j0, key, keep_thr, dare, thr, nth) -> int:
    """Local index of the nth (1-based) entry in [lo, hi) whose masked |δ_i| has bit pattern thr, or hi."""
    bp, tp, m, kind = _sources(b, t, hi)
    j = _LIB.nth_tie(bp, tp, m, kind, int(i), lo, hi, j0, int(key), int(keep_thr), dare, int(thr), int(nth))
    _ok(_NO_MEMORY if j < 0 else OK)
    return j


def l1_pass(b, t, lo, hi, j0, keys, keep_thr, sums) -> None:
    """sums[i, 0] += Σ|δ_i|, sums[i, 1] += Σ|m_i ⊙ δ_i| (mergekit's DARE rescale), in float64."""
    bp, tp, m, kind = _sources(b, t, hi)
    _ok(
        _LIB.l1_pass(
            bp, tp, m, kind, lo, hi, j0, _ptr(keys, np.uint64), int(keep_thr), _ptr(sums, np.float64)
        )
    )


def merge_pass(
    b, t, out, lo, hi, j0, keys, keep_thr, dare, trim, thr, cut, factor, w, mode, mass, norm, total, scale,
    kept, conflicts, check,
) -> tuple[int, int]:  # fmt: skip
    """Write the merged entries [lo, hi) to ``out`` (b's dtype); count kept deltas per model and sign conflicts.

    Per entry: δ_i = t_i − b; DARE: δ_i = 0 unless draw < keep_thr; trim: keep iff bits(|δ_i|) > thr[i], or
    equal and j0 + j < cut[i] (ties kept in flat order); δ_i ×= factor[i].
    mode 0 (task arithmetic): θ = b + scale · Σ w_i δ_i (÷ total when norm).
    mode 1/2/3 (TIES paper/mergekit/peft): elect γ on δ_i (1, 3) or w_i δ_i (2) by mass (Σ) or count (Σ sgn),
    γ = +1 on a tie; A = {i : sgn = γ}; θ = b + scale · Σ_A w_i δ_i (÷ Σ_A w_i, or ÷ |A| in mode 3, when norm).
    """
    bp, tp, m, kind = _sources(b, t, hi)
    if out.shape[0] < hi:
        raise ValueError(f"kernel output of {out.shape[0]} entries is shorter than the range end {hi}")
    bad = ctypes.c_int64(-1)
    who = _LIB.merge_pass(
        bp, tp, m, kind, _ptr(out, b.dtype), lo, hi, j0, _ptr(keys, np.uint64), int(keep_thr), dare, trim,
        _ptr(thr, np.uint32), _ptr(cut, np.int64), _ptr(factor, np.float32), _ptr(w, np.float32), mode, mass,
        norm, float(total), float(scale), _ptr(kept, np.int64), _ptr(conflicts, np.int64), check,
        ctypes.byref(bad),
    )  # fmt: skip
    _ok(who)
    return who, bad.value


def select_candidates(parts_bits, parts_pos, counts, rank, want_cut) -> tuple[int, int]:
    """The threshold among the candidates of one model: (bit pattern of the rank-th largest, flat index
    below which entries with that pattern are kept, or -1 when every one is).

    parts_bits[r][:counts[r]] are range r's candidate patterns, parts_pos[r] their flat indexes (ascending
    within each range); want_cut=False skips the tie cut. A radix select (11, 11, then 10 bits, one counting
    pass each) finds the value; the kept ties are the first ones in flat order."""
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    if not 1 <= rank <= int(counts.sum()):
        raise ValueError(f"rank {rank} is outside 1..{int(counts.sum())}")
    for r, c in enumerate(counts.tolist()):
        if parts_bits[r].shape[0] < c or (want_cut and parts_pos[r].shape[0] < c) or c >= 2**32:
            raise ValueError(f"candidate range {r} holds fewer than its count {c}, or 2³² or more")
    bits = (ctypes.c_void_p * len(counts))(*(_ptr(a, np.uint32) for a in parts_bits))
    pos = (ctypes.c_void_p * len(counts))(*(_ptr(a, np.int64) if want_cut else 0 for a in parts_pos))
    thr, cut = ctypes.c_uint32(0), ctypes.c_int64(-1)
    _ok(
        _LIB.select_candidates(
            bits, pos, _ptr(counts, np.int64), len(counts), int(rank), want_cut, ctypes.byref(thr),
            ctypes.byref(cut),
        )
    )  # fmt: skip
    return thr.value, cut.value


def kth_largest(bits: np.ndarray, rank: int) -> int:
    """The rank-th largest (1-based) of a uint32 array, by the same counting passes."""
    return select_candidates((bits,), (None,), np.array([bits.shape[0]]), rank, False)[0]
