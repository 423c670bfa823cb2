"""`tbi merge` is tbi-merging's own command line, passed through: same options, same results, same errors."""

import json

import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from tbi_train.cli import app


def _checkpoint(path, tensors):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "toy"}))
    save_file(tensors, path / "model.safetensors")
    return path


def test_tbi_merge_task_arithmetic_matches_the_formula(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(3, 5, generator=g), "b": torch.randn(5, generator=g)}
    en = {k: v + torch.randn(v.shape, generator=g) for k, v in base.items()}
    ko = {k: v + torch.randn(v.shape, generator=g) for k, v in base.items()}
    paths = [_checkpoint(tmp_path / n, t) for n, t in [("base", base), ("en", en), ("ko", ko)]]
    out = tmp_path / "out"
    args = [
        "merge",
        "--base",
        str(paths[0]),
        "--model",
        f"en={paths[1]}:0.6",
        "--model",
        f"ko={paths[2]}:0.4",
    ]
    args += ["--method", "task_arithmetic", "--no-normalize", "--out", str(out), "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    merged = load_file(out / "model.safetensors")
    for k in base:
        expected = base[k].double() + 0.6 * (en[k] - base[k]).double() + 0.4 * (ko[k] - base[k]).double()
        torch.testing.assert_close(merged[k].double(), expected, atol=1e-6, rtol=0)


def test_tbi_merge_reports_bad_input_and_exits_non_zero(tmp_path):
    result = CliRunner().invoke(
        app, ["merge", "--base", str(tmp_path / "nope"), "--model", "a=x:1", "--out", "o"]
    )
    assert result.exit_code == 2
    assert "nope" in result.output and not (tmp_path / "o").exists()
