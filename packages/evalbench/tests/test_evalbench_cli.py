"""`python -m tbi_evalbench score ...`: formats, every metric name, line-numbered errors, atomic output."""

import json
import os
import subprocess
import sys

import pytest

from tbi_evalbench.cli import main
from tbi_evalbench.metrics import METRIC_NAMES


def _write(path, rows):
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
        encoding="utf-8",
    )
    return path


@pytest.fixture
def vqa_files(tmp_path):
    preds = _write(
        tmp_path / "p.jsonl", [{"id": "q1", "prediction": "red"}, {"id": 2, "prediction": "Blue."}]
    )
    refs = _write(
        tmp_path / "r.jsonl",
        [{"id": 2, "answers": ["blue"] * 9 + ["navy"]}, {"id": "q1", "answers": ["red"] * 3 + ["x"] * 7}],
    )
    return preds, refs


def test_score_json_output(vqa_files, capsys):
    preds, refs = vqa_files
    assert (
        main(["score", "vqa_accuracy", "--predictions", str(preds), "--references", str(refs), "--json"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["metric"] == "vqa_accuracy" and out["compat"] == "official" and out["n"] == 2
    assert out["per_sample"] == [{"id": "q1", "score": pytest.approx(0.9)}, {"id": "2", "score": 1.0}]
    assert out["score"] == pytest.approx(0.95)
    assert out["version"] == "0.1.0" and "vqaEval" in out["scorer"]


def test_compat_flag_changes_the_number(vqa_files, capsys):
    preds, refs = vqa_files
    _write(preds, [{"id": "q1", "prediction": "Red"}, {"id": 2, "prediction": "blue"}])
    _write(refs, [{"id": "q1", "answers": ["red"] * 10}, {"id": 2, "answers": ["blue"] * 10}])
    scores = {}
    for compat in ("official", "lmms"):
        main(
            [
                "score",
                "vqa_accuracy",
                "--predictions",
                str(preds),
                "--references",
                str(refs),
                "--json",
                "--compat",
                compat,
            ]
        )
        scores[compat] = json.loads(capsys.readouterr().out)["score"]
    assert scores == {"official": 0.5, "lmms": 1.0}


@pytest.mark.parametrize("metric", [m for m in METRIC_NAMES if m != "bertscore"])
def test_every_metric_runs_from_the_cli(metric, tmp_path, capsys):
    mc = metric in ("mc_accuracy", "circular_accuracy")
    preds = _write(
        tmp_path / "p.jsonl", [{"id": "1", "prediction": "B"}, {"id": "1000001", "prediction": "답: A"}]
    )
    ref = {"choices": {"A": "x", "B": "y"}} if mc else {}
    refs = _write(
        tmp_path / "r.jsonl",
        [{"id": "1", **ref, **({"answer": "B"} if mc else {"answers": ["B", "a b"]})},
         {"id": "1000001", **ref, **({"answer": "A"} if mc else {"answers": ["A"]})}],
    )  # fmt: skip
    code = main(["score", metric, "--predictions", str(preds), "--references", str(refs), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["metric"] == metric
    assert out["n"] == (1 if metric == "circular_accuracy" else 2)
    if mc:
        assert out["score"] == 1.0


@pytest.mark.parametrize(
    ("pred_rows", "ref_rows", "message"),
    [
        (["{not json"], [{"id": "a", "answers": ["x"]}], "p.jsonl:1: not valid JSON"),
        ([{"id": "a", "prediction": "x"}, {"id": "a", "prediction": "y"}], [{"id": "a", "answers": ["x"]}],
         "p.jsonl:2: duplicate id 'a' (first on line 1)"),
        ([{"id": "a", "prediction": 3}], [{"id": "a", "answers": ["x"]}], "p.jsonl:1: id 'a': 'prediction' must be a string"),
        ([{"id": "a", "prediction": "x"}, {"id": "b", "prediction": "y"}], [{"id": "a", "answers": ["x"]}],
         "p.jsonl:2: id 'b' has no reference"),
        ([{"id": "a", "prediction": "x"}], [{"id": "a", "answers": ["x"]}, {"id": "z", "answers": ["x"]}],
         "r.jsonl:2: id 'z' has no prediction"),
        ([{"id": "a", "prediction": "x"}], [{"id": "a", "answers": "x"}], "r.jsonl:1: id 'a': 'answers' must be a non-empty list"),
        ([{"prediction": "x"}], [{"id": "a", "answers": ["x"]}], "p.jsonl:1: missing key 'id'"),
        ([{"id": [1], "prediction": "x"}], [{"id": "a", "answers": ["x"]}], "p.jsonl:1: 'id' must be a string or an integer"),
    ],
)  # fmt: skip
def test_bad_input_names_file_line_and_id(tmp_path, capsys, pred_rows, ref_rows, message):
    preds, refs = _write(tmp_path / "p.jsonl", pred_rows), _write(tmp_path / "r.jsonl", ref_rows)
    out_file = tmp_path / "out.json"
    code = main(
        ["score", "anls", "--predictions", str(preds), "--references", str(refs), "--output", str(out_file)]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not out_file.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "r.jsonl"]


def test_mc_reference_errors(tmp_path, capsys):
    preds = _write(tmp_path / "p.jsonl", [{"id": "x", "prediction": "A"}])
    refs = _write(tmp_path / "r.jsonl", [{"id": "x", "choices": {"A": "1"}, "answer": "C"}])
    assert main(["score", "mc_accuracy", "--predictions", str(preds), "--references", str(refs)]) == 2
    assert "r.jsonl:1: id 'x': 'answer' must be one of the choice letters ['A']" in capsys.readouterr().err
    assert main(["score", "circular_accuracy", "--predictions", str(preds), "--references", str(refs)]) == 2


def test_output_file_written_atomically(vqa_files, tmp_path, capsys):
    preds, refs = vqa_files
    out_file = tmp_path / "res" / "vqa.json"
    assert (
        main(
            [
                "score",
                "vqa_accuracy",
                "--predictions",
                str(preds),
                "--references",
                str(refs),
                "--output",
                str(out_file),
            ]
        )
        == 0
    )
    assert "vqa_accuracy (official): 0.95" in capsys.readouterr().out
    assert json.loads(out_file.read_text())["score"] == pytest.approx(0.95)
    assert [p.name for p in out_file.parent.iterdir()] == ["vqa.json"]


def test_module_entry_point(vqa_files):
    preds, refs = vqa_files
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    run = subprocess.run(
        [sys.executable, "-m", "tbi_evalbench", "score", "anls", "--predictions", str(preds), "--references", str(refs), "--json"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["metric"] == "anls"
    with pytest.raises(SystemExit) as exc:
        main(["score", "nope"])
    assert exc.value.code == 2
