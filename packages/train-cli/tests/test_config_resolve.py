"""Typed configs: seed-000 defaults, presets, overrides, validation messages, frozen + stable hash."""

import ast
import dataclasses
import hashlib
import inspect
import json

import pytest

from tbi_train.config import (
    ComponentLR,
    ConfigError,
    PhaseConfig,
    RunConfig,
    apply_overrides,
    config_hash,
    get_preset,
    list_presets,
    load_config,
    resolve_config,
    save_config,
    schema,
    seed000_phases,
    to_dict,
)


def test_seed000_defaults():
    cfg = RunConfig()
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.optim.weight_decay == 0.05
    assert cfg.optim.max_grad_norm == 1.0
    assert cfg.optim.schedule == "cosine" and cfg.optim.min_lr_ratio == 0.0
    lora = cfg.model.peft.lm
    assert (lora.enabled, lora.r, lora.alpha, lora.dropout) == (True, 64, 16, 0.05)
    assert lora.target_modules == (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    assert cfg.eval.max_new_tokens == 512
    p1, p2, p3 = seed000_phases()
    assert (p1.trainable, p1.lr.projector, p1.steps, p1.warmup_steps, p1.batch_size * p1.grad_accum) == (
        ("projector",),
        1e-3,
        10_000,
        500,
        128,
    )
    assert (p2.lr.vision, p2.lr.projector, p2.steps, p2.warmup_steps, p2.grad_accum) == (
        2e-5,
        5e-5,
        20_000,
        1000,
        32,
    )
    assert (p3.trainable, p3.lr.lm_lora, p3.steps, p3.warmup_steps, p3.grad_accum) == (
        ("lm_lora",),
        2e-4,
        50_000,
        2000,
        16,
    )


def test_every_config_field_has_a_docstring():
    tree = ast.parse(inspect.getsource(schema))
    undocumented = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        body = node.body
        for i, stmt in enumerate(body):
            if isinstance(stmt, ast.AnnAssign):
                nxt = body[i + 1] if i + 1 < len(body) else None
                if not (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)):
                    undocumented.append(f"{node.name}.{stmt.target.id}")
    assert undocumented == []


def test_config_is_frozen_and_hashable():
    cfg = get_preset("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]
    assert hash(cfg) == hash(get_preset("tiny"))
    assert {cfg: 1}[get_preset("tiny")] == 1


def test_hash_is_sha256_of_canonical_json_and_tracks_changes():
    cfg = get_preset("tiny")
    blob = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert config_hash(cfg) == hashlib.sha256(blob.encode()).hexdigest()[:16]
    assert config_hash(apply_overrides(cfg, ["phases.1.lr.vision=2e-3"])) != config_hash(cfg)
    assert config_hash(apply_overrides(cfg, ["seed=42"])) == config_hash(cfg)  # same value, same hash


def test_overrides_reach_nested_fields_lists_and_mappings():
    cfg = resolve_config(
        "tiny",
        overrides=[
            "phases.2.lr.lm_lora=1e-4",
            "phases.0.trainable=[projector,vision]",
            "phases.0.lr.vision=1e-5",
            "model.peft.lm.target_modules=q_proj,v_proj",
            "model.projector.name=c-abstractor",
            "model.projector.options.num_queries=16",
            "model.lm.gradient_checkpointing=true",
            "model.vision.path=null",
            "optim.betas=[0.8, 0.9]",
        ],
        seed=7,
    )
    assert cfg.phases[2].lr.lm_lora == pytest.approx(1e-4) and isinstance(cfg.phases[2].lr.lm_lora, float)
    assert cfg.phases[0].trainable == ("projector", "vision")
    assert cfg.model.peft.lm.target_modules == ("q_proj", "v_proj")
    assert cfg.model.projector.name == "c-abstractor"
    assert dict(cfg.model.projector.options) == {"num_queries": 16}
    assert cfg.model.lm.gradient_checkpointing is True
    assert cfg.model.vision.path is None
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.seed == 7


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.lm.num_layer=3", "unknown key 'model.lm.num_layer'. Did you mean 'model.lm.num_layers'?"),
        ("modle.lm.path=x", "Did you mean 'model'?"),
        ("phases.0.steps=abc", "phases.0.steps: expected an integer, got 'abc'"),
        ("phases.5.steps=1", "indexes a list of 3 entries"),
        ("phases.0.loss_on=answer", "phases.0.loss_on: invalid value 'answer'. Did you mean 'answers'?"),
        ("phases.0.trainable=[projektor]", "unknown group 'projektor'. Did you mean 'projector'?"),
        ("phases.2.lr.lm_lora=none", "phases.2.lr.lm_lora is not set"),
        ("phases.0.epochs=1", "set exactly one of phases.0.steps and phases.0.epochs"),
        ("model.projector.name=mlp2x_gelo", "unknown projector 'mlp2x_gelo'. Did you mean 'mlp2x_gelu'?"),
        ("model.peft.lm.enabled=false", "model.peft.lm.enabled is false"),
        ("phases.0.batch_size=0", "phases.0.batch_size must be positive"),
        ("seed", "has no '='"),
        ("model.lm.trust_remote_code=maybe", "model.lm.trust_remote_code: expected true or false"),
    ],
)
def test_validation_errors_name_the_key_and_the_fix(override, message):
    with pytest.raises(ConfigError) as info:
        resolve_config("tiny", overrides=[override])
    assert message in str(info.value)


def test_unknown_preset_suggests_the_nearest():
    with pytest.raises(ConfigError, match="Did you mean 'tiny'"):
        resolve_config("tinny")
    assert "tiny" in list_presets() and "internvl2.5-8b" in list_presets()


def test_real_presets_take_paths_from_the_model_root(monkeypatch, tmp_path):
    monkeypatch.setenv("TBI_MODEL_ROOT", str(tmp_path))
    cfg = resolve_config("clip-l336-qwen3-8b")
    assert cfg.model.vision.path == str(tmp_path / "clip-vit-large-patch14-336")
    assert cfg.model.lm.path == str(tmp_path / "Qwen3-8B")
    assert cfg.phases == seed000_phases()
    for name in list_presets():
        assert get_preset(name).model.lm.trust_remote_code is False  # only ever the user's flag


def test_yaml_file_with_preset_and_phases_round_trips(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        "preset: tiny\n"
        "name: exp\n"
        "model:\n  lm:\n    num_layers: 2\n"
        "phases:\n"
        "  - {name: only, trainable: [projector, lm_lora], lr: {projector: 1.0e-3, lm_lora: 2e-4}, steps: 5}\n"
    )
    cfg = resolve_config(str(path), overrides=["phases.0.warmup_steps=2"])
    assert cfg.name == "exp" and cfg.model.lm.num_layers == 2 and cfg.model.lm.hidden_size == 64
    assert cfg.phases == (
        PhaseConfig(
            name="only",
            trainable=("projector", "lm_lora"),
            lr=ComponentLR(projector=1e-3, lm_lora=2e-4),
            steps=5,
            warmup_steps=2,
        ),
    )
    saved = save_config(cfg, tmp_path / "resolved.json")
    again = load_config(saved)
    assert again == cfg and config_hash(again) == config_hash(cfg)


def test_bad_file_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("preset: tiny\noptim:\n  weight_decai: 0.1\n")
    with pytest.raises(
        ConfigError, match=r"bad\.yaml: unknown key 'optim.weight_decai'. Did you mean 'optim.weight_decay'"
    ):
        resolve_config(str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(str(tmp_path / "missing.yaml"))
