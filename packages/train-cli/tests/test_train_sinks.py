"""TensorBoard and offline W&B sinks: the same scalars as log.jsonl, read back from the files they wrote."""

import importlib.util
import json
import os
import struct

import numpy as np
import pytest

from tbi_train.config import resolve_config
from tbi_train.errors import TrainError
from tbi_train.train import check_sinks, scalars, train

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def data(tmp_path_factory, write_colour_data):
    return write_colour_data(tmp_path_factory.mktemp("sink-data"), "s")


def _cfg(data, *extra):
    overrides = [f"data.train={data / 'train.json'}", f"data.val={data / 'val.json'}", "eval.limit=2",
                 "eval.max_new_tokens=2", "checkpoint.every_steps=0", "phases.0.steps=2", "phases.1.steps=1",
                 "phases.2.steps=1", *extra]  # fmt: skip
    overrides += [f"phases.{p}.{k}" for p in range(3) for k in ("batch_size=4", "warmup_steps=0")]
    return resolve_config("tiny", overrides=overrides)


def _tensorboard_scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _wandb_history(run_file):
    """History rows of an offline .wandb file: W&B's LevelDB-style log (7-byte file header, 32 KiB blocks of
    records with a 7-byte header: crc32, length, type 1 full / 2 first / 3 middle / 4 last) of protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = run_file.read_bytes()
    assert raw[:4] == b":W&B"
    pos, chunks, payloads = 7, b"", []
    while pos + 7 <= len(raw):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        body, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            payloads.append(body)
        elif kind in (2, 3):
            chunks = (chunks if kind == 3 else b"") + body
        elif kind == 4:
            payloads.append(chunks + body)
    rows = []
    for payload in payloads:
        record = pb.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            # "a/b" keys are stored split into nested_key
            rows.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return rows


@pytest.mark.slow
def test_tensorboard_and_wandb_hold_the_jsonl_values(data, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")  # the sink must stay offline whatever the environment says
    cfg = _cfg(data, "log.sinks=[jsonl,tensorboard,wandb]")
    run = tmp_path / "run"
    train(cfg, run)
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval" in r]
    assert len(steps) == 4 and len(evals) == 4  # at start + the end of each phase

    tb = _tensorboard_scalars(run / "tensorboard")
    as_f32 = [(r["global_step"], float(np.float32(r["loss"]))) for r in steps]
    assert tb["train/loss"] == as_f32  # the event file stores float32
    assert tb["train/grad_norm"] == [(r["global_step"], float(np.float32(r["grad_norm"]))) for r in steps]
    assert [s for s, _ in tb["lr/projector"]] == [1, 2, 3]  # phases 0 and 1 train the projector
    assert [s for s, _ in tb["lr/lm_lora"]] == [4]
    assert tb["eval/token_f1"] == [
        (r["global_step"], float(np.float32(r["eval"]["token_f1"]))) for r in evals
    ]
    assert "throughput/tokens_per_s" in tb

    (run_file,) = (run / "wandb").glob("offline-run-*/run-*.wandb")  # offline: nothing else was made
    rows = _wandb_history(run_file)
    by_step = {row["_step"]: row for row in rows}
    assert [by_step[r["global_step"]]["train/loss"] for r in steps] == [r["loss"] for r in steps]
    assert [by_step[r["global_step"]]["eval/exact_match"] for r in evals] == [
        r["eval"]["exact_match"] for r in evals
    ]
    assert by_step[4]["lr/lm_lora"] == steps[-1]["lr"]["lm_lora"]


def test_missing_sink_package_fails_at_config_time_naming_the_extra(data, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(TrainError, match=r"pip install 'tbi-train\[wandb\]'"):
        train(_cfg(data, "log.sinks=[wandb]"), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was written
    check_sinks(("jsonl", "tensorboard"))


def test_scalars_flatten_sections_and_skip_bookkeeping():
    record = {"phase": 1, "step": 3, "global_step": 9, "phase_name": "x", "loss": 2.5, "grad_norm": 1,
              "lr": {"projector": 1e-3}, "throughput": {"tokens_per_s": 10.0}, "skipped": True,
              "router": {"layer0": {"load": [0.5, 0.5], "entropy": 0.69}}, "eval": {"docvqa": 0.25}}  # fmt: skip
    assert scalars(record) == {
        "train/loss": 2.5,
        "train/grad_norm": 1.0,
        "lr/projector": 1e-3,
        "throughput/tokens_per_s": 10.0,
        "router/layer0/entropy": 0.69,
        "eval/docvqa": 0.25,
    }


@pytest.mark.slow
def test_tensorboard_after_a_crash_and_resume_holds_each_step_once(data, tmp_path, monkeypatch):
    import tbi_train.train.run as run_module

    cfg = _cfg(
        data, "log.sinks=[tensorboard]", "phases.0.steps=4", "checkpoint.every_steps=2", "eval.limit=0"
    )
    real, calls = run_module.token_loss_sum, []

    def crash_at_step_4(logits, labels):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("killed")
        return real(logits, labels)

    monkeypatch.setattr(run_module, "token_loss_sum", crash_at_step_4)
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, tmp_path / "run")
    assert [s for s, _ in _tensorboard_scalars(tmp_path / "run" / "tensorboard")["train/loss"]] == [1, 2, 3]
    monkeypatch.setattr(run_module, "token_loss_sum", real)
    train(cfg, tmp_path / "run", resume=True)  # from the step-2 checkpoint: step 3 is logged again
    steps = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    expected = [(r["global_step"], float(np.float32(r["loss"]))) for r in steps if "loss" in r]
    assert [s for s, _ in expected] == [1, 2, 3, 4, 5, 6]
    assert _tensorboard_scalars(tmp_path / "run" / "tensorboard")["train/loss"] == expected
