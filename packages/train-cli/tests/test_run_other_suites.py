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
        ("internvit-next", ["A3c"], THREE),  # spatial tokens over the PIIP multi-scale projector
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


def _naive_val_loss(model_dir, val, limit, loss_on):
    """Independent reference: one sample at a time, float64 log-softmax, mean over all supervised targets."""
    import torch

    from tbi_train.data import Collator, load_conversations
    from tbi_train.run.evaluate import load_any_vlm

    vlm = load_any_vlm(model_dir).eval()
    data = load_conversations(val)
    collate = Collator(vlm.tokenizer, vlm.image_transform, vlm.tokens_per_image, loss_on,
                       image_token=vlm.config.tokenizer.image_pad_token)  # fmt: skip
    nll = []
    with torch.no_grad():
        for i in range(min(limit, len(data))):
            b = collate([data[i]])
            logits = vlm(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                         pixel_values=b["pixel_values"], image_token_mask=b["image_token_mask"])[0]  # fmt: skip
            logp = logits.double().log_softmax(-1)  # [L, V]
            for t in range(logits.shape[0] - 1):
                target = int(b["labels"][0, t + 1])
                if target != -100:
                    nll.append(-float(logp[t, target]))
    return sum(nll) / len(nll)


@pytest.mark.slow
def test_foveated_freeze_sweep_records_val_loss_and_applies_the_rule(tmp_path):
    """F1 + F2 + F3 end to end; each records its validation loss; LR2 is skipped exactly when F1's is lowest."""
    from tbi_train.experiments import get_suite
    from tbi_train.run.runner import _results, _skip_reason

    status = ablate("foveated", only=["F1", "F2", "F3", "LR2"], preset="tiny", out=tmp_path, overrides=FEW,
                    report=False)  # fmt: skip
    runs = tmp_path / "runs" / "foveated"
    results = {r: json.loads((runs / f"{r}-seed42" / "result.json").read_text()) for r in ("F1", "F2", "F3")}
    assert all(status[f"{r}-seed42"] == "done" for r in results), status
    for result in results.values():
        assert result["val_loss_on"] == "all_text" and result["val_tokens"] > 0 and result["val_samples"] == 4
        assert 0 < result["val_loss"] < 50
    rows = [json.loads(line) for line in (runs / "F1-seed42" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["question"] and r["language"] in ("ko", "en") for r in rows)
    assert all(os.path.isfile(r["image"]) and r["benchmark"].endswith(r["language"]) for r in rows)
    # the recorded loss is the mean token CE under teacher forcing (independent float64 recomputation)
    f1 = results["F1"]
    model = tmp_path / "store" / f1["final_key"] / "final"
    val = next((tmp_path / "data").rglob("val.json"))
    reference = _naive_val_loss(model, val, 4, "all_text")
    assert f1["val_loss"] == pytest.approx(reference, rel=1e-4)
    # the rule the runner applied agrees with the recorded losses
    losses = {r: results[r]["val_loss"] for r in results}
    f1_wins = losses["F1"] < min(losses["F2"], losses["F3"])
    assert status["LR2-seed42"] == ("skipped" if f1_wins else "done"), losses
    reason = _skip_reason(get_suite("foveated").rules, "LR2", _results(tmp_path, "foveated", 42))
    assert (reason is not None) == f1_wins
