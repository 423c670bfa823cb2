"""The report renders from fake runs; its statistics agree with direct numpy/scipy computations."""

import csv
import json
import random
import statistics

import pytest
from scipy import stats

from tbi_train.report import collect_results, write_report

EXPS = ("A0", "A1", "B3", "C2", "D4", "E2", "F4")
SEEDS = (42, 123, 456)
BENCHES = ("chart-en", "chart-ko", "doc-en", "color-ko")


def _fake_runs(root, rng):
    truth = {}
    for i, exp in enumerate(EXPS):
        for seed in SEEDS:
            scores = {b: min(1.0, 0.3 + 0.05 * i + rng.uniform(0, 0.02)) for b in BENCHES}
            aggregates = {
                "korean": statistics.fmean(v for k, v in scores.items() if k.endswith("-ko")),
                "english": statistics.fmean(v for k, v in scores.items() if k.endswith("-en")),
                "structured": statistics.fmean(
                    v for k, v in scores.items() if k.split("-")[0] in ("chart", "doc")
                ),
                "overall": statistics.fmean(scores.values()),
            }
            truth[(exp, seed)] = aggregates
            run = root / "runs" / "tbi-mllm" / f"{exp}-seed{seed}"
            run.mkdir(parents=True)
            result = {"status": "done", "suite": "tbi-mllm", "id": exp, "seed": seed, "scores": scores,
                      "aggregates": aggregates, "seconds_per_sample": 0.1 + 0.01 * i, "peak_rss_mb": 500.0}  # fmt: skip
            (run / "result.json").write_text(json.dumps(result))
            (run / "log.jsonl").write_text(
                "".join(json.dumps({"loss": 5.0 - s / 10, "step": s}) + "\n" for s in range(5))
            )
    failed = root / "runs" / "tbi-mllm" / "B1-seed42"
    failed.mkdir(parents=True)
    (failed / "result.json").write_text(json.dumps({"status": "failed", "suite": "tbi-mllm", "id": "B1", "seed": 42,
                                                    "error": "needs model.vision.rope_2d"}))  # fmt: skip
    return truth


@pytest.mark.slow
def test_report_from_fake_runs(tmp_path):
    truth = _fake_runs(tmp_path, random.Random(3))
    report = write_report(tmp_path)
    assert set(collect_results(tmp_path)["tbi-mllm"]) == {*EXPS, "B1"}
    with (report / "results-tbi-mllm.csv").open() as f:
        rows = {r["experiment"]: r for r in csv.DictReader(f)}
    overall = [truth[("F4", s)]["overall"] for s in SEEDS]
    assert rows["F4"]["overall"] == f"{statistics.fmean(overall):.4f} ± {statistics.stdev(overall):.4f}"
    assert rows["B1"]["status"] == "failed" and rows["B1"]["overall"] == "—"

    text = (report / "report.md").read_text()
    # paired t-test against A1 on Overall, Bonferroni over the 6 tested variants (B1 has no done run)
    a1 = [truth[("A1", s)]["overall"] for s in SEEDS]
    d4 = [truth[("D4", s)]["overall"] for s in SEEDS]
    ref = stats.ttest_rel(d4, a1)
    section = text.split("### Paired t-tests")[1]
    line = next(line for line in section.splitlines() if line.startswith("| D4 | 3 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert float(cells[4]) == pytest.approx(ref.pvalue, rel=1e-3)
    assert float(cells[5]) == pytest.approx(min(1.0, ref.pvalue * 6), rel=1e-3)
    # synergy E2 - (B3 + C2 - A1) on seed means
    mean = {e: statistics.fmean(truth[(e, s)]["overall"] for s in SEEDS) for e in EXPS}
    expected = mean["E2"] - (mean["B3"] + mean["C2"] - mean["A1"])
    assert f"E2 − (B3 + C2 − A1) = {expected:+.4f}" in text
    # criteria are evaluated, never assumed: F4's Korean average is below 0.68 here
    f4_ko = statistics.fmean(truth[("F4", s)]["korean"] for s in SEEDS)
    assert f4_ko < 0.68 and "**not met**: Korean VQA" in text
    assert "**met**: Efficient inference" in text  # F4 0.16 s vs A1 0.11 s per sample: within 2x
    assert "B1 seed 42: needs model.vision.rope_2d" in text
    for png in ("heatmap", "radar", "curves", "latency"):
        assert (report / f"tbi-mllm-{png}.png").stat().st_size > 1000
    page = (report / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and 'src="http' not in page
