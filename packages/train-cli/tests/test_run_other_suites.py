"""Every row of tbi-mllm, and two rows of each other suite, run end to end on the tiny preset (few steps)."""

import json
import os

import pytest

from tbi_train.run import ablate

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FEW = ["phases.0.steps=2", "phases.0.warmup_steps=0", "eval.limit=4", "eval.max_new_tokens=2", "eval.at_start=false",
       "data.synthetic_n=60", "checkpoint.every_steps=0"]  # fmt: skip
TWO = [*FEW, "phases.1.steps=2", "phases.1.warmup_steps=0"]
THREE = [*TWO, "phases.2.steps=2", "phases.2.warmup_steps=0"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("suite", "rows", "overrides"),
    [
        ("cmba", ["U111", "P141"], THREE),
        ("foveated", ["A6", "B1"], TWO),
        ("ko-video-caption", ["E1", "E2"], THREE),
        ("internvit-next", ["A0", "A2"], THREE),
    ],
)
def test_suite_rows_run(tmp_path, suite, rows, overrides):
    status = ablate(suite, only=rows, preset="tiny", out=tmp_path, overrides=overrides)
    assert status == {f"{r}-seed42": "done" for r in rows}, [
        json.loads(p.read_text()).get("error") for p in (tmp_path / "runs" / suite).glob("*/result.json")
    ]
    for row in rows:
        result = json.loads((tmp_path / "runs" / suite / f"{row}-seed42" / "result.json").read_text())
        assert "overall" in result["aggregates"] and result["seconds_per_sample"] > 0


@pytest.mark.slow
def test_every_tbi_mllm_row_runs(tmp_path):
    status = ablate("tbi-mllm", preset="tiny", out=tmp_path, overrides=THREE)
    expected = [
        "A0",
        "A1",
        "B1",
        "B2",
        "B3",
        "C1",
        "C2",
        "D1",
        "D2",
        "D3",
        "D4",
        "E1",
        "E2",
        "F1",
        "F2",
        "F3",
        "F4",
    ]
    assert status == {f"{r}-seed42": "done" for r in expected}, [
        json.loads(p.read_text()).get("error") for p in (tmp_path / "runs" / "tbi-mllm").glob("*/result.json")
    ]
    assert (tmp_path / "report" / "report.html").is_file()
