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

Everything is computed in float32 chunks of ``BLOCK`` entries whatever the storage dtype, and the
result has the base dtype. The DARE mask of entry j of tensor T for model M is drawn from a generator
seeded by (seed, T, M, j // BLOCK), so a merge is reproducible whatever the order or parallelism.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from tbi_merging._select import Threshold, kth_largest
from tbi_merging.errors import MergeError

METHODS = ("linear", "task_arithmetic", "ties", "dare_linear", "dare_ties")
COMPAT_MODES = ("paper", "mergekit", "peft")
SIGN_METHODS = ("mass", "count")

#: Entries per processing chunk and per DARE seeding block (part of the reproducibility contract).
BLOCK = 1 << 20

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


def dare_seed(seed: int, tensor_name: str, model_name: str, block: int) -> int:
    """64-bit generator seed of one DARE block: a hash of (seed, tensor name, model name, block index)."""
    key = f"{seed}\x00{tensor_name}\x00{model_name}\x00{block}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & ((1 << 63) - 1)


def dare_keep_mask(
    numel: int, keep_prob: float, *, seed: int, tensor_name: str, model_name: str
) -> torch.Tensor:
    """The boolean DARE keep mask (flat, ``numel`` entries) that :func:`merge_tensors` uses.

    Entry j is kept iff u_j < keep_prob with u_j ~ U[0, 1) from the generator of block j // BLOCK.
    """
    return torch.cat(
        [
            _block_mask(start, min(numel, start + BLOCK), keep_prob, seed, tensor_name, model_name)
            for start in range(0, numel, BLOCK)
        ]
        or [torch.zeros(0, dtype=torch.bool)]
    )


def _block_mask(start: int, stop: int, keep_prob: float, seed: int, tensor_name: str, model_name: str):
    gen = torch.Generator()
    gen.manual_seed(dare_seed(seed, tensor_name, model_name, start // BLOCK))
    return torch.rand(stop - start, generator=gen) < keep_prob


@dataclass
class _TaskVector:
    """Sparsification state of one model's task vector, applied chunk by chunk."""

    name: str
    base: torch.Tensor  # flat, storage dtype
    tuned: torch.Tensor  # flat, storage dtype
    keep_prob: float  # DARE keep probability 1 - p (1.0: no DARE)
    density: float  # TIES kept fraction (1.0: no trim)
    seed: int
    tensor_name: str
    factor: float = 1.0  # DARE rescale factor, applied after masking
    threshold: Threshold | None = None
    ties_seen: int = 0

    def masked(self, d: torch.Tensor, start: int) -> torch.Tensor:
        """DARE-masked (unscaled) delta, in place on ``d`` (entries [start, start + len(d)))."""
        if self.keep_prob < 1.0:
            d.mul_(
                _block_mask(start, start + d.numel(), self.keep_prob, self.seed, self.tensor_name, self.name)
            )
        return d

    def delta(self, start: int, stop: int) -> torch.Tensor:
        return self.tuned[start:stop].float() - self.base[start:stop].float()  # [C]; float() may alias

    def magnitudes(self) -> Iterator[tuple[int, torch.Tensor]]:
        n = self.base.numel()
        for start in range(0, n, BLOCK):
            yield start, self.masked(self.delta(start, min(n, start + BLOCK)), start).abs_()

    def magnitudes_at(self, start: int, idx: torch.Tensor) -> torch.Tensor:
        """|masked delta| at offsets ``idx`` of the chunk at ``start`` (reads only those entries)."""
        pos = idx + start
        d = self.tuned[pos].float() - self.base[pos].float()
        if self.keep_prob < 1.0:
            stop = min(self.base.numel(), start + BLOCK)
            d.mul_(_block_mask(start, stop, self.keep_prob, self.seed, self.tensor_name, self.name)[idx])
        return d.abs_()

    def sparsify(self, d: torch.Tensor, start: int) -> torch.Tensor:
        """Final sparsified delta, in place on ``d``; chunks must come in flat order."""
        self.masked(d, start)
        if self.threshold is not None:
            a = d.abs()
            budget = self.threshold.ties_to_keep - self.ties_seen  # ties still to keep, in flat order
            if budget <= 0:
                keep = a > self.threshold.value
            else:
                ties = a == self.threshold.value
                n_ties = int(ties.sum())
                if n_ties <= budget:
                    keep = a >= self.threshold.value
                else:
                    rank = torch.cumsum(ties, 0)  # 1-based rank of each tie within the chunk
                    keep = (a > self.threshold.value) | (ties & (rank <= budget))
                self.ties_seen += n_ties
            d.mul_(keep)
        if self.factor != 1.0:
            d.mul_(self.factor)
        return d


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
        seed, tensor_name: DARE generator key, together with the model name and the block index.
        check_finite: raise :class:`MergeError` on a NaN/Inf in any input.
        return_stats: also return :class:`TensorStats`.
        sink: if given, each merged chunk (flat, base dtype, in order) is passed to it instead of being
            assembled, and only the :class:`TensorStats` are returned (the streaming writer uses this).

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
    out = torch.empty(n if sink is None else 0, dtype=base.dtype)
    emit = sink if sink is not None else _filler(out)
    stats = TensorStats(numel=n)

    if method == "linear":
        total = sum(w) if norm and abs(sum(w)) >= 1e-8 else 1.0
        for start in range(0, n, BLOCK):
            stop = min(n, start + BLOCK)
            acc = torch.zeros(stop - start, dtype=torch.float32)
            for name, t, wi in zip(names, tuned_flat, w):
                c = t[start:stop].float()
                if check_finite:
                    _check_finite(c, tensor_name, f"model {name!r}", start)
                acc += wi * c
            emit((acc / total).to(base.dtype))
        stats.kept_fraction = dict.fromkeys(names, 1.0)
        return _result(out, base, stats, return_stats, sink)

    tvs = [
        _TaskVector(name, base_flat, t, 1.0 - p, trim, seed, tensor_name)
        for name, t in zip(names, tuned_flat)
    ]
    for tv in tvs:
        _prepare(tv, n, dare, rescale, compat)

    weights_t = torch.tensor(w, dtype=torch.float32).unsqueeze(1)  # [M, 1]
    weight_signs = weights_t.sign()  # [M, 1]
    kept = torch.zeros(len(tvs), dtype=torch.int64)
    conflicts = 0
    ties_like = method in ("ties", "dare_ties")
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        b = base_flat[start:stop].float()  # [C]
        if check_finite:
            _check_finite(b, tensor_name, "the base", start)
        deltas = torch.empty(len(tvs), stop - start)  # [M, C]
        for i, (tv, t) in enumerate(zip(tvs, tuned_flat)):
            f = t[start:stop].float()  # [C]
            if check_finite:
                _check_finite(f, tensor_name, f"model {tv.name!r}", start)
            tv.sparsify(torch.sub(f, b, out=deltas[i]), start)
        signs = deltas.sign()  # [M, C]
        kept += signs.abs().sum(1, dtype=torch.int64)  # faster than count_nonzero(dim=1) on CPU
        conflicts += int(((signs.amax(0) > 0) & (signs.amin(0) < 0)).sum())
        if ties_like:
            if compat == "mergekit":  # elect on the weighted deltas
                elect_signs = signs.mul_(weight_signs)
                deltas.mul_(weights_t)
                votes = deltas.sum(0) if sign == "mass" else elect_signs.sum(0)  # [C]
            else:  # elect on the deltas themselves
                elect_signs = signs
                votes = deltas.sum(0) if sign == "mass" else signs.sum(0)  # [C]
                deltas.mul_(weights_t)
            elected = (votes >= 0).float().mul_(2.0).sub_(1.0)  # [C]; ±1, +1 on a tie
            agree = elect_signs == elected  # [M, C]; zero deltas never agree
            mixed = deltas.mul_(agree).sum(0)  # [C]
            if norm:
                if compat == "peft":
                    divisor = agree.sum(0).clamp_(min=1).float()
                else:
                    divisor = (weights_t * agree).sum(0)
                    divisor[divisor == 0] = 1.0
                mixed.div_(divisor)
        else:
            mixed = deltas.mul_(weights_t).sum(0)  # [C]
            if norm:
                total = float(sum(w))
                mixed.div_(total if abs(total) >= 1e-8 else 1.0)
        emit(torch.add(b, mixed, alpha=scale).to(base.dtype))  # not in place: b may alias a float32 input
    kept = kept.tolist()
    stats.kept_fraction = {tv.name: (k / n if n else 1.0) for tv, k in zip(tvs, kept)}
    stats.sign_conflict_fraction = conflicts / n if n else 0.0
    return _result(out, base, stats, return_stats, sink)


def _filler(out: torch.Tensor) -> Callable[[torch.Tensor], None]:
    pos = [0]

    def fill(chunk: torch.Tensor) -> None:
        out[pos[0] : pos[0] + chunk.numel()] = chunk
        pos[0] += chunk.numel()

    return fill


def _result(out, base, stats, return_stats, sink):
    if sink is not None:
        return stats
    result = out.reshape(base.shape)
    return (result, stats) if return_stats else result


def _prepare(tv: _TaskVector, n: int, dare: bool, rescale: bool, compat: str) -> None:
    """Per-model passes before merging: the TIES threshold and the DARE rescale factor."""
    if tv.density < 1.0:
        k = int(tv.density * n)
        if k == 0:
            tv.threshold = Threshold(value=float("inf"), ties_to_keep=0)
        else:
            tv.threshold = kth_largest(tv.magnitudes(), k, tv.magnitudes_at)
    if not (dare and rescale and tv.keep_prob < 1.0):
        return
    if compat != "mergekit":
        tv.factor = 1.0 / tv.keep_prob
        return
    # mergekit >= 0.1 matches the L1 norm of the unpruned task vector instead of dividing by the density.
    full = masked = 0.0
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        d = tv.delta(start, stop)
        full += float(d.abs().sum(dtype=torch.float64))
        masked += float(tv.masked(d, start).abs().sum(dtype=torch.float64))
    if full >= _MERGEKIT_L1_EPS and masked >= _MERGEKIT_L1_EPS:
        tv.factor = full / masked
