"""`tbi plan --hardware`: seed 000 section 7.3's table for InternVL2.5-8B, and counts of the tiny preset's parts."""

from pathlib import Path

import pytest
import torch

from tbi_train.config import resolve_config
from tbi_train.errors import TrainError
from tbi_train.scale.plan import hardware_plan, model_shape_from_run_config

INTERNVL_8B = Path(__file__).parent / "data" / "internvl2_5_8b_config.json"


def test_internvl_8b_table_on_two_a100_40gb_names_the_seed_000_remedy():
    plan = hardware_plan(INTERNVL_8B, "2xA100-40GB", seq_len=2048, tiles=13)
    lines = plan.text.splitlines()
    assert lines[0].startswith("model: 8.08B parameters")
    header = next(i for i, line in enumerate(lines) if line.startswith("setting"))
    rows = lines[header + 2 : header + 2 + len(plan.rows)]
    assert len(rows) == 14
    # plain DDP, micro-batch 2: 2 + 6 + 12 bytes per parameter of model states, as in section 7.3's worst case
    ddp = rows[0].split()
    n = plan.shape.parameters
    assert ddp[:4] == ["ZeRO-0,", "micro-batch", "2", f"{2 * n / 2**30:,.1f}"]
    assert ddp[4:6] == [f"{6 * n / 2**30:,.1f}", f"{12 * n / 2**30:,.1f}"] and ddp[-1] == "no"
    assert (
        plan.best.setting.describe() == "ZeRO-2 + optimizer offload + activation checkpointing, micro-batch 2"
    )
    assert lines[-1] == (
        f"smallest setting that fits: {plan.best.setting.describe()} ({plan.best.total_gib:,.1f} GB per GPU)"
    )
    assert [r.fits for r in plan.rows].index(True) == plan.rows.index(plan.best)


def test_more_memory_fits_a_cheaper_setting():
    small = hardware_plan(INTERNVL_8B, "2xA100-40GB", tiles=13)
    large = hardware_plan(INTERNVL_8B, "8xH100-80GB", tiles=13)
    assert large.rows.index(large.best) < small.rows.index(small.best)
    assert large.best.setting.zero_stage == 2 and not large.best.setting.offload_optimizer


def test_tiny_preset_counts_match_its_instantiated_parts():
    from tbi_projectors import build_projector
    from tbi_train.model.lm import build_lm
    from tbi_train.model.vision import build_vision_tower

    cfg = resolve_config("tiny")
    shape = model_shape_from_run_config(cfg)
    torch.manual_seed(0)
    tower = build_vision_tower(cfg.model.vision)
    lm = build_lm(cfg.model.lm, vocab_size=cfg.model.tokenizer.vocab_size)
    projector = build_projector(
        cfg.model.projector.name, input_dim=tower.hidden_size, output_dim=lm.config.hidden_size
    )
    assert shape.vision.parameters == sum(p.numel() for p in tower.model.parameters())
    assert shape.language.parameters == sum(p.numel() for p in lm.parameters())
    assert shape.projector_parameters == sum(p.numel() for p in projector.parameters())
    assert shape.vision_tokens_per_tile == tower.grid[0] * tower.grid[1]


def test_missing_checkpoint_config_is_named(tmp_path):
    cfg = resolve_config("tiny", overrides=[f"model.lm.path={tmp_path / 'nowhere'}"])
    with pytest.raises(TrainError, match=r"model.lm.path=.*nowhere: no config file .*nowhere/config.json"):
        model_shape_from_run_config(cfg)


def test_experiment_and_preset_plans_read_the_checkpoint_configs(tmp_path, monkeypatch):
    import json

    from tbi_train.scale.memory import model_shape_from_config

    # The InternVL2.5-8B parts as local checkpoint folders (config files only) under $TBI_MODEL_ROOT.
    whole = json.loads(INTERNVL_8B.read_text())
    for folder, key in [
        ("InternViT-300M-448px-V2_5", "vision_config"),
        ("internlm2_5-7b-chat", "llm_config"),
    ]:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.json").write_text(json.dumps(whole[key]))
    monkeypatch.setenv("TBI_MODEL_ROOT", str(tmp_path))
    reference = model_shape_from_config(INTERNVL_8B)
    preset = hardware_plan("internvl2.5-8b", "2xA100-40GB", tiles=13)
    # the preset's pixel-shuffle-mlp, built on the meta device, counts as InternVL's own projector
    assert preset.shape == reference
    f4 = hardware_plan("F4", "2xA100-40GB", tiles=13)  # tbi-mllm F4: pyramid C-abstractor instead
    assert f4.shape.vision == reference.vision and f4.shape.language == reference.language
    assert f4.shape.projector_parameters != reference.projector_parameters
    assert f4.best is not None and f4.best.setting.offload_optimizer
