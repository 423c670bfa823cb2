"""The suite commands of `tbi`: each parses, calls its function and prints; errors exit 1 with a message."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tbi_train.cli import app

runner = CliRunner()


def test_experiments_list_and_show():
    listed = runner.invoke(app, ["experiments", "list", "cmba"], terminal_width=200)
    assert listed.exit_code == 0, listed.output
    assert "cmba" in listed.output
    shown = runner.invoke(app, ["experiments", "show", "F4", "--preset", "tiny"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    assert "F4" in shown.output


def test_unknown_suite_is_a_clear_error():
    result = runner.invoke(app, ["experiments", "list", "tbi-mlm"])
    assert result.exit_code == 1
    assert "tbi-mlm" in result.output


def test_plan_suite_prints_gpu_days():
    result = runner.invoke(app, ["plan", "tbi-mllm"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "GPU" in result.output


def test_bad_seed_list_is_rejected_before_running(tmp_path):
    result = runner.invoke(app, ["ablate", "tbi-mllm", "--seeds", "4x", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_profile_writes_json_with_criteria(tmp_path):
    out = tmp_path / "profile.json"
    args = ["profile", "internvit-next/A2", "--preset", "tiny", "--resolutions", "64,96", "--repeats", "1"]
    result = runner.invoke(app, [*args, "--json", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [row["resolution"] for row in data["candidate_rows"]] == [64, 96]
    assert {c["status"] for c in data["criteria"]} <= {"met", "not met", "undetermined"}


def test_plan_hardware_prints_the_memory_table_and_the_cheapest_fit():
    config = Path(__file__).parent / "data" / "internvl2_5_8b_config.json"
    result = runner.invoke(app, ["plan", str(config), "--hardware", "2xA100-40GB"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "ZeRO-2" in result.output and "offload" in result.output


def test_several_processes_need_a_launcher(tmp_path):
    result = runner.invoke(app, ["train", "tiny", "--nproc", "2", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "--launcher torchrun" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_tbi_train_on_two_processes_through_torchrun(tmp_path):
    steps = [f"phases.{i}.steps=1" for i in range(3)] + [f"phases.{i}.warmup_steps=0" for i in range(3)]
    args = ["train", "tiny", *steps, "data.synthetic_n=24", "eval.limit=2", "eval.max_new_tokens=2"]
    args += ["eval.at_start=false", "checkpoint.every_steps=0", "--launcher", "torchrun", "--nproc", "2"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "run")], terminal_width=200)
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["world_size"] == 2
