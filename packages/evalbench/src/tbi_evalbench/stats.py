"""Statistics across seeds and items (seed 000 section 5.2).

| function | what |
|---|---|
| :func:`mean_std` | mean and sample std (ddof 1) across seeds; :func:`format_mean_std` prints ``0.7234 ± 0.0012`` |
| :func:`t_confidence_interval` | mean ± t_{n-1, (1+c)/2} s / sqrt(n), across seeds |
| :func:`bootstrap_ci` | percentile bootstrap of the mean over items |
| :func:`clustered_se` | standard error of the mean with items clustered by image (CR1, below) |
| :func:`paired_ttest` | paired t-test of a variant against a baseline on matched seeds (scipy ``ttest_rel``) |
| :func:`paired_bootstrap` | per-sample paired bootstrap p-value for the mean difference |
| :func:`bonferroni`, :func:`holm` | adjusted p-values over the number of comparisons |
| :func:`interaction_contrast` | E2 - (B3 + C2 - A1) per seed, its mean, t-CI and p-value against 0 |

Clustered standard error (CR1) of the mean of x_1..x_N in G clusters:

    SE = sqrt( G / (G - 1) * sum_g (sum_{i in g} (x_i - mean))^2 ) / N

which equals the ordinary s / sqrt(N) when every cluster holds one item.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tbi_evalbench._errors import EvalbenchError


def _array(values: Sequence[float], name: str, min_len: int = 1) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size < min_len:
        raise EvalbenchError(f"{name} needs a flat list of at least {min_len} numbers, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise EvalbenchError(f"{name} contains NaN or infinite values")
    return arr


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation with ddof=1); the std of a single run is 0."""
    arr = _array(values, "mean_std")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def format_mean_std(values: Sequence[float], decimals: int = 4) -> str:
    """``"0.7234 ± 0.0012"`` (4 decimals, seed 000 section 5.2)."""
    m, s = mean_std(values)
    return f"{m:.{decimals}f} ± {s:.{decimals}f}"


def t_confidence_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean across seeds."""
    from scipy import stats as sps  # imported on use: scipy.stats takes a second to load

    arr = _array(values, "t_confidence_interval", 2)
    half = sps.t.ppf((1 + confidence) / 2, arr.size - 1) * arr.std(ddof=1) / np.sqrt(arr.size)
    return float(arr.mean() - half), float(arr.mean() + half)


def bootstrap_ci(
    values: Sequence[float], confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over items (resampling items with replacement)."""
    arr = _array(values, "bootstrap_ci")
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(n_boot, arr.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def clustered_se(values: Sequence[float], clusters: Sequence[Hashable]) -> float:
    """CR1 cluster-robust standard error of the mean (clusters = image ids shared by several questions)."""
    arr = _array(values, "clustered_se", 2)
    if len(clusters) != arr.size:
        raise EvalbenchError(f"clustered_se: {arr.size} values but {len(clusters)} cluster labels")
    _, inverse = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
    g = int(inverse.max()) + 1
    if g < 2:
        raise EvalbenchError("clustered_se needs at least two clusters")
    sums = np.bincount(inverse, weights=arr - arr.mean(), minlength=g)
    return float(np.sqrt(g / (g - 1) * np.sum(sums**2)) / arr.size)


@dataclass(frozen=True)
class PairedTest:
    """Result of a paired comparison: mean difference (variant - baseline), statistic, two-sided p-value."""

    mean_diff: float
    statistic: float
    p_value: float
    n: int


def paired_ttest(variant: Sequence[float], baseline: Sequence[float]) -> PairedTest:
    """Paired t-test on matched seeds (same order), two-sided."""
    from scipy import stats as sps  # imported on use: scipy.stats takes a second to load

    a, b = _array(variant, "paired_ttest variant", 2), _array(baseline, "paired_ttest baseline", 2)
    if a.size != b.size:
        raise EvalbenchError(
            f"paired_ttest: {a.size} variant runs but {b.size} baseline runs; match the seeds"
        )
    diff = a - b
    if np.ptp(diff) <= 1e-12 * max(1.0, float(np.abs(diff).max())):
        # scipy returns nan (or warns of cancellation) for a constant difference; a constant non-zero
        # difference is as significant as it gets.
        mean_diff = float(diff.mean())
        t, p = (0.0, 1.0) if mean_diff == 0 else (float(np.sign(mean_diff) * np.inf), 0.0)
    else:
        res = sps.ttest_rel(a, b)
        t, p = float(res.statistic), float(res.pvalue)
    return PairedTest(float(diff.mean()), t, p, int(a.size))


def paired_bootstrap(
    variant: Sequence[float], baseline: Sequence[float], n_boot: int = 10_000, seed: int = 0
) -> PairedTest:
    """Per-sample paired bootstrap: p = P(|mean(d*) - mean(d)| >= |mean(d)|) over resampled item differences d."""
    a, b = _array(variant, "paired_bootstrap variant"), _array(baseline, "paired_bootstrap baseline")
    if a.size != b.size:
        raise EvalbenchError(
            f"paired_bootstrap: {a.size} vs {b.size} per-sample scores; score the same items"
        )
    d = a - b
    obs = d.mean()
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    p = float(np.mean(np.abs(boots - obs) >= abs(obs))) if obs != 0 else 1.0
    return PairedTest(float(obs), float(obs), p, int(d.size))


def bonferroni(p_values: Sequence[float]) -> list[float]:
    """Bonferroni-adjusted p-values: min(1, p * m)."""
    m = len(p_values)
    return [min(1.0, float(p) * m) for p in p_values]


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (monotone, in the input order)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        out[i] = running
    return out


@dataclass(frozen=True)
class Contrast:
    """Per-seed interaction contrasts, their mean, 95% t-interval and the one-sample t-test p-value against 0."""

    per_seed: list[float]
    mean: float
    ci: tuple[float, float]
    p_value: float


def interaction_contrast(
    e2: Sequence[float],
    b3: Sequence[float],
    c2: Sequence[float],
    a1: Sequence[float],
    confidence: float = 0.95,
) -> Contrast:
    """Synergy contrast of seed 000 RQ4: E2 - (B3 + C2 - A1) on matched seeds (> 0: more than additive)."""
    from scipy import stats as sps  # imported on use: scipy.stats takes a second to load

    arrs = [_array(x, name, 2) for x, name in ((e2, "E2"), (b3, "B3"), (c2, "C2"), (a1, "A1"))]
    if len({a.size for a in arrs}) != 1:
        raise EvalbenchError(
            f"interaction_contrast: runs per experiment differ {[a.size for a in arrs]}; match the seeds"
        )
    e, b, c, a = arrs
    per = e - (b + c - a)
    p = float(sps.ttest_1samp(per, 0.0).pvalue) if np.ptp(per) > 0 else (1.0 if per[0] == 0 else 0.0)
    return Contrast([float(x) for x in per], float(per.mean()), t_confidence_interval(per, confidence), p)


@dataclass(frozen=True)
class Comparison:
    """One variant against the baseline on one benchmark, with the corrected p-value."""

    experiment: str
    benchmark: str
    mean_diff: float
    p_value: float
    p_adjusted: float
    significant: bool


def compare_to_baseline(
    runs: Mapping[str, Mapping[str, Mapping[int, float]]],
    baseline: str,
    *,
    alpha: float = 0.05,
    correction: str = "bonferroni",
) -> list[Comparison]:
    """Paired t-tests of every experiment against ``baseline`` on every benchmark, matched by seed.

    Args:
        runs: experiment -> benchmark -> seed -> score.
        correction: ``bonferroni``, ``holm`` or ``none``, over all (experiment, benchmark) comparisons.
    """
    if baseline not in runs:
        raise EvalbenchError(f"baseline {baseline!r} is not among the experiments {sorted(runs)}")
    tests: list[tuple[str, str, PairedTest]] = []
    for exp, benches in runs.items():
        if exp == baseline:
            continue
        for bench, seeds in benches.items():
            base = runs[baseline].get(bench)
            if base is None:
                continue
            common = sorted(set(seeds) & set(base))
            if len(common) < 2:
                raise EvalbenchError(
                    f"{exp} vs {baseline} on {bench}: only {len(common)} matched seed(s) {common}; need >= 2 shared seeds"
                )
            tests.append((exp, bench, paired_ttest([seeds[s] for s in common], [base[s] for s in common])))
    raw = [t.p_value for _, _, t in tests]
    if correction == "bonferroni":
        adj = bonferroni(raw)
    elif correction == "holm":
        adj = holm(raw)
    elif correction == "none":
        adj = list(raw)
    else:
        raise EvalbenchError(f"unknown correction {correction!r}; use bonferroni, holm or none")
    return [
        Comparison(exp, bench, t.mean_diff, t.p_value, p, p < alpha) for (exp, bench, t), p in zip(tests, adj)
    ]
