"""A NaN/Inf loss stops the run naming the step and batch ids, or skips that step, per `nonfinite_loss`."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

import tbi_train.train.run as run_module
from tbi_train.config import resolve_config
from tbi_train.errors import TrainError
from tbi_train.model import build_vlm
from tbi_train.train import DataOrder, train

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def data(tmp_path_factory, write_colour_data):
    return write_colour_data(tmp_path_factory.mktemp("nan-data"), "n") / "train.json"


def _cfg(data, policy):
    overrides = [f"data.train={data}", "eval.at_start=false", "eval.limit=0", f"nonfinite_loss={policy}",
                 "checkpoint.every_steps=0", "phases.0.steps=2", "phases.1.steps=1", "phases.2.steps=1"]  # fmt: skip
    overrides += [f"phases.{p}.{k}" for p in range(3) for k in ("batch_size=4", "warmup_steps=0")]
    return resolve_config("tiny", overrides=overrides)


def _poison(monkeypatch, calls):
    """token_loss_sum returns NaN on the given (1-based) calls."""
    real = run_module.token_loss_sum
    seen = []

    def loss(logits, labels):
        seen.append(1)
        value = real(logits, labels)
        return value * float("nan") if len(seen) in calls else value

    monkeypatch.setattr(run_module, "token_loss_sum", loss)


def _records(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_stop_names_the_step_and_the_samples(data, tmp_path, monkeypatch):
    cfg = _cfg(data, "stop")
    _poison(monkeypatch, {2})
    expected = [f"n{i}" for i in DataOrder(8, 4, seed=cfg.seed * 7919).indices(1)]
    with pytest.raises(TrainError, match=r"non-finite loss at phase 0 \(projector_pretrain\) step 2") as err:
        train(cfg, tmp_path / "run")
    assert str(expected) in str(err.value) and "nonfinite_loss=skip" in str(err.value)
    bad = [r for r in _records(tmp_path / "run") if r.get("nonfinite_loss")]
    assert bad == [
        {"phase": 0, "step": 2, "global_step": 2, "nonfinite_loss": True, "rank": 0, "sample_ids": expected,
         "action": "stop"}
    ]  # fmt: skip
    assert not (tmp_path / "run" / "final").exists()


@pytest.mark.slow
def test_skip_leaves_the_weights_and_goes_on(data, tmp_path, monkeypatch):
    cfg = _cfg(data, "skip")
    _poison(monkeypatch, {1, 2})  # both steps of phase 0
    run = tmp_path / "run"
    train(cfg, run)
    steps = [r for r in _records(run) if "loss" in r]
    assert [(r["phase"], r["step"], r.get("skipped", False)) for r in steps] == [
        (0, 1, True), (0, 2, True), (1, 1, False), (2, 1, False)
    ]  # fmt: skip
    assert all(r["loss"] == r["loss"] for r in steps[2:])  # finite again after the skipped steps
    torch.manual_seed(cfg.seed)
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    initial = build_vlm(cfg.model, cache_dir=run).state_dict()
    after = load_file(
        str(run / "checkpoints" / "00-projector_pretrain-step0000002-end" / "model" / "model.safetensors")
    )
    projector = [k for k in after if k.startswith("projector.")]
    assert projector and all(torch.equal(after[k], initial[k]) for k in projector)
    final = load_file(str(run / "final" / "model.safetensors"))
    assert not all(torch.equal(final[k], initial[k]) for k in projector)  # phase 1 trained it
