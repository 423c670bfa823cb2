"""Aggregates, statistics across seeds (against hand values and naive float64 formulas) and reports."""

import math
import random

import numpy as np
import pytest
from scipy import stats as sps

from tbi_evalbench import (
    EvalbenchError,
    aggregate_scores,
    bonferroni,
    bootstrap_ci,
    clustered_se,
    holm,
    interaction_contrast,
    mean_std,
    paired_bootstrap,
    paired_ttest,
    plot_ablation_heatmap,
    plot_radar,
    plot_training_curves,
    results_table,
    t_confidence_interval,
)
from tbi_evalbench.report import write_table
from tbi_evalbench.stats import compare_to_baseline, format_mean_std

SCORES = {"K-DTCBench": 0.7, "MMBench-KO": 0.6, "KoMM-Bench": 0.5, "MMBench-EN": 0.8, "TextVQA": 0.7, "OCRBench": 0.6,
          "DocVQA": 0.9, "ChartQA": 0.75, "MathVista": 0.5, "WTQ": 0.45}  # fmt: skip


def test_aggregates_of_seed_000():
    agg = aggregate_scores(SCORES)
    assert agg["korean"] == pytest.approx(0.6)
    assert agg["english"] == pytest.approx((0.8 + 0.7 + 0.6 + 0.9 + 0.75 + 0.5) / 6)
    assert agg["structured"] == pytest.approx((0.75 + 0.9 + 0.45) / 3)
    assert agg["overall"] == pytest.approx(sum(SCORES.values()) / 10)
    partial = dict(SCORES)
    del partial["KoMM-Bench"]
    with pytest.raises(EvalbenchError, match=r"korean.*KoMM-Bench"):
        aggregate_scores(partial)
    assert aggregate_scores(partial, strict=False)["korean"] == pytest.approx(0.65)
    assert aggregate_scores({"a": 1.0, "b": 0.0}, {"g": ["a"]}) == {"g": 1.0, "overall": 0.5}


def test_mean_std_and_t_interval_by_hand():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert format_mean_std([0.7222, 0.7234, 0.7246]) == "0.7234 ± 0.0012"
    lo, hi = t_confidence_interval([1.0, 2.0, 3.0])
    half = 4.3026527297 / math.sqrt(3)  # t_{0.975, 2} (printed tables) * s / sqrt(n), s = 1
    assert (lo, hi) == pytest.approx((2 - half, 2 + half), rel=1e-9)


def test_clustered_se_against_naive_loop_and_iid_case():
    rng = random.Random(0)
    values = [rng.random() for _ in range(23)]
    clusters = [rng.randint(0, 6) for _ in range(23)]
    m = sum(values) / len(values)
    sums: dict = {}
    for v, c in zip(values, clusters):
        sums[c] = sums.get(c, 0.0) + (v - m)
    g = len(sums)
    naive = math.sqrt(g / (g - 1) * sum(s * s for s in sums.values())) / len(values)
    assert clustered_se(values, clusters) == pytest.approx(naive, rel=1e-12)
    # one item per cluster: the ordinary standard error s / sqrt(n)
    assert clustered_se(values, list(range(23))) == pytest.approx(
        np.std(values, ddof=1) / math.sqrt(23), rel=1e-12
    )


def test_bootstrap_ci_brackets_the_mean_and_is_reproducible():
    values = [1.0] * 30 + [0.0] * 70
    lo, hi = bootstrap_ci(values, n_boot=2000, seed=1)
    assert lo < 0.3 < hi and hi - lo < 0.25
    assert bootstrap_ci(values, n_boot=2000, seed=1) == (lo, hi)
    assert bootstrap_ci([0.5] * 10) == (0.5, 0.5)


def test_paired_tests_by_hand():
    r = paired_ttest([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])  # diffs 1, 2, 3: mean 2, sd 1 -> t = 2 sqrt(3)
    assert r.statistic == pytest.approx(2 * math.sqrt(3), rel=1e-12)
    assert r.p_value == pytest.approx(2 * sps.t.sf(2 * math.sqrt(3), 2), rel=1e-10)
    assert paired_ttest([1.0, 2.0], [1.0, 2.0]).p_value == 1.0
    assert paired_ttest([1.1, 2.1], [1.0, 2.0]).p_value == 0.0
    with pytest.raises(EvalbenchError, match="match the seeds"):
        paired_ttest([1.0, 2.0, 3.0], [1.0, 2.0])
    better = paired_bootstrap([1.0] * 40 + [0.0] * 10, [0.0] * 40 + [0.0] * 10, n_boot=2000)
    same = paired_bootstrap([1.0, 0.0] * 25, [0.0, 1.0] * 25, n_boot=2000)
    assert better.mean_diff == pytest.approx(0.8) and better.p_value < 0.01
    assert same.mean_diff == 0.0 and same.p_value == 1.0


def test_multiple_comparison_corrections_by_hand():
    p = [0.01, 0.04, 0.03]
    assert bonferroni(p) == pytest.approx([0.03, 0.12, 0.09])
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06])  # 3*0.01, max(2*0.03, ...), max(0.06, 1*0.04)
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_interaction_contrast_by_hand():
    c = interaction_contrast([0.70, 0.72, 0.71], [0.65, 0.66, 0.64], [0.66, 0.66, 0.67], [0.63, 0.62, 0.63])
    assert c.per_seed == pytest.approx([0.02, 0.02, 0.03])
    assert c.mean == pytest.approx(0.07 / 3)
    assert c.ci[0] < c.mean < c.ci[1] and c.p_value < 0.05


def _runs():
    return {
        "A1": {"DocVQA": {42: 0.50, 123: 0.51, 456: 0.52}, "ChartQA": {42: 0.60, 123: 0.62, 456: 0.58}, "WTQ": {42: 0.4, 123: 0.41, 456: 0.39}},
        "E2": {"DocVQA": {42: 0.60, 123: 0.612, 456: 0.619}, "ChartQA": {42: 0.61, 123: 0.60, 456: 0.62}, "WTQ": {42: 0.45, 123: 0.46, 456: 0.44}},
        "F4": {"DocVQA": {42: 0.70, 123: 0.712, 456: 0.719}, "ChartQA": {42: 0.59, 123: 0.65, 456: 0.60}, "WTQ": {42: 0.5, 123: 0.52, 456: 0.49}},
    }  # fmt: skip


def test_results_table_markdown_and_csv(tmp_path):
    runs = _runs()
    md = results_table(runs, baseline="A1")
    lines = md.splitlines()
    assert lines[0] == "| experiment | DocVQA | ChartQA | WTQ |"
    assert lines[2].startswith("| A1 (baseline) | 0.5100 ± 0.0100 |")
    e2 = lines[3]
    assert "0.6103 ± 0.0096*" in e2  # strong, consistent gain: significant after Bonferroni over 6 tests
    assert "0.6100 ± 0.0100 |" in e2  # ChartQA gain is noise: no mark
    comps = {(c.experiment, c.benchmark): c for c in compare_to_baseline(runs, "A1")}
    assert comps[("E2", "DocVQA")].significant and not comps[("E2", "ChartQA")].significant
    assert comps[("E2", "DocVQA")].p_adjusted == pytest.approx(min(1.0, 6 * comps[("E2", "DocVQA")].p_value))
    csv_text = results_table(runs, fmt="csv")
    assert csv_text.splitlines()[1].startswith("A1,0.5100 ± 0.0100,")
    path = write_table(tmp_path / "t.csv", runs, baseline="A1")
    assert path.read_text(encoding="utf-8").startswith("experiment,DocVQA")
    with pytest.raises(EvalbenchError, match="baseline 'Z'"):
        results_table(runs, baseline="Z")


def _png_ok(path):
    import matplotlib.image as mpimg

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 200
    assert float(img[..., :3].std()) > 0.01  # something was drawn


def test_plots_are_real_pngs(tmp_path):
    steps = list(range(0, 100, 10))
    curves = {"A1": (steps, [1 / (1 + s) for s in steps]), "F4": (steps, [0.8 / (1 + s) for s in steps])}
    means = {e: {b: float(np.mean(list(s.values()))) for b, s in bs.items()} for e, bs in _runs().items()}
    for path in (
        plot_training_curves(curves, tmp_path / "curves.png"),
        plot_ablation_heatmap(means, tmp_path / "heat.png", baseline="A1"),
        plot_radar(means, tmp_path / "radar.png"),
    ):
        _png_ok(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "heat.png", "radar.png"]
    with pytest.raises(EvalbenchError, match="at least 3 benchmarks"):
        plot_radar({"A": {"x": 1.0}}, tmp_path / "r2.png")
