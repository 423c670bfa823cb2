"""Decoder strategies: LoRA folding + task-arithmetic merge against a float64 reference; MoLE train/save/load."""

import os

import pytest
import torch
from safetensors.torch import load_file

from tbi_train.config import apply_overrides, get_preset
from tbi_train.model import build_vlm, load_vlm, save_vlm
from tbi_train.strategies import export_lm, load_mole_vlm, merge_vlms, train_mole

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def three_vlms(tmp_path_factory):
    """base, en (full LM weights moved), ko (LoRA adapters trained) saved VLM folders."""
    root = tmp_path_factory.mktemp("vlms")
    torch.manual_seed(0)
    cfg = apply_overrides(get_preset("tiny"), ["model.peft.lm.r=4", "model.peft.lm.alpha=8"])
    base = build_vlm(cfg.model, cache_dir=root, corpus=["what colour 무슨 색"])
    save_vlm(base, root / "base")
    en = load_vlm(root / "base")
    with torch.no_grad():
        for name, p in en.lm.named_parameters():
            if "lora_" not in name and "layers" in name:
                p.add_(0.01 * torch.randn_like(p))
    save_vlm(en, root / "en")
    ko = load_vlm(root / "base")
    with torch.no_grad():
        for name, p in ko.lm.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn_like(p))
    save_vlm(ko, root / "ko")
    return root


def _folded64(folder, key):
    """W + (alpha / r) B A in float64 from the saved VLM weights (the independent reference)."""
    state = load_file(str(folder / "model.safetensors"))
    prefix = "lm." + key.removesuffix(".weight")
    w = state.get(f"{prefix}.base_layer.weight", state.get(f"lm.{key}")).double()
    a = state.get(f"{prefix}.lora_A.default.weight")
    if a is None:
        return w
    b = state[f"{prefix}.lora_B.default.weight"]
    return w + (8 / 4) * b.double() @ a.double()


def test_export_folds_adapters(three_vlms, tmp_path):
    out = export_lm(load_vlm(three_vlms / "ko"), tmp_path / "ko-lm")
    plain = load_file(str(out / "model.safetensors"))
    key = "model.layers.1.mlp.down_proj.weight"
    assert not any("lora_" in k for k in plain)
    torch.testing.assert_close(plain[key].double(), _folded64(three_vlms / "ko", key), atol=1e-6, rtol=1e-5)


def test_task_arithmetic_merge_matches_reference(three_vlms, tmp_path):
    out = merge_vlms(three_vlms / "base", three_vlms / "en", three_vlms / "ko", tmp_path / "merged",
                     method="task_arithmetic", drop_rate=0.0, lambda_en=0.6, lambda_ko=0.4, normalize=False)  # fmt: skip
    merged = load_vlm(out)
    assert (out / "merge_report.json").is_file()
    own = dict(merged.lm.named_parameters())
    for key in ("model.layers.0.self_attn.q_proj.weight", "model.layers.3.mlp.gate_proj.weight"):
        base, en, ko = (_folded64(three_vlms / n, key) for n in ("base", "en", "ko"))
        expected = base + 0.6 * (en - base) + 0.4 * (ko - base)
        got = own[key.replace(".weight", ".base_layer.weight")].double()
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert all(p.abs().sum() == 0 for n, p in own.items() if "lora_B" in n)  # adapters folded: identity


@pytest.mark.slow
def test_mole_trains_only_router_and_experts_and_reloads(three_vlms, tmp_path):
    from tbi_train.data import load_conversations
    from tbi_train.synth import generate_synthetic

    data = generate_synthetic(tmp_path / "data", n=30, seed=1, image_size=96, task_weights={"color": 1.0})
    dataset = load_conversations(data / "train.json")
    cfg = get_preset("tiny")
    phase = {
        "steps": 2,
        "epochs": None,
        "batch_size": 4,
        "grad_accum": 1,
        "warmup_steps": 0,
        "lr": {"lm": 1e-2},
    }
    spec = {"layers": (2, 3), "router_hidden_dim": 8, "router_temperature": 1.0, "capacity_factor": 1.25,
            "load_balancing_loss_weight": 0.01, "phase": phase}  # fmt: skip
    experts = {"ko": three_vlms / "ko", "en": three_vlms / "base", "shared": three_vlms / "en"}
    out = train_mole(experts, spec, dataset, tmp_path / "mole", seed=0, max_length=256, optim=cfg.optim,
                     log_path=tmp_path / "log.jsonl")  # fmt: skip
    mole = load_mole_vlm(out)
    saved = load_file(str(out / "model.safetensors"))
    shared = load_file(str(three_vlms / "en" / "model.safetensors"))
    ko = load_file(str(three_vlms / "ko" / "model.safetensors"))
    # frozen: a non-MoLE weight equals the shared (merged) model's
    key = "lm.model.layers.0.mlp.up_proj.base_layer.weight"
    torch.testing.assert_close(saved[key], shared[key])
    # trained: the ko expert of layer 2 moved away from the Korean fine-tune it was copied from
    moved = saved["lm.model.layers.2.mlp.experts.ko.up_proj.lora_B.default.weight"]
    assert not torch.equal(moved, ko["lm.model.layers.2.mlp.up_proj.lora_B.default.weight"])
    assert any(".mlp.router." in n for n, _ in mole.named_parameters())
    assert (tmp_path / "log.jsonl").read_text().count('"phase_name": "mole"') == 2
