"""The installed `tbi` command end to end on the tiny preset: synthetic data, training, merging, MoLE, report.

This is what the README's first command does (`make demo`), on a slice of tbi-mllm with very few steps.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FEW_STEPS = [
    *(f"phases.{i}.steps=2" for i in range(3)),
    *(f"phases.{i}.warmup_steps=0" for i in range(3)),
    "eval.limit=4",
    "eval.max_new_tokens=3",
    "eval.at_start=false",
    "data.synthetic_n=60",
    "checkpoint.every_steps=0",
]


def _tbi(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    tbi = shutil.which("tbi", path=str(Path(sys.executable).parent))
    assert tbi, "the tbi console script is not installed beside this Python"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([tbi, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_tbi_ablate_slice_writes_a_report(tmp_path):
    result = _tbi("-v", "ablate", "tbi-mllm", "--preset", "tiny", "--only", "A1,D4", "--out", "runs", *FEW_STEPS,
                  cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = tmp_path / "runs" / "report" / "report.html"
    assert f"report: {Path('runs') / 'report' / 'report.html'}" in result.stdout
    html = report.read_text(encoding="utf-8")
    assert "A1" in html and "D4" in html and "data:image/png;base64," in html
    assert "compute vision_projector" in result.stderr  # the shared phases are trained once ...
    assert result.stderr.count("compute vision_projector") == 1
    # ... and a second call finds both runs finished and trains nothing.
    again = _tbi("-v", "ablate", "tbi-mllm", "--preset", "tiny", "--only", "A1,D4", "--out", "runs", *FEW_STEPS,
                 cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "compute " not in again.stdout + again.stderr


def test_tbi_reports_a_config_error_with_a_suggestion(tmp_path):
    result = _tbi("train", "tiny", "model.lm.num_layer=2", cwd=tmp_path)
    assert result.returncode == 1
    assert "num_layers" in result.stdout + result.stderr
    assert not (tmp_path / "runs").exists()
