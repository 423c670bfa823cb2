"""Memory planner: parameter counts from config JSON vs instantiated models; model states vs DeepSpeed's estimator."""

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from tbi_train.errors import TrainError
from tbi_train.scale.memory import (
    Hardware,
    Setting,
    language_model_shape,
    model_shape_from_config,
    model_state_bytes,
    plan,
    smallest_fitting,
    vision_tower_shape,
)

INTERNVL_8B = Path(__file__).parent / "data" / "internvl2_5_8b_config.json"


def _meta_count(model_cls, config) -> int:
    with torch.device("meta"):
        model = model_cls.from_config(config)
    return sum(p.numel() for p in model.parameters())


LM_CONFIGS = {
    "qwen2": dict(
        hidden_size=96,
        intermediate_size=200,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        vocab_size=1013,
        tie_word_embeddings=False,
    ),
    "qwen2-tied": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=777,
        tie_word_embeddings=True,
    ),
    "qwen3": dict(
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,
        vocab_size=999,
        tie_word_embeddings=False,
    ),
    "llama": dict(
        hidden_size=80,
        intermediate_size=176,
        num_hidden_layers=3,
        num_attention_heads=5,
        num_key_value_heads=5,
        vocab_size=1111,
        tie_word_embeddings=False,
    ),
}


@pytest.mark.parametrize("name", list(LM_CONFIGS))
def test_language_model_count_matches_instantiated_model(name):
    model_type = name.split("-")[0]
    config = AutoConfig.for_model(model_type, **LM_CONFIGS[name])
    expected = _meta_count(AutoModelForCausalLM, config)
    assert language_model_shape(config.to_dict()).parameters == expected


VISION_CONFIGS = {
    "clip_vision_model": dict(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=56,
        patch_size=14,
    ),
    "siglip_vision_model": dict(
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=42,
        patch_size=14,
    ),
}


@pytest.mark.parametrize("model_type", list(VISION_CONFIGS))
def test_vision_tower_count_matches_instantiated_model(model_type):
    config = AutoConfig.for_model(model_type, **VISION_CONFIGS[model_type])
    expected = _meta_count(AutoModel, config)
    shape, tokens = vision_tower_shape(config.to_dict())
    assert shape.parameters == expected
    assert tokens == (42 // 14) ** 2 if model_type.startswith("siglip") else (56 // 14) ** 2 + 1


def test_internvl2_5_8b_counts_match_the_published_size():
    shape = model_shape_from_config(INTERNVL_8B)
    # Model card: InternViT-300M + MLP projector + InternLM2.5-7B, 8.1B parameters in all.
    assert 0.29e9 < shape.vision.parameters < 0.31e9
    assert shape.projector_parameters == 2 * 4096 + 4096 * 4096 + 4096 + 4096 * 4096 + 4096
    assert abs(shape.parameters - 8.08e9) / 8.08e9 < 0.01
    assert shape.vision_tokens_per_tile == 1025


def test_model_states_match_deepspeed_estimators():
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    for params, gpus, largest in [(7_000_001, 2, 50_000), (1_234_567_891, 8, 9_999_999)]:
        _, ds_gpu = estimate_zero2_model_states_mem_needs(params, num_gpus_per_node=gpus, cpu_offload=False)
        ours = sum(model_state_bytes(params, 0, largest, gpus, stage=2, offload=False)[:3])
        assert ours == pytest.approx(ds_gpu, rel=1e-6)
        _, ds_gpu = estimate_zero2_model_states_mem_needs(params, num_gpus_per_node=gpus, cpu_offload=True)
        assert sum(model_state_bytes(params, 0, largest, gpus, stage=2, offload=True)[:3]) == ds_gpu
        _, ds_gpu, _ = estimate_zero3_model_states_mem_needs(
            params, largest, num_gpus_per_node=gpus, cpu_offload=False, cpu_offload_params=False
        )
        assert sum(model_state_bytes(params, 0, largest, gpus, stage=3, offload=False)[:3]) == pytest.approx(
            ds_gpu, rel=1e-6
        )


def test_frozen_parameters_cost_only_their_weights():
    w, g, o, _ = model_state_bytes(0, 1000, 10, gpus=2, stage=2, offload=False)
    assert (w, g, o) == (2000, 0, 0)


def test_planner_picks_the_cheapest_fitting_setting_for_seed_000():
    shape = model_shape_from_config(INTERNVL_8B)
    rows, best = smallest_fitting(shape, Hardware.parse("2xA100-40GB"), seq_len=2048, tiles=13)
    ddp = rows[0]
    # Full fine-tuning under plain DDP: 20 bytes per parameter of model states alone exceed 40 GB.
    assert ddp.setting == Setting(0, False, False, 2) and not ddp.fits
    assert ddp.parameters_gib + ddp.gradients_gib + ddp.optimizer_gib == pytest.approx(
        20 * shape.parameters / 2**30
    )
    assert best is not None and best.fits and best.total_gib <= 0.9 * 40
    assert all(not r.fits for r in rows[: rows.index(best)])
    # Seed 000 section 7.3 lands on the same remedy: ZeRO-2 with optimizer offload and checkpointing.
    assert best.setting.zero_stage == 2 and best.setting.offload_optimizer and best.setting.checkpointing
    # Sharded states shrink with more GPUs; offloaded ones were never on the GPU.
    sharded = Setting(2, False, True, 2)
    two, sixteen = (
        plan(shape, Hardware.parse(hw), sharded, seq_len=2048, tiles=13)
        for hw in ("2xA100-80GB", "2x8xA100-80GB")
    )
    assert sixteen.optimizer_gib == pytest.approx(two.optimizer_gib / 8)


def test_checkpointing_shrinks_activations_to_layer_inputs():
    shape = model_shape_from_config(INTERNVL_8B)
    hw = Hardware.parse("2xA100-40GB")
    full = plan(shape, hw, Setting(2, False, False, 1), seq_len=4096)
    ckpt = plan(shape, hw, Setting(2, False, True, 1), seq_len=4096)
    lm = shape.language
    per_layer_input = 2 * 4096 * lm.hidden
    logits = 4 * 4096 * lm.vocab
    assert ckpt.activations_gib < full.activations_gib / 5
    assert ckpt.activations_gib * 2**30 > lm.layers * per_layer_input + logits


@pytest.mark.parametrize(
    "spec,expected",
    [("2xA100-40GB", (1, 2, 40.0)), ("2x8xH100", (2, 8, 80.0)), ("1xL40S-48GB", (1, 1, 48.0))],
)
def test_hardware_specs_parse(spec, expected):
    hw = Hardware.parse(spec)
    assert (hw.nodes, hw.gpus_per_node, hw.memory_gib) == expected


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(TrainError, match="GPUSxNAME-MEMGB"):
        Hardware.parse("two A100s")
    with pytest.raises(TrainError, match="no such config file"):
        model_shape_from_config(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(TrainError, match="not valid JSON"):
        model_shape_from_config(tmp_path)
    with pytest.raises(TrainError, match="offload needs ZeRO-2"):
        model_state_bytes(10, 0, 1, 2, stage=1, offload=True)
