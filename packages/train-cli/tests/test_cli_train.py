"""`tbi train`, `tbi generate`, `tbi data`: thin commands over the library, errors as one red line."""

import json
import os

import pytest
from PIL import Image
from typer.testing import CliRunner

from tbi_train.cli import app

os.environ.setdefault("HF_HUB_OFFLINE", "1")


pytestmark = pytest.mark.usefixtures("one_thread")


def _data(root):
    (root / "images").mkdir()
    records = []
    for i, (answer, rgb) in enumerate(
        [("red", (220, 30, 30)), ("파란색", (30, 70, 220)), ("green", (30, 150, 60))]
    ):
        Image.new("RGB", (16, 16), rgb).save(root / "images" / f"{i}.png")
        records.append(
            {
                "id": f"c{i}",
                "image": f"images/{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nColour?"},
                    {"from": "gpt", "value": answer},
                ],
                "answers": [answer],
            }
        )
    (root / "d.json").write_text(json.dumps(records, ensure_ascii=False))
    return root / "d.json"


def test_config_errors_are_one_line_with_the_suggestion(tmp_path):
    result = CliRunner().invoke(app, ["train", "tiny", "--out", str(tmp_path / "r"), "model.lm.num_layer=2"])
    assert result.exit_code == 1
    assert "error:" in result.output and "Did you mean 'model.lm.num_layers'?" in result.output
    assert not (tmp_path / "r").exists()
    result = CliRunner().invoke(app, ["train", "--preset", "tinny"])
    assert result.exit_code == 1 and "Did you mean 'tiny'?" in result.output


def test_missing_checkpoints_fail_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("TBI_MODEL_ROOT", str(tmp_path / "models"))
    out = tmp_path / "r"
    result = CliRunner().invoke(app, ["train", "clip-l336-qwen3-8b", "--out", str(out)])
    assert result.exit_code == 1
    assert "model.vision.path=" in result.output and "is not a folder" in result.output
    assert not out.exists()


def test_data_check_reports_bad_samples(tmp_path):
    path = _data(tmp_path)
    records = json.loads(path.read_text())
    records[1]["image"] = "images/missing.png"
    path.write_text(json.dumps(records))
    result = CliRunner().invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 1 and "c1" in result.output


@pytest.mark.slow
def test_train_then_generate_then_resume_through_the_cli(tmp_path):
    data = _data(tmp_path)
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--seed", "3", "--out", str(out), f"data.train={data}", f"data.val={data}",
            "phases.0.steps=1", "phases.1.steps=1", "phases.2.steps=1", "eval.limit=2", "eval.max_new_tokens=2"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "final model:" in result.output and "exact_match" in result.output
    assert json.loads((out / "config.json").read_text())["seed"] == 3

    preds = tmp_path / "preds.jsonl"
    args_gen = ["generate", str(out / "final"), "--data", str(data), "--out", str(preds), "--limit", "2",
                "--max-new-tokens", "3"]  # fmt: skip
    result = CliRunner().invoke(app, args_gen)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["c0", "c1"] and all(isinstance(r["prediction"], str) for r in rows)
    assert "token_f1" in result.output

    result = CliRunner().invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "--resume" in result.output
