"""`tbi report`'s efficiency section from real tiny profiles (internvit-next A0, A1, A2 at 64 and 128 px):
table values = the profile JSON's numbers, seed 001's criteria = verdicts recomputed here from those numbers."""

from __future__ import annotations

import base64
import csv
import json
import os

import pytest
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tbi_train.cli import app
from tbi_train.errors import TrainError
from tbi_train.experiments import resolve_experiment
from tbi_train.report import write_report
from tbi_train.report.efficiency import profile_file, record_profile

SUITE = "internvit-next"
BUDGET_GB = 0.00172  # 1.76 MiB: ~70 KB above the tiny pipelines' totals at 64 px, ~70 KB below 128 px


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for exp in ("A0", "A2"):  # through `tbi profile --json`, both in the same memory budget
        target = profile_file(root, SUITE, exp)  # its folder does not exist yet: `--json` makes it
        args = ["profile", f"{SUITE}/{exp}", "--preset", "tiny", "--resolutions", "64,128", "--repeats", "1",
                "--memory-budget", str(BUDGET_GB), "--json", str(target)]  # fmt: skip
        result = CliRunner().invoke(app, args, terminal_width=250)
        assert result.exit_code == 0, result.output
    # what `tbi ablate --profile` records: the resolved config, no budget
    record_profile(resolve_experiment(f"{SUITE}/A1", preset="tiny", seed=42), root, (64, 128), repeats=1)
    return root


def _profiles(root):
    return {e: json.loads(profile_file(root, SUITE, e).read_text()) for e in ("A0", "A1", "A2")}


def _table(text, heading):
    section = text.split(heading, 1)[1].split("\n#")[0]
    rows = [line.strip().strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in r] for r in rows[1:]]


def _ratio_status(exp_rows, ref_rows, key, limit):
    ref = {r["resolution"]: r[key] for r in ref_rows}
    ratios = [r[key] / ref[r["resolution"]] for r in exp_rows if r["resolution"] in ref]
    return "met" if all(x <= limit for x in ratios) else "not met"


def _resolution_status(exp, ref):
    if exp["memory_budget_bytes"] is None or ref["memory_budget_bytes"] is None:
        return "undetermined"
    cand, base = exp["candidate_max"], ref["candidate_max"]
    ratio = cand["resolution"] / base["resolution"]
    if base["kind"] == "exact" and ratio >= 2:
        return "met"
    if cand["kind"] == "exact" and ratio < 2:
        return "not met"
    return "undetermined"


def test_report_efficiency_section_matches_profiles(runs):
    profiles = _profiles(runs)
    assert profiles["A1"]["target"] == f"{SUITE}/A1" and profiles["A2"]["memory_budget_bytes"] is not None
    report = write_report(runs)
    text = (report / "report.md").read_text(encoding="utf-8")

    rows = _table(text, f"## Efficiency profile: {SUITE}")
    expected = []
    for exp, data in sorted(profiles.items()):
        for r in sorted(data["candidate_rows"], key=lambda r: r["resolution"]):
            expected.append([exp, str(r["resolution"]), str(r["visual_tokens"]), f"{r['vision_flops'] / 1e9:.4g}",
                             f"{r['projector_flops'] / 1e9:.4g}", f"{r['lm_prefill_flops'] / 1e9:.4g}",
                             f"{r['peak_activation_bytes'] / 2**20:.2f}", f"{r['vision_ms']:.2f}",
                             f"{r['projector_ms']:.2f}", f"{r['lm_prefill_ms']:.2f}"])  # fmt: skip
    assert rows == expected and len(rows) == 6
    with (report / f"efficiency-{SUITE}.csv").open() as handle:
        exact = {(r["experiment"], r["pipeline"], int(r["resolution"])): r for r in csv.DictReader(handle)}
    for exp, data in profiles.items():
        for pipeline in ("candidate", "baseline"):
            for r in data[f"{pipeline}_rows"]:
                row = exact[(exp, pipeline, r["resolution"])]
                assert (
                    int(row["vision_flops"]) == r["vision_flops"]
                    and int(row["visual_tokens"]) == r["visual_tokens"]
                )
                assert float(row["lm_prefill_ms"]) == r["lm_prefill_ms"]

    verdicts = {(r[0], r[1]): r[3] for r in _table(text, "### Seed 001 efficiency criteria vs A0")}
    ref = profiles["A0"]
    assert {e for e, _ in verdicts} == {"A1", "A2"}  # A0 is the reference, not judged against itself
    for exp in ("A1", "A2"):
        data = profiles[exp]
        assert verdicts[(exp, "vision FLOPs vs vanilla")] == _ratio_status(
            data["candidate_rows"], ref["candidate_rows"], "vision_flops", 0.70
        )
        assert verdicts[(exp, "tokens per image vs current")] == _ratio_status(
            data["candidate_rows"], ref["candidate_rows"], "visual_tokens", 0.80
        )
        assert verdicts[(exp, "max practical resolution vs vanilla")] == _resolution_status(data, ref)
    # same projector as A0: 100% of its tokens; A1 was profiled without a budget
    assert verdicts[("A2", "tokens per image vs current")] == "not met"
    assert verdicts[("A1", "max practical resolution vs vanilla")] == "undetermined"
    assert verdicts[("A2", "max practical resolution vs vanilla")] != "undetermined"

    page = (report / "report.html").read_text(encoding="utf-8")
    png = report / f"{SUITE}-efficiency.png"
    assert png.stat().st_size > 1000 and base64.b64encode(png.read_bytes()).decode() in page
    assert "Seed 001 efficiency criteria vs A0" in page


def test_report_without_a0_falls_back_to_the_own_vanilla_tower(runs, tmp_path):
    folder = profile_file(tmp_path, SUITE, "A2")
    folder.parent.mkdir(parents=True)
    data = _profiles(runs)["A2"]
    folder.write_text(json.dumps(data))
    text = (write_report(tmp_path) / "report.md").read_text(encoding="utf-8")
    verdicts = {r[1]: r for r in _table(text, "### Seed 001 efficiency criteria vs A0")}
    assert verdicts["tokens per image vs current"][3] == "undetermined"  # "current" needs A0's projector
    flops = verdicts["vision FLOPs vs vanilla"]
    assert "own vanilla tower" in flops[5]
    assert flops[3] == _ratio_status(data["candidate_rows"], data["baseline_rows"], "vision_flops", 0.70)


def test_bad_profile_names_the_file_and_key(tmp_path):
    bad = profile_file(tmp_path, SUITE, "A2")
    bad.parent.mkdir(parents=True)
    bad.write_text(json.dumps({"resolutions": [64], "candidate_rows": [], "baseline_rows": []}))
    with pytest.raises(TrainError, match=r"A2\.json: key 'memory_budget_bytes' is missing"):
        write_report(tmp_path)
    bad.write_text("{")
    with pytest.raises(TrainError, match=r"A2\.json: not valid JSON"):
        write_report(tmp_path)


def test_ablate_profiles_each_experiment_once(tmp_path, monkeypatch):
    from tbi_train.report import efficiency
    from tbi_train.run import runner

    def fake_run(resolved, out, *args):
        run = out / "runs" / resolved.suite / f"{resolved.id}-seed{resolved.seed}"
        run.mkdir(parents=True, exist_ok=True)
        (run / "result.json").write_text(json.dumps({"status": "done", "id": resolved.id}))

    calls = []

    def fake_profile(resolved, out, sides):
        calls.append((resolved.id, resolved.seed, tuple(sides)))
        profile_file(out, resolved.suite, resolved.id).parent.mkdir(parents=True, exist_ok=True)
        profile_file(out, resolved.suite, resolved.id).write_text("{}")

    monkeypatch.setattr(runner, "run_resolved", fake_run)
    monkeypatch.setattr(efficiency, "record_profile", fake_profile)
    status = runner.ablate(SUITE, seeds=[42, 123], only=["A0", "A1"], preset="tiny", out=tmp_path,
                           report=False, profile=(64, 128))  # fmt: skip
    assert set(status.values()) == {"done"}
    assert calls == [("A0", 42, (64, 128)), ("A1", 42, (64, 128))]  # once per experiment, not per seed
    calls.clear()
    runner.ablate(SUITE, only=["A0"], preset="tiny", out=tmp_path / "off", report=False)
    assert calls == []
