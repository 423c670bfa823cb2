"""The pure per-tensor merge core: linear, task arithmetic, TIES, DARE+linear, DARE+TIES.

Notation for one tensor: base θ₀, fine-tunes θ₁…θ_M with weights w₁…w_M, task vectors δ_i = θ_i − θ₀.

* ``linear``:          θ = Σ w_i θ_i  (÷ Σ w_i when normalising)
* ``task_arithmetic``: θ = θ₀ + λ Σ w_i δ_i  (÷ Σ w_i when normalising)            Ilharco et al. 2023
* ``ties``:            δ̂_i = trim_k(δ_i) (top ``density`` fraction by |δ_i|); elected sign
                       γ = sgn(Σ_i δ̂_i) (``mass``) or sgn(Σ_i sgn δ̂_i) (``count``), γ=+1 on a tie;
                       A = {i : sgn δ̂_i = γ}; θ = θ₀ + λ Σ_{i∈A} w_i δ̂_i / Σ_{i∈A} w_i   Yadav et al. 2023
* ``dare_linear``:     δ̃_i = m_i ⊙ δ_i / (1 − p), m_i ~ Bernoulli(1 − p); then task arithmetic  Yu et al. 2024
* ``dare_ties``:       δ̃_i as in DARE, then TIES (trim at ``density``, default 1 = no trim) on δ̃_i

``compat`` switches the details on which the published tools differ (see the README table):
``paper`` (the formulas above), ``mergekit`` (sign election on w_i δ̂_i, DARE rescale matching the L1
norm of the task vector), ``peft`` (disjoint mean divided by the number of agreeing models).

Every entry is computed in float32 from the stored values (bf16/fp16/fp32; a difference of two bf16 values
is exact in float32), in one fused pass per chunk of ``CHUNK`` entries (:mod:`tbi_merging._kernels`), and the
result is rounded once to the base dtype. The DARE keep decision of entry j of tensor T for model M is a
32-bit counter-based draw of (hash(seed, T, M), j) below round((1 − p)·2³²): it depends on nothing else, so a
merge is reproducible whatever the order, chunking or thread count.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from tbi_merging import _kernels
from tbi_merging._select import BINS, find_bin
from tbi_merging.checkpoint import dtype_code
from tbi_merging.errors import MergeError

if TYPE_CHECKING:
    import torch

METHODS = ("linear", "task_arithmetic", "ties", "dare_linear", "dare_ties")
COMPAT_MODES = ("paper", "mergekit", "peft")
SIGN_METHODS = ("mass", "count")

#: Entries per read-and-merge chunk (memory: (models + 2) chunk buffers of 2-4 bytes per entry).
CHUNK = 1 << 22
#: Smallest chunk that is split between threads.
_MIN_SPLIT = 1 << 16
_TIES_MODE = {"paper": 1, "mergekit": 2, "peft": 3}
#: The TIES threshold's sample: this many evenly spaced blocks of this many entries.
_SAMPLE_BLOCKS = 64
_SAMPLE_LEN = 2048

_NORMALIZE_DEFAULT = {
    "paper": {
        "linear": True,
        "task_arithmetic": False,
        "dare_linear": False,
        "ties": True,
        "dare_ties": True,
    },
    "mergekit": {
        "linear": True,
        "task_arithmetic": False,
        "dare_linear": False,
        "ties": True,
        "dare_ties": False,
    },
    "peft": {
        "linear": False,
        "task_arithmetic": False,
        "dare_linear": False,
        "ties": True,
        "dare_ties": True,
    },
}
_DENSITY_DEFAULT = {"ties": 0.2, "dare_ties": 1.0}
_MERGEKIT_L1_EPS = 1e-7


@dataclass
class TensorStats:
    """What happened to one tensor.

    kept_fraction: per model, fraction of the tensor's entries whose delta survived DARE and trimming
        (non-zero after sparsification); 1.0 for methods without sparsification when the delta is dense.
    sign_conflict_fraction: fraction of entries where the surviving deltas of the models have both signs
        (None for ``linear``, which has no deltas).
    """

    numel: int
    kept_fraction: dict[str, float] = field(default_factory=dict)
    sign_conflict_fraction: float | None = None


def resolve_normalize(method: str, compat: str, normalize: bool | None) -> bool:
    """The ``normalize`` actually used: the explicit value, else the method's default in ``compat`` mode."""
    return _NORMALIZE_DEFAULT[compat][method] if normalize is None else normalize


def resolve_density(method: str, density: float | None) -> float:
    """TIES kept fraction actually used: explicit, else 0.2 for ``ties`` (TIES paper), 1.0 otherwise."""
    return _DENSITY_DEFAULT.get(method, 1.0) if density is None else density


def dare_seed(seed: int, tensor_name: str, model_name: str) -> int:
    """64-bit key of one DARE stream: a hash of (seed, tensor name, model name)."""
    key = f"{seed}\x00{tensor_name}\x00{model_name}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def dare_keep_mask(
    numel: int, keep_prob: float, *, seed: int, tensor_name: str, model_name: str
) -> torch.Tensor:
    """The boolean DARE keep mask (flat, ``numel`` entries) that :func:`merge_tensors` uses.

    Entry j is kept iff h((j_lo + k_lo) ⊕ (k_hi + j_hi)) < round(keep_prob · 2³²), with h the 32-bit
    ``lowbias32`` mixer, j_lo/j_hi the low/high 32 bits of j and (k_hi, k_lo) the halves of the 64-bit key
    :func:`dare_seed` (seed, tensor_name, model_name).
    """
    out = np.empty(numel, dtype=np.bool_)
    key = np.uint64(dare_seed(seed, tensor_name, model_name))
    _kernels.keep_mask(key, keep_threshold(keep_prob), 0, out)
    import torch

    return torch.from_numpy(out)


def keep_threshold(keep_prob: float) -> np.uint32:
    """The 32-bit draw bound of a DARE keep probability: P(draw < bound) = bound / 2³² ≈ keep_prob."""
    return np.uint32(min(0xFFFFFFFF, round(keep_prob * 2**32)))


def _named(finetuned: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> tuple[list[str], list]:
    if isinstance(finetuned, Mapping):
        return [str(k) for k in finetuned], list(finetuned.values())
    return [str(i) for i in range(len(finetuned))], list(finetuned)


def _check_inputs(base, names, tensors, weights, method, compat, sign, density, drop_rate, tensor_name):
    where = f"tensor {tensor_name!r}: " if tensor_name else ""
    if method not in METHODS:
        raise MergeError(f"unknown merge method {method!r}; choose one of {', '.join(METHODS)}")
    if compat not in COMPAT_MODES:
        raise MergeError(f"unknown compat mode {compat!r}; choose one of {', '.join(COMPAT_MODES)}")
    if sign not in SIGN_METHODS:
        raise MergeError(f"unknown sign election {sign!r}; choose 'mass' or 'count'")
    if not tensors:
        raise MergeError(f"{where}no fine-tuned tensors given; pass at least one model")
    if len(weights) != len(tensors):
        raise MergeError(
            f"{where}{len(weights)} weights for {len(tensors)} models; give one weight per model"
        )
    if not 0.0 <= density <= 1.0:
        raise MergeError(f"density must be in [0, 1] (the kept fraction), got {density}")
    if not 0.0 <= drop_rate < 1.0:
        raise MergeError(f"DARE drop rate must be in [0, 1), got {drop_rate}")
    if not base.is_floating_point():
        raise MergeError(f"{where}base tensor has dtype {base.dtype}; only floating-point tensors merge")
    for n, t in zip(names, tensors):
        if t.shape != base.shape:
            raise MergeError(
                f"{where}shape {tuple(t.shape)} in model {n!r} differs from {tuple(base.shape)} in the base; "
                "models must share the architecture (see the unshared-tensor options)"
            )
        if not t.is_floating_point():
            raise MergeError(f"{where}model {n!r} has dtype {t.dtype}; only floating-point tensors merge")


def _check_finite(chunk: torch.Tensor, tensor_name: str, model: str, start: int) -> None:
    import torch

    # A sum is NaN/Inf when any entry is (one cheap reduction); only then look closer, since a sum of
    # huge finite values can also overflow.
    if math.isfinite(float(chunk.sum())) or bool(torch.isfinite(chunk).all()):
        return
    bad = int(torch.nonzero(~torch.isfinite(chunk))[0]) + start
    raise MergeError(
        f"tensor {tensor_name!r} of {model} has a NaN/Inf value (flat index {bad}); "
        "fix or re-export that checkpoint, or pass check_finite=False / --allow-nonfinite to merge anyway"
    )


def merge_tensors(
    base: torch.Tensor,
    finetuned: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
    method: str = "task_arithmetic",
    weights: Sequence[float] | Mapping[str, float] | None = None,
    *,
    density: float | None = None,
    drop_rate: float = 0.9,
    rescale: bool = True,
    sign: str = "mass",
    normalize: bool | None = None,
    scale: float = 1.0,
    compat: str = "paper",
    seed: int = 0,
    tensor_name: str = "",
    check_finite: bool = True,
    return_stats: bool = False,
    sink: Callable[[torch.Tensor], None] | None = None,
    threads: int = 1,
) -> torch.Tensor | tuple[torch.Tensor, TensorStats] | TensorStats:
    """Merge one tensor of several fine-tunes of ``base`` (formulas in the module docstring).

    Args:
        base: θ₀, any shape, floating dtype; the result has its dtype and shape.
        finetuned: θ_i, a ``{model name: tensor}`` mapping (names seed DARE) or a list (named "0", "1", …).
        method: one of ``linear``, ``task_arithmetic``, ``ties``, ``dare_linear``, ``dare_ties``.
        weights: w_i per model (list in model order or mapping by name); default 1.0 each.
        density: TIES kept fraction (top-|δ| entries per model); default 0.2 for ``ties``, 1.0 for ``dare_ties``.
        drop_rate: DARE drop probability p (DARE methods only).
        rescale: DARE rescale of the kept entries (by 1/(1−p); L1-norm matching in ``mergekit`` mode).
        sign: TIES sign election, ``mass`` (sign of the summed deltas) or ``count`` (majority of signs).
        normalize: divide by the weights of the contributing models; None = the method's default in ``compat``.
        scale: λ, a global factor on the merged task vector (not used by ``linear``).
        compat: ``paper`` (default), ``mergekit`` or ``peft`` semantics.
        seed, tensor_name: DARE generator key, together with the model name (see :func:`dare_keep_mask`).
        check_finite: raise :class:`MergeError` on a NaN/Inf in any input.
        return_stats: also return :class:`TensorStats`.
        sink: if given, each merged chunk (flat, in order; a numpy array of the base dtype's elements, bf16
            as uint16 bit patterns, or a torch tensor for the ``linear`` method and types numpy lacks) is
            passed to it instead of being assembled, and only the :class:`TensorStats` are returned (the
            streaming writer uses this). The chunk may be a reused buffer: it is valid only during the call.
        threads: threads splitting each chunk (the kernels release the GIL); the result does not depend on it.

    Raises:
        MergeError: unknown method/mode, shape mismatch, bad density/drop rate/weights, non-finite input.
    """
    names, tensors = _named(finetuned)
    if weights is None:
        w = [1.0] * len(tensors)
    elif isinstance(weights, Mapping):
        missing = [n for n in names if n not in weights]
        if missing:
            raise MergeError(f"no weight for model(s) {missing}; give a weight for every model")
        w = [float(weights[n]) for n in names]
    else:
        w = [float(x) for x in weights]
    density = resolve_density(method, density)
    dare = method.startswith("dare_")
    p = drop_rate if dare else 0.0
    _check_inputs(base, names, tensors, w, method, compat, sign, density, p, tensor_name)
    norm = resolve_normalize(method, compat, normalize)
    trim = density if method in ("ties", "dare_ties") else 1.0

    n = base.numel()
    base_flat = base.detach().reshape(-1)
    tuned_flat = [t.detach().reshape(-1) for t in tensors]
    out = None
    if sink is None:  # the caller has torch tensors
        import torch

        out = torch.empty(n, dtype=base.dtype)
    emit = sink if sink is not None else _filler(out)
    stats = TensorStats(numel=n)

    if method == "linear":  # whole weights, not deltas: torch ops on each chunk
        import torch

        total = sum(w) if norm and abs(sum(w)) >= 1e-8 else 1.0
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            acc = torch.zeros(stop - start, dtype=torch.float32)
            for name, t, wi in zip(names, tuned_flat, w):
                c = t[start:stop].float()
                if check_finite:
                    _check_finite(c, tensor_name, f"model {name!r}", start)
                acc += wi * c
            emit((acc / total).to(base.dtype))
        stats.kept_fraction = dict.fromkeys(names, 1.0)
        return _result(out, base, stats, return_stats, sink)

    with _Engine(base_flat, names, tuned_flat, n, threads) as eng:
        eng.merge(
            emit,
            stats,
            keys=[dare_seed(seed, tensor_name, nm) for nm in names],
            keep_prob=1.0 - p,
            trim=trim,
            rescale=rescale and dare and p > 0.0,
            weights=w,
            mode=0 if method in ("task_arithmetic", "dare_linear") else _TIES_MODE[compat],
            mass=sign == "mass",
            norm=norm,
            scale=scale,
            compat=compat,
            check=check_finite,
            where=tensor_name,
        )
    return _result(out, base, stats, return_stats, sink)


def _filler(out: torch.Tensor) -> Callable[[np.ndarray | torch.Tensor], None]:
    """The sink that assembles the merged chunks (numpy arrays of the base dtype's elements, bf16 as uint16
    bit patterns, or torch tensors) into ``out``."""
    import torch

    flat = out.view(-1)
    pos = [0]

    def fill(chunk) -> None:
        if isinstance(chunk, np.ndarray):
            chunk = torch.from_numpy(chunk)
            chunk = chunk.view(torch.bfloat16) if out.dtype == torch.bfloat16 else chunk
        flat[pos[0] : pos[0] + chunk.numel()] = chunk
        pos[0] += chunk.numel()

    return fill


def _result(out, base, stats, return_stats, sink):
    if sink is not None:
        return stats
    result = out.reshape(base.shape)
    return (result, stats) if return_stats else result


#: dtype codes the kernels compute on, and the numpy element type they see
_KINDS = {"BF16": np.dtype(np.uint16), "F32": np.dtype(np.float32)}
_NUMPY_FLOAT = {"F16": np.float16, "F32": np.float32, "F64": np.float64}


def _torch_tensor(src) -> bool:
    torch = sys.modules.get("torch")  # a source can only be a torch tensor if torch is loaded
    return torch is not None and isinstance(src, torch.Tensor)


def _fill(src, start: int, dst: np.ndarray, kind: str) -> None:
    """dst = flat entries [start, start + len(dst)) of a torch tensor or LazyTensor, converted to the
    kernels' element type of ``kind`` (bf16 bit patterns or float32)."""
    code = dtype_code(src)
    c = dst.shape[0]
    if not _torch_tensor(src):  # a LazyTensor: read, then convert in numpy where it can
        if code == kind:
            src.read_into(start, dst)
            return
        if code == "BF16":  # to float32: the bit patterns are the high halves
            raw = np.empty(c, dtype=np.uint16)
            src.read_into(start, raw)
            dst[:] = (raw.astype(np.uint32) << np.uint32(16)).view(np.float32)
            return
        if code in _NUMPY_FLOAT:
            raw = np.empty(c, dtype=_NUMPY_FLOAT[code])
            src.read_into(start, raw)
            dst[:] = raw
            return
        src = src[start : start + c]  # other float types (fp8): torch converts
        start = 0
    import torch

    target = torch.from_numpy(dst)
    target = target.view(torch.bfloat16) if kind == "BF16" else target
    target.copy_(src.reshape(-1)[start : start + c])


def _to_code(chunk: np.ndarray, kind: str, code: str):
    """A merged chunk (kernel element type of ``kind``) in the output dtype ``code``: a numpy array of its
    elements (bf16 as bit patterns), or a torch tensor for types numpy lacks."""
    if code == kind:
        return chunk
    if code in _NUMPY_FLOAT:
        return chunk.astype(_NUMPY_FLOAT[code])
    if code == "BF16":  # float32 -> bf16, round to nearest even as torch; NaN stays a quiet NaN
        u = chunk.view(np.uint32)
        bits = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(
            np.uint16
        )
        bits[np.isnan(chunk)] = 0x7FC0
        return bits
    import torch

    from tbi_merging.checkpoint import torch_dtype

    return torch.from_numpy(chunk).to(torch_dtype(code))


def _readonly(a: np.ndarray) -> np.ndarray:
    """A read-only view: the kernels take every input with one array type, and read-only is what a
    memory map gives."""
    v = a.view()
    v.flags.writeable = False
    return v


def _numpy_flat(src, kind: str) -> np.ndarray | None:
    """The whole in-memory torch tensor as a flat read-only numpy view of the kernels' element type (bf16
    as uint16 bit patterns), or None if it must be read or converted."""
    if not _torch_tensor(src) or dtype_code(src) != kind or not src.is_contiguous():
        return None
    import torch

    flat = src.detach().reshape(-1)
    return _readonly(flat.view(torch.uint16).numpy() if kind == "BF16" else flat.numpy())


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    """One pool per thread count for the whole process: starting threads for each of a model's hundreds of
    tensors costs more than merging the small ones."""
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="tbi-merge")
    return _POOLS[threads]


class _Engine:
    """Chunk windows and a thread pool for one tensor; runs the fused kernels of :mod:`_kernels` pass by pass.

    Inputs are bf16 bit patterns (uint16) when the base and every model store bf16, else float32. Each
    chunk of each source is a zero-copy window where possible (an in-memory tensor, or a
    :class:`~tbi_merging.checkpoint.LazyTensor`'s memory map, released after the chunk) and otherwise a
    buffer the chunk is read or converted into. Chunks are taken again on every pass, so memory stays
    at a few chunks per model whatever the tensor size.
    """

    def __init__(self, base, names: list[str], tuned: list, n: int, threads: int) -> None:
        self.sources = [base, *tuned]
        self.names = names
        self.n = n
        self.base_code = dtype_code(base)
        self.kind = "BF16" if all(dtype_code(s) == "BF16" for s in self.sources) else "F32"
        size = max(1, min(n, CHUNK))
        self.whole = [_numpy_flat(s, self.kind) for s in self.sources]
        self.buf = [
            None
            if w is not None or (getattr(s, "view", None) is not None and dtype_code(s) == self.kind)
            else np.empty(size, dtype=_KINDS[self.kind])
            for s, w in zip(self.sources, self.whole)
        ]  # a chunk buffer for each source that can be neither viewed nor mapped
        self.out_np = np.empty(size, dtype=_KINDS[self.kind])
        self.b, self.t = None, ()
        self.threads = max(1, int(threads))
        self.pool = _pool(self.threads) if self.threads > 1 and n >= _MIN_SPLIT else None

    def __enter__(self) -> _Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.b, self.t = None, ()  # drop the windows before the maps close

    def window(self, i: int, start: int, c: int) -> np.ndarray:
        """Entries [start, start + c) of source i (0 = the base) as a read-only array of the kernels' dtype."""
        src = self.sources[i]
        if self.whole[i] is not None:
            return self.whole[i][start : start + c]
        if self.buf[i] is None:
            return src.view(start, c)
        _fill(src, start, self.buf[i][:c], self.kind)
        return _readonly(self.buf[i][:c])

    def chunks(self):
        """Yield (start, count) with self.b, self.t the windows of entries [start, start + count)."""
        for start in range(0, self.n, CHUNK):
            c = min(self.n, start + CHUNK) - start
            windows = [self.window(i, start, c) for i in range(len(self.sources))]
            self.b, self.t = windows[0], tuple(windows[1:])
            yield start, c
            self.b, self.t = None, ()
            del windows
            self.release(start, c)  # the chunk's pages leave this process's resident set

    def ranges(self, c: int) -> list[tuple[int, int]]:
        if self.pool is None or c < _MIN_SPLIT:
            return [(0, c)]
        step = -(-c // self.threads)
        return [(lo, min(c, lo + step)) for lo in range(0, c, step)]

    def run(self, fn, start: int, c: int) -> list:
        """fn(r, lo, hi, start) over the ranges of the chunk at ``start`` (r = range number), on the pool."""
        return self.each(lambda job: fn(job[0], *job[1], start), enumerate(self.ranges(c)))

    def each(self, fn, items) -> list:
        """[fn(x) for x in items], on the pool (this thread takes the first item)."""
        items = list(items)
        if self.pool is None or len(items) < 2:
            return [fn(x) for x in items]
        others = [self.pool.submit(fn, x) for x in items[1:]]
        return [fn(items[0])] + [f.result() for f in others]

    def raise_bad(self, results, start: int, where: str) -> None:
        for who, j in results:
            if who != _kernels.OK:
                model = "the base" if who < 0 else f"model {self.names[who]!r}"
                raise MergeError(
                    f"tensor {where!r} of {model} has a NaN/Inf value (flat index {start + j}); fix or "
                    "re-export that checkpoint, or pass check_finite=False / --allow-nonfinite to merge anyway"
                )

    def thresholds(self, k: int, keys, keep_thr, dare: bool, check: bool, where: str):
        """Per model: the float32 bit pattern of the k-th largest masked |δ_i| and the flat index below which
        entries equal to it are kept (exactly k kept, ties in flat order).

        A sample of the tensor brackets the k-th largest; one pass counts the entries above the bracket and
        collects those inside it with their positions, among which the exact threshold and the tie cut are
        found. If the bracket missed (or held too many entries), :meth:`radix_thresholds` does it exactly.
        """
        m = len(self.names)
        chunks = self.chunks()
        first = next(chunks)  # open before the bracket: a tensor of one chunk gives the sample in place
        lo_bits, hi_bits, cap = self._bracket(k, keys, keep_thr, dare)
        ranges = self.ranges(min(self.n, CHUNK))
        per = cap if len(ranges) == 1 else cap // len(ranges) + cap // 4 + 4096
        above = [np.zeros(m, dtype=np.int64) for _ in ranges]
        n_cand = [np.zeros(m, dtype=np.int64) for _ in ranges]
        cand_bits = [np.empty((m, per), dtype=np.uint32) for _ in ranges]
        cand_pos = [np.empty((m, per), dtype=np.int64) for _ in ranges]

        def collect(r, lo, hi, start):
            return _kernels.bracket_pass(
                self.b, self.t, lo, hi, start, keys, keep_thr, dare, lo_bits, hi_bits, above[r],
                cand_bits[r], cand_pos[r], n_cand[r], check,
            )  # fmt: skip

        for start, c in itertools.chain([first], chunks):
            self.raise_bad(self.run(collect, start, c), start, where)
        counts = [np.array([nc[i] for nc in n_cand], dtype=np.int64) for i in range(m)]
        ranks = [k - sum(int(a[i]) for a in above) for i in range(m)]  # the k-th largest among the candidates
        if any((c > per).any() or not 1 <= r <= c.sum() for c, r in zip(counts, ranks)):
            return self.radix_thresholds(k, keys, keep_thr, dare)
        found = self.each(
            lambda i: _kernels.select_candidates(
                tuple(cb[i] for cb in cand_bits), tuple(cp[i] for cp in cand_pos), counts[i], ranks[i], True
            ),
            range(m),
        )
        thr = np.array([t for t, _ in found], dtype=np.uint32)
        cut = np.array([self.n if c < 0 else c for _, c in found], dtype=np.int64)
        return thr, cut

    def _bracket(self, k: int, keys, keep_thr, dare: bool):
        """Bit-pattern bounds per model that hold the k-th largest masked |δ_i| with near certainty, from
        _SAMPLE_BLOCKS evenly spaced blocks (everything for small tensors), and a candidate capacity.
        Runs with the first chunk open (self.b, self.t)."""
        m, n = len(self.names), self.n
        size = _SAMPLE_BLOCKS * _SAMPLE_LEN
        if n <= size:
            return np.zeros(m, dtype=np.uint32), np.full(m, 0xFFFFFFFF, dtype=np.uint32), n
        starts = np.linspace(0, n - _SAMPLE_LEN, _SAMPLE_BLOCKS).astype(np.int64)
        sample = np.empty((m, size), dtype=np.uint32)
        if n <= CHUNK:  # the open chunk is the whole tensor, about to be read anyway: its blocks in place
            b, t, at = self.b, self.t, starts
        elif all(w is not None for w in self.whole):  # in memory: the blocks in place
            b, t, at = self.whole[0], tuple(self.whole[1:]), starts
        else:  # a few small reads: touching a memory map here would map a large folio (~1 MB) per block
            gathered = np.empty((1 + m, size), dtype=_KINDS[self.kind])
            for r, start in enumerate(starts.tolist()):
                for row, src in zip(gathered, self.sources):
                    _fill(src, start, row[r * _SAMPLE_LEN : (r + 1) * _SAMPLE_LEN], self.kind)
            rows = [_readonly(row) for row in gathered]
            b, t, at = rows[0], tuple(rows[1:]), np.arange(0, size, _SAMPLE_LEN, dtype=np.int64)
        _kernels.sample_bits(b, t, at, starts, _SAMPLE_LEN, keys, keep_thr, dare, sample)
        q = k / n
        # 6 binomial standard deviations of the sample rank, plus slack for blocks not being independent
        margin = 6.0 * (size * q * (1.0 - q)) ** 0.5 + size / 1024
        top = int(q * size - margin)  # descending sample ranks: entries above `top` are surely in the top k
        bottom = int(q * size + margin) + 1
        hi_bits = np.full(m, 0xFFFFFFFF, dtype=np.uint32)
        lo_bits = np.zeros(m, dtype=np.uint32)
        # (bound, model, sample rank) of each bound that exists; the selections run on the pool
        wanted = [(hi_bits, i, top + 1) for i in range(m) if top >= 0]
        wanted += [(lo_bits, i, bottom + 1) for i in range(m) if bottom < size]
        values = self.each(lambda w: _kernels.kth_largest(sample[w[1]], w[2]), wanted)
        for (bound, i, _), value in zip(wanted, values):
            bound[i] = value
        inside = ((sample >= lo_bits[:, None]) & (sample <= hi_bits[:, None])).sum(1).max()  # ties included
        cap = int(1.5 * n * inside / size) + 4096
        return lo_bits.astype(np.uint32), hi_bits.astype(np.uint32), cap

    def release(self, start: int, c: int) -> None:
        """Drop entries [start, start + c) of the memory-mapped sources from the resident set."""
        for src, buf, whole in zip(self.sources, self.buf, self.whole):
            if buf is None and whole is None:
                src.release(start, c)

    def radix_thresholds(self, k: int, keys, keep_thr, dare: bool):
        """:meth:`thresholds` without sampling: two histogram passes (radix select on the high, then the
        low 16 bits of the bit patterns) and, when only some ties are kept, a partial third pass."""
        m = len(self.names)
        hists = [np.zeros((m, BINS), dtype=np.int64) for _ in range(self.threads)]
        hibin = np.full(m, -1, dtype=np.int64)

        def hist(r, lo, hi, start):
            return _kernels.hist_pass(self.b, self.t, lo, hi, start, keys, keep_thr, dare, hibin, hists[r])

        for start, c in self.chunks():
            self.run(hist, start, c)
        total_hi = sum(hists)
        above_hi = np.zeros(m, dtype=np.int64)
        for i in range(m):
            hibin[i], above_hi[i] = find_bin(total_hi[i], k)
        for h in hists:
            h.fill(0)
        for start, c in self.chunks():
            self.run(hist, start, c)
        total_lo = sum(hists)
        thr = np.zeros(m, dtype=np.uint32)
        cut = np.full(m, self.n, dtype=np.int64)  # keep every tie
        need = np.zeros(m, dtype=np.int64)  # ties to keep when not all are
        for i in range(m):
            lo_bin, above_lo = find_bin(total_lo[i], k - int(above_hi[i]))
            thr[i] = (int(hibin[i]) << 16) | lo_bin
            keep_ties = k - int(above_hi[i]) - above_lo
            if keep_ties < total_lo[i, lo_bin]:
                need[i] = keep_ties
        if need.any():
            self._cut_ties(thr, need, cut, keys, keep_thr, dare)
        return thr, cut

    def _cut_ties(self, thr, need, cut, keys, keep_thr, dare) -> None:
        """cut[i] = 1 + flat index of the need[i]-th tie of model i, for the models with need[i] > 0."""
        m = len(self.names)
        seen = np.zeros(m, dtype=np.int64)
        active = need > 0
        for start, c in self.chunks():
            ranges = self.ranges(c)
            counts = [np.zeros(m, dtype=np.int64) for _ in ranges]

            def count(r, lo, hi, start, counts=counts):
                _kernels.count_ties(
                    self.b, self.t, lo, hi, start, keys, keep_thr, dare, thr, active, counts[r]
                )

            self.run(count, start, c)
            for r, (lo, hi) in enumerate(ranges):
                for i in np.flatnonzero(active):
                    if seen[i] + counts[r][i] >= need[i]:
                        j = _kernels.nth_tie(
                            self.b,
                            self.t,
                            i,
                            lo,
                            hi,
                            start,
                            keys[i],
                            keep_thr,
                            dare,
                            thr[i],
                            need[i] - seen[i],
                        )
                        cut[i] = start + j + 1
                        active[i] = False
                    seen[i] += counts[r][i]
            if not active.any():
                return

    def l1_factors(self, keys, keep_thr) -> np.ndarray:
        """mergekit's DARE rescale per model: ‖δ_i‖₁ / ‖m_i ⊙ δ_i‖₁ (1 when either is below 1e-7)."""
        sums = [np.zeros((len(self.names), 2)) for _ in range(self.threads)]

        def l1(r, lo, hi, start):
            _kernels.l1_pass(self.b, self.t, lo, hi, start, keys, keep_thr, sums[r])

        for start, c in self.chunks():
            self.run(l1, start, c)
        full, masked = sum(sums).T
        ok = (full >= _MERGEKIT_L1_EPS) & (masked >= _MERGEKIT_L1_EPS)
        return np.where(ok, full / np.where(ok, masked, 1.0), 1.0)

    def merge(self, emit, stats: TensorStats, *, keys, keep_prob, trim, rescale, weights, mode, mass, norm,
              scale, compat, check, where) -> None:  # fmt: skip
        m = len(self.names)
        keys = np.array(keys, dtype=np.uint64)
        dare = keep_prob < 1.0
        keep_thr = keep_threshold(keep_prob)
        thr = np.zeros(m, dtype=np.uint32)
        cut = np.zeros(m, dtype=np.int64)
        if trim < 1.0:
            k = int(trim * self.n)
            if k == 0:
                thr[:] = 0x7F800000  # +inf: nothing finite is kept
            else:
                thr, cut = self.thresholds(k, keys, keep_thr, dare, check, where)
                check = False
        factor = np.ones(m)
        if rescale:
            factor = self.l1_factors(keys, keep_thr) if compat == "mergekit" else factor / keep_prob
        factor = factor.astype(np.float32)  # the kernels compute in float32
        w = np.array(weights, dtype=np.float64)
        total = np.float32(w.sum() if abs(float(w.sum())) >= 1e-8 else 1.0)
        w = w.astype(np.float32)
        scale = np.float32(scale)
        kept = [np.zeros(m, dtype=np.int64) for _ in range(self.threads)]
        conflicts = [np.zeros(1, dtype=np.int64) for _ in range(self.threads)]

        def fused(r, lo, hi, start):
            return _kernels.merge_pass(
                self.b, self.t, self.out_np, lo, hi, start, keys, keep_thr, dare, trim < 1.0, thr, cut,
                factor, w, mode, mass, norm, total, scale, kept[r], conflicts[r], check,
            )  # fmt: skip

        for start, c in self.chunks():
            self.raise_bad(self.run(fused, start, c), start, where)
            emit(_to_code(self.out_np[:c], self.kind, self.base_code))
        n = self.n
        stats.kept_fraction = {nm: (int(k) / n if n else 1.0) for nm, k in zip(self.names, sum(kept))}
        stats.sign_conflict_fraction = int(sum(conflicts)[0]) / n if n else 0.0
