"""A slice of the tiny tbi-mllm ablation end to end: shared phases train once, reruns skip, failures recorded."""

import json
import logging
import os
import shutil

import pytest

from tbi_train.errors import TrainError
from tbi_train.report import write_report
from tbi_train.run import ablate, load_any_vlm

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FEW_STEPS = [
    "phases.0.steps=2", "phases.1.steps=2", "phases.2.steps=2",
    "phases.0.warmup_steps=0", "phases.1.warmup_steps=0", "phases.2.warmup_steps=0",
    "eval.limit=6", "eval.max_new_tokens=3", "eval.at_start=false", "data.synthetic_n=100",
    "checkpoint.every_steps=0",
]  # fmt: skip


@pytest.mark.slow
def test_tiny_slice_end_to_end(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="tbi_train")

    def planted_failure(*args, **kwargs):  # only B1 modernises its tower: it must fail alone and be recorded
        raise TrainError("planted failure in modernize")

    monkeypatch.setattr("tbi_train.model.vision._modernize", planted_failure)
    status = ablate(
        "tbi-mllm", only=["A0", "A1", "D2", "D4", "B1"], preset="tiny", out=tmp_path, overrides=FEW_STEPS
    )
    assert status == {"A0-seed42": "done", "A1-seed42": "done", "D4-seed42": "done", "B1-seed42": "failed",
                      "D2-seed42": "done"}  # fmt: skip
    computed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("compute ")]
    computed = [m for m in computed if not m.endswith("B1-seed42")]  # B1's own (2D-RoPE) phases differ
    # phases 1-2 are shared by A1, D2, D4 and the English model by D2 and D4: each is trained once
    for name in ("projector_pretrain", "vision_projector", "source_en"):
        assert sum(m.startswith(f"compute {name} ") for m in computed) == 1, computed
    runs = tmp_path / "runs" / "tbi-mllm"
    d4 = json.loads((runs / "D4-seed42" / "result.json").read_text())
    reused = {s["name"]: s["reused"] for s in d4["steps"]}
    assert reused == {"projector_pretrain": True, "vision_projector": True, "source_en": False, "korean_ft": False,
                      "merge": False, "mole": False}  # fmt: skip
    d2 = json.loads((runs / "D2-seed42" / "result.json").read_text())  # runs after D4 (critical path)
    assert {s["name"]: s["reused"] for s in d2["steps"]}["source_en"] is True
    assert set(d4["aggregates"]) >= {"korean", "english", "overall"}
    b1 = json.loads((runs / "B1-seed42" / "result.json").read_text())
    assert "planted failure" in b1["error"]
    store = tmp_path / "store"
    merge_report = json.loads((store / d4["steps"][4]["key"] / "model" / "merge_report.json").read_text())
    assert merge_report
    mole = load_any_vlm(store / d4["final_key"] / "model")
    assert any(".mlp.router." in n for n, _ in mole.named_parameters())

    caplog.clear()
    again = ablate("tbi-mllm", only=["A1", "D4"], preset="tiny", out=tmp_path, overrides=FEW_STEPS)
    assert again == {"A1-seed42": "done", "D4-seed42": "done"}
    assert not [r for r in caplog.records if r.getMessage().startswith("compute ")]

    # an unfinished step resumes from its last complete checkpoint: A1's decoder phase, interrupted
    a1 = json.loads((runs / "A1-seed42" / "result.json").read_text())
    key = a1["final_key"]
    partial = store / f".partial-{key}"
    (store / key).rename(partial)
    for path in [partial / "DONE.json", *partial.glob("checkpoints/02-*")]:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    shutil.rmtree(partial / "final")
    (runs / "A1-seed42" / "result.json").unlink()
    caplog.clear()
    assert ablate("tbi-mllm", only=["A1"], preset="tiny", out=tmp_path, overrides=FEW_STEPS) == {
        "A1-seed42": "done"
    }
    messages = [r.getMessage() for r in caplog.records]
    assert [m.split()[1] for m in messages if m.startswith("compute ")] == ["decoder_ft"]
    assert load_any_vlm(runs / "A1-seed42").tokens_per_image > 0  # a run folder points at its final model

    report = write_report(tmp_path)
    text = (report / "report.md").read_text()
    assert "| D4 | 1 | done |" in text and "B1 seed 42" in text
    assert "data:image/png;base64," in (report / "report.html").read_text()
