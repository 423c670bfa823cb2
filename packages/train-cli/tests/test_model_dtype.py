"""model.frozen_dtype: base weights no phase trains stored in bf16, trained parts fp32, on the CPU."""

import json
import os

import pytest
import torch
from safetensors import safe_open

from tbi_train.config import resolve_config, seed000_phases
from tbi_train.config.schema import ComponentLR, PhaseConfig
from tbi_train.model import build_vlm, load_vlm, save_vlm
from tbi_train.model.frozen_dtype import cast_frozen_parts, frozen_dtype_for, frozen_groups, parameter_bytes
from tbi_train.train import build_optimizer, set_trainable, token_loss_sum, train

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _tiny_vlm(tmp_path):
    cfg = resolve_config("tiny")
    torch.manual_seed(0)
    return cfg, build_vlm(
        cfg.model, cache_dir=tmp_path, corpus=["what colour 무슨 색 red 빨간색 blue 파란색"]
    )


def _batch(vlm):
    pad = vlm.image_pad_id
    ids = torch.tensor(
        [
            [1, *[pad] * vlm.tokens_per_image, 20, 21, 22, 23],
            [1, *[pad] * vlm.tokens_per_image, 30, 31, 32, 33],
        ]
    )
    labels = ids.clone()
    labels[:, : 1 + vlm.tokens_per_image] = -100
    torch.manual_seed(1)
    return ids, labels, torch.randn(2, 3, 64, 64)


def test_frozen_groups_follow_every_phase_of_the_run():
    assert frozen_groups(seed000_phases()) == (
        "lm",
    )  # tower and projector train in phase 2, the LM under LoRA
    lora_only = (
        PhaseConfig(
            trainable=("projector", "vision_lora"), lr=ComponentLR(projector=1, vision_lora=1), steps=1
        ),
    )
    assert frozen_groups(lora_only) == ("vision", "lm")
    full = (*lora_only, PhaseConfig(name="b", trainable=("lm",), lr=ComponentLR(lm=1), steps=1))
    assert frozen_groups(full) == ("vision",)  # the LM trains later: it keeps fp32 from the start
    assert frozen_dtype_for("bf16", "fp32") is torch.bfloat16
    assert frozen_dtype_for("fp32", "bf16") is None and frozen_dtype_for("auto", "bf16") is torch.bfloat16
    assert frozen_dtype_for("auto", "fp32") is None
    if not torch.cuda.is_available():
        assert frozen_dtype_for("auto", "auto") is None  # this CPU trains in fp32


def test_bf16_frozen_lm_halves_its_bytes_trains_and_reloads(tmp_path):
    cfg, vlm = _tiny_vlm(tmp_path)
    groups = vlm.parameter_groups()
    lm_numel = sum(p.numel() for _, p in groups["lm"])  # tied embeddings counted once
    before = parameter_bytes(vlm)
    assert before == 4 * sum(p.numel() for p in vlm.parameters())

    freed = cast_frozen_parts(vlm, frozen_groups(cfg.phases), torch.bfloat16)
    assert freed == 2 * lm_numel and parameter_bytes(vlm) == before - 2 * lm_numel
    assert {p.dtype for _, p in groups["lm"]} == {torch.bfloat16}
    for name in ("vision", "projector", "lm_lora"):
        assert {p.dtype for _, p in groups[name]} == {torch.float32}, name
    assert vlm.lm.get_output_embeddings().weight is vlm.lm.get_input_embeddings().weight  # still tied

    ids, labels, pixels = _batch(vlm)
    losses = {}
    for index in (0, 2):  # phase 0 trains the projector through the bf16 LM, phase 2 the fp32 LoRA on it
        phase = cfg.phases[index]
        set_trainable(groups, phase)
        optimizer = build_optimizer(groups, phase, cfg.optim)
        losses[index] = []
        for _ in range(4):
            logits = vlm(ids, pixel_values=pixels)  # [B, L, V] in the LM's bf16
            loss = token_loss_sum(logits, labels) / 8
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses[index].append(loss.item())
        trained = [p for _, p in groups[phase.trainable[0]]]
        assert all(p.dtype == torch.float32 for p in trained)
    for index, values in losses.items():
        assert all(torch.isfinite(torch.tensor(values))), index
        assert values[-1] < values[0], (index, values)

    save_vlm(vlm, tmp_path / "saved")
    with safe_open(str(tmp_path / "saved" / "model.safetensors"), framework="pt") as f:
        stored = {k: f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118
    assert {v for k, v in stored.items() if k.startswith("lm.") and "lora_" not in k} == {"BF16"}
    assert {v for k, v in stored.items() if not k.startswith("lm.") or "lora_" in k} == {"F32"}
    reloaded = load_vlm(tmp_path / "saved")
    assert parameter_bytes(reloaded) == parameter_bytes(vlm)
    vlm.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(ids, pixel_values=pixels), vlm(ids, pixel_values=pixels), rtol=0, atol=0
        )


@pytest.mark.slow
def test_training_run_with_frozen_bf16_checkpoints_and_resumes(tmp_path, write_colour_data):
    root = write_colour_data(tmp_path / "data", "d")
    overrides = [f"data.train={root / 'train.json'}", "eval.at_start=false", "eval.limit=0", "model.frozen_dtype=bf16",
                 "checkpoint.every_steps=0", "phases.0.steps=1", "phases.1.steps=1", "phases.2.steps=3"]  # fmt: skip
    overrides += [f"phases.{p}.{k}" for p in range(3) for k in ("batch_size=4", "warmup_steps=0")]
    cfg = resolve_config("tiny", overrides=overrides)
    result = train(cfg, tmp_path / "run")
    steps = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in steps if "loss" in r)
    final = load_vlm(result.final_model)
    assert {p.dtype for _, p in final.parameter_groups()["lm"]} == {torch.bfloat16}
    assert {p.dtype for _, p in final.parameter_groups()["lm_lora"]} == {torch.float32}
    again = train(cfg, tmp_path / "run", resume=True)  # reloads the bf16 checkpoint into a fresh model
    assert (again.final_model / "model.safetensors").read_bytes() == (
        result.final_model / "model.safetensors"
    ).read_bytes()
