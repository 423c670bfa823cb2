"""merge_tensors against float64 references written from the papers' formulas, and each compat mode
pinned on hand-computed tensors."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from tbi_merging import MergeError, core, dare_keep_mask, merge_tensors
from tbi_merging._select import BINS, find_bin


def _grid(shape, gen, scale=64.0, spread=3.0):
    """Values on a 1/scale grid so float32 deltas are exact and magnitudes tie often."""
    return torch.round(torch.randn(shape, generator=gen) * spread * scale) / scale


def _topk_mask(d: torch.Tensor, density: float) -> torch.Tensor:
    """Naive trim: keep the k = int(density n) largest |d|, ties broken by flat index (stable sort)."""
    flat = d.reshape(-1)
    n = flat.numel()
    k = int(density * n)
    order = sorted(range(n), key=lambda j: (-abs(float(flat[j])), j))[:k]
    mask = torch.zeros(n, dtype=torch.float64)
    mask[order] = 1.0
    return mask.reshape(d.shape)


def _reference(
    base,
    fts: dict,
    w: dict,
    method,
    *,
    density=1.0,
    p=0.0,
    rescale=True,
    sign="mass",
    normalize=True,
    scale=1.0,
    compat="paper",
    seed=0,
    name="",
):
    """float64 merge from the formulas (TIES paper eqs., DARE paper eq. 1, task arithmetic)."""
    b = base.double()
    names = list(fts)
    if method == "linear":
        acc = sum(w[m] * fts[m].double() for m in names)
        return acc / sum(w.values()) if normalize else acc
    deltas = {}
    for m in names:
        d = fts[m].double() - b
        if method.startswith("dare_") and p > 0:
            keep = dare_keep_mask(d.numel(), 1 - p, seed=seed, tensor_name=name, model_name=m).reshape(
                d.shape
            )
            masked = d * keep.double()
            if rescale and compat == "mergekit":
                full, kept = d.abs().sum(), masked.abs().sum()
                masked = masked * (full / kept) if full >= 1e-7 and kept >= 1e-7 else masked
            elif rescale:
                masked = masked / (1 - p)
            d = masked
        if method in ("ties", "dare_ties") and density < 1:
            d = d * _topk_mask(d, density)
        deltas[m] = d
    if method in ("task_arithmetic", "dare_linear"):
        mixed = sum(w[m] * deltas[m] for m in names)
        if normalize:
            mixed = mixed / sum(w.values())
        return b + scale * mixed
    elect = {m: (w[m] * deltas[m] if compat == "mergekit" else deltas[m]) for m in names}
    votes = sum(elect[m] if sign == "mass" else torch.sign(elect[m]) for m in names)
    gamma = torch.where(votes >= 0, 1.0, -1.0).double()
    agree = {m: (torch.sign(elect[m]) == gamma).double() for m in names}
    mixed = sum(w[m] * deltas[m] * agree[m] for m in names)
    if normalize:
        if compat == "peft":
            div = torch.clamp(sum(agree.values()), min=1.0)
        else:
            div = sum(w[m] * agree[m] for m in names)
            div = torch.where(div == 0, torch.ones_like(div), div)
        mixed = mixed / div
    return b + scale * mixed


CASES = [
    ("linear", {}),
    ("task_arithmetic", {"scale": 0.7}),
    ("task_arithmetic", {"normalize": True}),
    ("ties", {"density": 0.3}),
    ("ties", {"density": 0.5, "sign": "count"}),
    ("ties", {"density": 0.3, "compat": "mergekit"}),
    ("ties", {"density": 0.3, "compat": "peft"}),
    ("dare_linear", {"p": 0.5}),
    ("dare_linear", {"p": 0.7, "compat": "mergekit"}),
    ("dare_ties", {"p": 0.6}),
    ("dare_ties", {"p": 0.6, "density": 0.5, "sign": "count"}),
    ("dare_ties", {"p": 0.8, "compat": "mergekit", "normalize": False}),
    ("dare_ties", {"p": 0.5, "compat": "peft", "rescale": False}),
]


@pytest.mark.parametrize("shape", [(7, 13), (3, 5, 11), (1,), (257,)])
@pytest.mark.parametrize(("method", "opts"), CASES)
def test_matches_float64_reference(shape, method, opts):
    gen = torch.Generator().manual_seed(
        zlib.crc32(repr((shape, method, opts)).encode())
    )  # the same every run
    base = _grid(shape, gen)
    fts = {m: base + _grid(shape, gen, spread=0.5) for m in ("en", "ko", "zh")}
    # Weights with exact binary fractions: the weighted votes of these grid values are then exact in float32
    # and float64 alike, so an exactly tied vote is 0 in both and elects +1 in both. With 0.6/0.4 a tie
    # (0.6·0.53125 = 0.4·0.796875) lands on ±1 ulp by rounding, differently at each precision.
    w = {"en": 0.625, "ko": 0.375, "zh": 0.25}
    kwargs = {k: v for k, v in opts.items() if k != "p"}
    p = opts.get("p", 0.9)
    compat = opts.get("compat", "paper")
    default_norm = {"linear": True, "task_arithmetic": False, "dare_linear": False}.get(method, True)
    if compat == "mergekit" and method == "dare_ties":
        default_norm = False
    normalize = opts.get("normalize", default_norm)
    got = merge_tensors(base, fts, method, w, drop_rate=p, seed=5, tensor_name="layer.w", **kwargs)
    ref = _reference(
        base,
        fts,
        w,
        method,
        p=p if method.startswith("dare") else 0.0,
        seed=5,
        name="layer.w",
        density=opts.get("density", 0.2 if method == "ties" else 1.0),
        rescale=opts.get("rescale", True),
        sign=opts.get("sign", "mass"),
        normalize=normalize,
        scale=opts.get("scale", 1.0),
        compat=compat,
    )
    assert got.dtype == base.dtype and got.shape == base.shape
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


# Hand-computed pins. base = 0, weights a: 0.8, b: 0.2, no trimming:
#   entry 0: δa=1,  δb=-2 -> unweighted mass -1 (γ=-1), weighted mass 0.8-0.4=+0.4 (γ=+1)
#   entry 1: δa=2,  δb=4  -> both agree (+)
#   entry 2: δa=-1, δb=0  -> only a (zero deltas never vote nor agree)
#   entry 3: δa=0,  δb=0
_A = torch.tensor([1.0, 2.0, -1.0, 0.0])
_B = torch.tensor([-2.0, 4.0, 0.0, 0.0])
_W = {"a": 0.8, "b": 0.2}


@pytest.mark.parametrize(
    ("compat", "sign", "expected"),
    [
        # paper: γ on unweighted deltas, Σ_A w δ / Σ_A w
        ("paper", "mass", [-2.0, (0.8 * 2 + 0.2 * 4) / 1.0, -1.0, 0.0]),
        # mergekit: γ on weighted deltas -> entry 0 keeps a
        ("mergekit", "mass", [1.0, 2.4, -1.0, 0.0]),
        # peft: γ unweighted, Σ_A w δ / |A|
        ("peft", "mass", [0.2 * -2.0, (1.6 + 0.8) / 2, -0.8, 0.0]),
        # count: entry 0 has one + and one - -> tie -> γ=+1 -> a
        ("paper", "count", [1.0, 2.4, -1.0, 0.0]),
        ("peft", "count", [0.8, 1.2, -0.8, 0.0]),
    ],
)
def test_ties_compat_pinned(compat, sign, expected):
    got = merge_tensors(torch.zeros(4), {"a": _A, "b": _B}, "ties", _W, density=1.0, sign=sign, compat=compat)
    torch.testing.assert_close(got, torch.tensor(expected))


def test_ties_trim_keeps_exactly_k_ties_by_flat_order():
    d = torch.tensor([0.1, -0.5, 0.3, -0.3, 0.2])
    got, stats = merge_tensors(torch.zeros(5), [d], "ties", density=0.4, return_stats=True)
    torch.testing.assert_close(got, torch.tensor([0.0, -0.5, 0.3, 0.0, 0.0]))
    assert stats.kept_fraction == {"0": 0.4}


def test_dare_rescale_per_compat():
    d = torch.arange(1.0, 9.0)
    mask = dare_keep_mask(8, 0.5, seed=3, tensor_name="t", model_name="m").float()
    assert 0 < mask.sum() < 8, "pick a seed whose mask is neither empty nor full"
    args = dict(drop_rate=0.5, seed=3, tensor_name="t")
    paper = merge_tensors(torch.zeros(8), {"m": d}, "dare_linear", **args)
    peft = merge_tensors(torch.zeros(8), {"m": d}, "dare_linear", compat="peft", **args)
    mk = merge_tensors(torch.zeros(8), {"m": d}, "dare_linear", compat="mergekit", **args)
    off = merge_tensors(torch.zeros(8), {"m": d}, "dare_linear", rescale=False, **args)
    torch.testing.assert_close(paper, d * mask / 0.5)
    torch.testing.assert_close(peft, paper)
    torch.testing.assert_close(mk, d * mask * (d.sum() / (d * mask).sum()))
    torch.testing.assert_close(off, d * mask)


def test_normalize_defaults_differ_between_modes():
    base = torch.zeros(3)
    fts = {"a": torch.tensor([1.0, 1.0, 1.0]), "b": torch.tensor([1.0, 1.0, 1.0])}
    w = {"a": 0.6, "b": 0.4}
    # dare_ties with p -> 0 is TIES without trimming; paper normalises (weighted disjoint mean), mergekit not.
    paper = merge_tensors(base, fts, "dare_ties", w, drop_rate=0.0)
    mk = merge_tensors(base, fts, "dare_ties", w, drop_rate=0.0, compat="mergekit")
    torch.testing.assert_close(paper, torch.ones(3))
    torch.testing.assert_close(mk, torch.ones(3))  # Σ w = 1 here, so also check unequal sums:
    mk2 = merge_tensors(base, fts, "dare_ties", {"a": 0.6, "b": 0.6}, drop_rate=0.0, compat="mergekit")
    torch.testing.assert_close(mk2, torch.full((3,), 1.2))
    ta = merge_tensors(base, fts, "task_arithmetic", w, scale=2.0)
    torch.testing.assert_close(ta, torch.full((3,), 2.0))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_float32_accumulation_and_base_dtype(dtype):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(64, 33, generator=gen).to(dtype)
    fts = [(base.float() + 0.01 * torch.randn(64, 33, generator=gen)).to(dtype) for _ in range(3)]
    got = merge_tensors(base, fts, "ties", [0.5, 0.3, 0.2], density=0.5)
    assert got.dtype == dtype
    ref = _reference(base, dict(zip("012", fts)), {"0": 0.5, "1": 0.3, "2": 0.2}, "ties", density=0.5)
    # half types: one rounding to the storage dtype at the end, nothing accumulated in it
    tol = 1e-6 if dtype == torch.float32 else 0.0
    torch.testing.assert_close(got, ref.to(dtype), rtol=tol, atol=tol)


def test_dare_statistics_kept_fraction_and_expectation():
    n = core.CHUNK + 12345  # two chunks, odd tail
    delta = torch.full((n,), 0.5)
    merged, stats = merge_tensors(
        torch.zeros(n),
        {"m": delta},
        "dare_linear",
        drop_rate=0.9,
        seed=1,
        tensor_name="big",
        return_stats=True,
    )
    kept = stats.kept_fraction["m"]
    sd = math.sqrt(0.1 * 0.9 / n)
    assert abs(kept - 0.1) < 5 * sd
    assert abs(float(merged.double().mean()) - 0.5) < 5 * 0.5 * 3 / math.sqrt(n)
    assert set(torch.unique(merged).tolist()) <= {0.0, 5.0}


@pytest.mark.parametrize("keep", [0.1, 0.5])
def test_dare_masks_are_independent_across_models_tensors_and_neighbours(keep):
    """Joint keep frequencies of two models' masks, of two tensors' masks and of neighbouring entries of
    one mask are keep², within 5 standard deviations, as for independent Bernoulli draws; so are the keep
    frequencies of each residue class of the index (no period in the stream)."""
    n = 1 << 20
    a = dare_keep_mask(n, keep, seed=3, tensor_name="w", model_name="en").numpy()
    b = dare_keep_mask(n, keep, seed=3, tensor_name="w", model_name="ko").numpy()
    c = dare_keep_mask(n, keep, seed=3, tensor_name="v", model_name="en").numpy()
    pairs = {
        "models": (a, b),
        "tensors": (a, c),
        "neighbours": (a[:-1], a[1:]),
        "stride 64": (a[:-64], a[64:]),
    }
    for what, (x, y) in pairs.items():
        joint = float((x & y).mean())
        sd = math.sqrt(keep**2 * (1 - keep**2) / x.size)
        assert abs(joint - keep**2) < 5 * sd, what
    for period in (2, 16, 256):
        frac = a.reshape(-1, period).mean(0)  # keep frequency of each residue class mod period
        sd = math.sqrt(keep * (1 - keep) / (n // period))
        assert np.abs(frac - keep).max() < 5 * sd, period


def test_dare_reproducible_whatever_order_and_company():
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(300, 7, generator=gen)
    a, b = base + torch.randn(300, 7, generator=gen), base + torch.randn(300, 7, generator=gen)
    one = merge_tensors(base, {"a": a, "b": b}, "dare_linear", {"a": 1.0, "b": 0.0}, seed=9, tensor_name="x")
    two = merge_tensors(base, {"b": b, "a": a}, "dare_linear", {"a": 1.0, "b": 0.0}, seed=9, tensor_name="x")
    alone = merge_tensors(base, {"a": a}, "dare_linear", seed=9, tensor_name="x")
    torch.testing.assert_close(one, two, rtol=0, atol=0)
    torch.testing.assert_close(one, alone, rtol=0, atol=0)
    other_name = merge_tensors(base, {"a": a}, "dare_linear", seed=9, tensor_name="y")
    other_seed = merge_tensors(base, {"a": a}, "dare_linear", seed=10, tensor_name="x")
    assert not torch.equal(alone, other_name) and not torch.equal(alone, other_seed)


@pytest.mark.parametrize("n", [1, 5, 1000, 70001])
def test_radix_select_matches_sort(n):
    gen = torch.Generator().manual_seed(n)
    x = (torch.round(torch.randn(n, generator=gen) * 8) / 8).abs()  # many ties
    bits = x.view(torch.int32).numpy()
    for k in {1, max(1, n // 3), n}:
        hi_bin, above_hi = find_bin(torch.bincount(x.view(torch.int32) >> 16, minlength=BINS).numpy(), k)
        lows = bits[(bits >> 16) == hi_bin] & 0xFFFF
        lo_bin, above_lo = find_bin(
            torch.bincount(torch.from_numpy(lows), minlength=BINS).numpy(), k - above_hi
        )
        value = torch.tensor([(hi_bin << 16) | lo_bin], dtype=torch.int32).view(torch.float32).item()
        assert value == float(torch.sort(x, descending=True).values[k - 1])
        assert int((x > value).sum()) == above_hi + above_lo
        assert 1 <= k - above_hi - above_lo <= int((x == value).sum())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "slerp"}, "unknown merge method"),
        ({"compat": "torchtune"}, "unknown compat"),
        ({"sign": "majority"}, "unknown sign"),
        ({"weights": [1.0]}, "1 weights for 2 models"),
        ({"method": "ties", "density": 1.5}, "density"),
        ({"method": "dare_ties", "drop_rate": 1.0}, "drop rate"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    base = torch.zeros(3)
    with pytest.raises(MergeError, match=match):
        merge_tensors(base, [base, base], **kwargs)


def test_shape_mismatch_and_nan_name_the_tensor():
    base = torch.zeros(4)
    with pytest.raises(MergeError, match=r"'w'.*\(5,\).*'ko'"):
        merge_tensors(base, {"ko": torch.zeros(5)}, tensor_name="w")
    bad = torch.tensor([0.0, float("nan"), 0.0, 0.0])
    with pytest.raises(MergeError, match=r"'w' of model 'ko'.*NaN/Inf.*index 1"):
        merge_tensors(base, {"ko": bad}, "dare_ties", drop_rate=0.99, tensor_name="w")
    merged = merge_tensors(base, {"ko": bad}, "linear", check_finite=False)
    assert torch.isnan(merged[1])


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties"])
def test_inputs_are_not_modified(method):
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(50, 3, generator=gen)
    fts = {"a": torch.randn(50, 3, generator=gen), "b": torch.randn(50, 3, generator=gen)}
    copies = (base.clone(), {k: v.clone() for k, v in fts.items()})
    merge_tensors(base, fts, method, density=0.5, drop_rate=0.5, compat="mergekit")
    assert torch.equal(base, copies[0]) and all(torch.equal(fts[k], copies[1][k]) for k in fts)


def test_trim_ties_across_chunks_follow_flat_order(monkeypatch):
    monkeypatch.setattr(core, "CHUNK", 1 << 14)  # many chunks, so the tie cut falls inside a later one
    n = 5 * (1 << 14) + 5
    gen = torch.Generator().manual_seed(4)
    d = torch.round(torch.randn(n, generator=gen) * 4) / 4  # ~20 distinct magnitudes: ties span every chunk
    k = int(0.37 * n)
    order = torch.sort(-d.abs(), stable=True).indices[:k]  # ties broken by flat index
    expected = torch.zeros(n)
    expected[order] = d[order]
    got, stats = merge_tensors(torch.zeros(n), [d], "ties", density=0.37, return_stats=True)
    assert torch.equal(got, expected)
    assert stats.kept_fraction["0"] == int((expected != 0).sum()) / n


@pytest.mark.parametrize("method", ["ties", "dare_ties", "dare_linear"])
def test_chunking_and_threads_do_not_change_the_result(monkeypatch, method):
    gen = torch.Generator().manual_seed(6)
    n = 3 * 4096 + 17
    base = _grid((n,), gen).to(torch.bfloat16)
    fts = {m: (base.float() + _grid((n,), gen, spread=0.2)).to(torch.bfloat16) for m in ("en", "ko")}
    kw = dict(density=0.45, drop_rate=0.6, seed=3, tensor_name="t", return_stats=True)
    one, s1 = merge_tensors(base, fts, method, [0.6, 0.4], **kw)
    monkeypatch.setattr(core, "CHUNK", 4096)
    monkeypatch.setattr(core, "_MIN_SPLIT", 1000)
    monkeypatch.setattr(core, "_SAMPLE_BLOCKS", 4)  # the sampled threshold bracket, per-thread candidates
    monkeypatch.setattr(core, "_SAMPLE_LEN", 512)
    two, s2 = merge_tensors(base, fts, method, [0.6, 0.4], threads=3, **kw)
    assert torch.equal(one, two) and s1 == s2


def test_bf16_inputs_round_once_from_float32():
    """The bf16 bit-pattern path computes in float32 and rounds once to bf16 (nearest even, as torch): it
    equals the float64 reference rounded to bf16, except where that reference lies within float32 rounding
    error of a bf16 rounding midpoint, and there it is the other neighbour."""
    gen = torch.Generator().manual_seed(8)
    base = (torch.randn(40, 97, generator=gen) * 0.02).to(torch.bfloat16)
    fts = {m: (base.float() + torch.randn(40, 97, generator=gen) * 2e-3).to(torch.bfloat16) for m in "ab"}
    w = {"a": 0.6, "b": 0.4}
    for method, density in (("ties", 0.3), ("dare_ties", 0.7), ("task_arithmetic", 1.0)):
        got = merge_tensors(base, fts, method, w, density=density, drop_rate=0.5, seed=1, tensor_name="x")
        ref = _reference(
            base, fts, w, method, density=density,
            p=0.5 if method == "dare_ties" else 0.0, seed=1, name="x",
            normalize=method != "task_arithmetic",
        )  # fmt: skip
        assert got.dtype == torch.bfloat16
        rounded = ref.to(torch.bfloat16)
        off = got != rounded
        assert int(off.sum()) <= 0.01 * got.numel(), method
        mid = (got[off].double() + rounded[off].double()) / 2  # the midpoint between the two neighbours
        assert torch.all((ref[off] - mid).abs() <= 8 * 2**-24 * ref[off].abs()), method


@pytest.mark.parametrize("path", ["all", "sampled", "sampled_one_chunk", "fallback"])
def test_trim_threshold_paths_are_exact(monkeypatch, path):
    """Small tensors collect every entry; large ones bracket the threshold from a sample; a missed
    bracket falls back to the two radix-histogram passes. All keep exactly the top k, ties in flat order."""
    n = 50_003
    gen = torch.Generator().manual_seed(11)
    d = torch.round(torch.randn(n, generator=gen) * 6) / 6  # ~40 distinct magnitudes: many ties
    radix_calls = []
    radix = core._Engine.radix_thresholds
    monkeypatch.setattr(core._Engine, "radix_thresholds", lambda *a: radix_calls.append(1) or radix(*a))
    if path != "sampled_one_chunk":  # the sample is read from the sources, not from the chunk buffers
        monkeypatch.setattr(core, "CHUNK", 1 << 13)
    if path != "all":
        monkeypatch.setattr(core, "_SAMPLE_BLOCKS", 16)
        monkeypatch.setattr(core, "_SAMPLE_LEN", 256)
    if path == "fallback":  # a bracket that holds only the largest magnitudes misses the k-th
        top = int(d.abs().max().view(torch.int32))
        monkeypatch.setattr(
            core._Engine, "_bracket", lambda self, *a: (np.full(1, top, np.uint32),) * 2 + (n,)
        )
    for density in (0.05, 0.37, 0.9):
        k = int(density * n)
        order = torch.sort(-d.abs(), stable=True).indices[:k]
        expected = torch.zeros(n)
        expected[order] = d[order]
        got = merge_tensors(torch.zeros(n), [d], "ties", density=density)
        assert torch.equal(got, expected), density
    assert len(radix_calls) == (3 if path == "fallback" else 0)
