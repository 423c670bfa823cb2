"""eval.benchmarks: tbi-evalbench benchmark files scored at every eval point of a training run."""

import json
import os

import pytest
from PIL import Image

import tbi_train.train.evaluation as evaluation
from tbi_train.config import resolve_config
from tbi_train.errors import TrainError
from tbi_train.run import evaluate_benchmarks
from tbi_train.train import train

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GOLD = ["report", "invoice", "2019", "서울"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, write_colour_data):
    root = write_colour_data(tmp_path_factory.mktemp("bench"), "b")
    docs = root / "docvqa"
    docs.mkdir()
    for i in range(4):
        Image.new("RGB", (40, 30), (200, 60 * i, 40)).save(docs / f"doc{i}.png")
    rows = [{"questionId": 10 + i, "question": f"What is field {i}?", "answers": [GOLD[i]], "image": f"doc{i}.png"}
            for i in range(4)]  # fmt: skip
    (docs / "val_v1.0.json").write_text(json.dumps({"data": rows}, ensure_ascii=False))
    return root


def _cfg(root, *extra):
    overrides = [f"data.train={root / 'train.json'}", f"data.val={root / 'val.json'}", "eval.limit=4",
                 "eval.max_new_tokens=3", "eval.batch_size=4", "checkpoint.every_steps=0", "phases.0.steps=1",
                 "phases.1.steps=1", "phases.2.steps=1", *extra]  # fmt: skip
    overrides += [f"phases.{p}.{k}" for p in range(3) for k in ("batch_size=4", "warmup_steps=0")]
    return resolve_config("tiny", overrides=overrides)


@pytest.mark.slow
def test_benchmark_scored_at_every_eval_point_like_tbi_eval(files, tmp_path, monkeypatch):
    """Eval points 1-3 get crafted answers (k of 4 right -> ANLS k/4, so the loader, the question order and
    the official scorer are all on the path); the last answers for real and must equal `tbi eval` on final/."""
    real = evaluation.generate
    calls, last = [], {}

    def answer(vlm, questions, **options):
        calls.append(questions)
        k = len(calls) - 1
        if k < 3:
            return [GOLD[i] if i < k + 1 else "zzzz" for i in range(len(questions))]
        last["answers"] = real(vlm, questions, **options)
        return last["answers"]

    monkeypatch.setattr(evaluation, "generate", answer)
    cfg = _cfg(files, f"eval.benchmarks.docvqa={files / 'docvqa' / 'val_v1.0.json'}")
    run = tmp_path / "run"
    train(cfg, run)

    evals = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"eval"' in line]
    assert [r["global_step"] for r in evals] == [0, 1, 2, 3]
    assert all(set(r["eval"]) == {"exact_match", "token_f1", "docvqa"} for r in evals)
    assert [r["eval"]["docvqa"] for r in evals[:3]] == [0.25, 0.5, 0.75]
    first = calls[0]
    assert [q.conversations[0]["value"] for q in first] == [f"<image>\nWhat is field {i}?" for i in range(4)]
    assert [q.images[0].size for q in first] == [(40, 30)] * 4

    scores = evaluate_benchmarks(run / "final", {"docvqa": files / "docvqa" / "val_v1.0.json"}, tmp_path / "eval",
                                 limit=4, max_new_tokens=3, batch_size=4)  # fmt: skip
    assert json.loads(scores.read_text())["docvqa"]["score"] == evals[3]["eval"]["docvqa"]
    rows = (tmp_path / "eval" / "docvqa.predictions.jsonl").read_text().splitlines()
    assert [json.loads(r)["prediction"] for r in rows] == last["answers"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["evals"][-1]["eval"]["docvqa"] == evals[3]["eval"]["docvqa"]


def test_benchmark_config_errors_before_anything_is_written(files, tmp_path):
    with pytest.raises(TrainError, match=r"unknown benchmark loader 'docvq'.*docvqa"):
        train(_cfg(files, f"eval.benchmarks.docvq={files / 'train.json'}"), tmp_path / "a")
    with pytest.raises(TrainError, match=r"eval.benchmarks.chartqa=.*nowhere.json does not exist"):
        train(_cfg(files, f"eval.benchmarks.chartqa={tmp_path / 'nowhere.json'}"), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
