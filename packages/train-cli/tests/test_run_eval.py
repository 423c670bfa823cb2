"""`tbi eval` path: a saved VLM answers small files in the benchmarks' official formats, scored by tbi-evalbench."""

import json
import os

import pytest
from PIL import Image

from tbi_train.config import get_preset
from tbi_train.model import build_vlm, save_vlm
from tbi_train.run import evaluate_benchmarks

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.mark.slow
def test_eval_writes_predictions_scores_and_latency(tmp_path):
    cfg = get_preset("tiny")
    save_vlm(build_vlm(cfg.model, cache_dir=tmp_path, corpus=["what is written 무엇"]), tmp_path / "vlm")
    (tmp_path / "img").mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (40 * i, 80, 120)).save(tmp_path / "img" / f"d{i}.png")
    docvqa = {"data": [{"questionId": i, "question": "What is the title?", "answers": ["report"], "image": f"d{i}.png"}
                       for i in range(3)]}  # fmt: skip
    (tmp_path / "docvqa.json").write_text(json.dumps(docvqa))
    scores_file = evaluate_benchmarks(tmp_path / "vlm", {"docvqa": tmp_path / "docvqa.json"}, tmp_path / "eval",
                                      limit=2, max_new_tokens=3, image_root=tmp_path / "img")  # fmt: skip
    scores = json.loads(scores_file.read_text())["docvqa"]
    assert scores["metric"] == "anls" and scores["compat"] == "official" and scores["n"] == 2
    assert 0.0 <= scores["score"] <= 1.0 and scores["samples_per_second"] > 0
    rows = [
        json.loads(line) for line in (tmp_path / "eval" / "docvqa.predictions.jsonl").read_text().splitlines()
    ]
    assert [r["id"] for r in rows] == ["0", "1"] and rows[0]["answers"] == ["report"]


def test_benchmark_names_and_aggregates():
    from tbi_train.run import benchmark_aggregates

    scores = {"docvqa": {"score": 0.8}, "chartqa": {"score": 0.6}, "kdtcbench": {"score": 0.5},
              "mmbench:ko": {"score": 0.3}, "mmbench": {"score": 0.7}}  # fmt: skip
    named, groups = benchmark_aggregates(scores)
    assert named == {"DocVQA": 0.8, "ChartQA": 0.6, "K-DTCBench": 0.5, "MMBench-KO": 0.3, "MMBench-EN": 0.7}
    assert groups["korean"] == pytest.approx((0.5 + 0.3) / 2)  # K-DTCBench, MMBench-KO (KoMM-Bench absent)
    assert groups["english"] == pytest.approx((0.7 + 0.8 + 0.6) / 3)
    assert groups["structured"] == pytest.approx((0.6 + 0.8) / 2)
    assert groups["overall"] == pytest.approx(sum(named.values()) / 5)


@pytest.mark.slow
def test_suite_run_scored_on_official_files(tmp_path):
    from tbi_train.run import ablate

    (tmp_path / "img").mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32), (200, 40 * i, 40)).save(tmp_path / "img" / f"c{i}.png")
    chart = [{"imgname": f"img/c{i}.png", "query": "What is the value?", "label": "12"} for i in range(2)]
    (tmp_path / "chartqa.json").write_text(json.dumps(chart))
    overrides = ["eval.limit=2", "eval.max_new_tokens=2", "data.synthetic_n=40"]
    status = ablate("tbi-mllm", only=["A0"], preset="tiny", out=tmp_path / "out", overrides=overrides,
                    benchmarks={"chartqa": tmp_path / "chartqa.json"}, report=False)  # fmt: skip
    assert status == {"A0-seed42": "done"}
    result = json.loads((tmp_path / "out" / "runs" / "tbi-mllm" / "A0-seed42" / "result.json").read_text())
    assert set(result["scores"]) == {"ChartQA"} and "structured" in result["aggregates"]
    assert (
        set(result["val_scores"])
        and (
            tmp_path / "out" / "runs" / "tbi-mllm" / "A0-seed42" / "eval" / "chartqa.predictions.jsonl"
        ).is_file()
    )
