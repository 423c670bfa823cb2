"""LoRA adapters (real peft adapters on a tiny random Qwen2): exact ΔW merges into a full model, and back to
one adapter by truncated SVD with the reconstruction error reported."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tbi_merging import MergeConfig, MergeError, ModelSpec, merge_checkpoints, merge_tensors

pytestmark = pytest.mark.slow  # imports transformers + peft (~10 s on a loaded 2-core machine)


@pytest.fixture(scope="module")
def lora(tmp_path_factory, request):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2ForCausalLM

    cfg_fn = request.getfixturevalue("qwen2_config_fn")
    root = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    base = Qwen2ForCausalLM(cfg_fn())  # float32 so peft's own merge is an exact reference
    base.save_pretrained(root / "base", max_shard_size="40KB")
    specs = {
        "en": LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
        ),
        "ko": LoraConfig(
            r=2, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "up_proj"], init_lora_weights=False
        ),
    }
    peft_dw = {}
    for i, (name, spec) in enumerate(specs.items()):
        torch.manual_seed(10 + i)
        model = get_peft_model(Qwen2ForCausalLM.from_pretrained(root / "base"), spec)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)  # peft's random init leaves B tiny; make ΔW visible
        model.save_pretrained(root / name)
        peft_dw[name] = {
            f"{n.removeprefix('base_model.model.')}.weight": m.get_delta_weight("default").detach().clone()
            for n, m in model.named_modules()
            if hasattr(m, "get_delta_weight") and hasattr(m, "lora_A") and "default" in m.lora_A
        }
    return {"root": root, "base": root / "base", "en": root / "en", "ko": root / "ko", "dw": peft_dw}


@pytest.fixture(scope="module")
def qwen2_config_fn():
    from transformers import Qwen2Config

    return lambda: Qwen2Config(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=False,
    )


def _tensors(path):
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_single_adapter_matches_peft_merge_and_unload(lora, tmp_path):
    from peft import PeftModel
    from transformers import Qwen2ForCausalLM

    cfg = MergeConfig(
        base=lora["base"],
        models=[ModelSpec("en", lora["en"], 1.0)],
        out=tmp_path / "o",
        method="task_arithmetic",
        normalize=False,
    )
    ours = _tensors(merge_checkpoints(cfg))
    peft_model = PeftModel.from_pretrained(Qwen2ForCausalLM.from_pretrained(lora["base"]), lora["en"])
    reference = peft_model.merge_and_unload().state_dict()
    assert len(lora["dw"]["en"]) == 6
    for name, value in ours.items():
        torch.testing.assert_close(value, reference[name], rtol=1e-6, atol=1e-7)


def test_ties_on_exact_delta_w(lora, tmp_path):
    cfg = MergeConfig(
        base=lora["base"],
        models=[ModelSpec("en", lora["en"], 0.7), ModelSpec("ko", lora["ko"], 0.3)],
        out=tmp_path / "o",
        method="ties",
        density=0.3,
    )
    ours = _tensors(merge_checkpoints(cfg))
    base = _tensors(lora["base"])
    adapted = set(lora["dw"]["en"]) | set(lora["dw"]["ko"])
    assert "model.layers.0.mlp.up_proj.weight" in adapted and "model.layers.0.mlp.down_proj.weight" in adapted
    for name, w in base.items():
        if name not in adapted:
            assert torch.equal(ours[name], w), name
            continue
        fts = {m: w + lora["dw"][m].get(name, torch.zeros_like(w)) for m in ("en", "ko")}
        expected = merge_tensors(w, fts, "ties", {"en": 0.7, "ko": 0.3}, density=0.3, tensor_name=name)
        torch.testing.assert_close(ours[name], expected, rtol=1e-5, atol=1e-6)
    report = json.loads((tmp_path / "o" / "merge_report.json").read_text())
    assert report["tensors"]["model.layers.0.mlp.up_proj.weight"]["kept_fraction"]["en"] == 0.0


def test_back_to_one_adapter_by_svd(lora, tmp_path):
    from peft import PeftModel
    from transformers import Qwen2ForCausalLM

    models = [ModelSpec("en", lora["en"], 0.5), ModelSpec("ko", lora["ko"], 0.5)]
    common = dict(base=lora["base"], models=models, method="task_arithmetic", normalize=False)
    full = merge_checkpoints(MergeConfig(out=tmp_path / "full", **common))
    exact = merge_checkpoints(MergeConfig(out=tmp_path / "r6", adapter_rank=6, **common))  # 4 + 2: exact
    report = json.loads((exact / "merge_report.json").read_text())
    assert report["summary"]["max_relative_reconstruction_error"] < 1e-5
    assert json.loads((exact / "adapter_config.json").read_text())["r"] == 6
    ids = torch.tensor([[3, 14, 15, 9, 2]])
    with torch.no_grad():
        want = Qwen2ForCausalLM.from_pretrained(full)(ids).logits
        peft_model = PeftModel.from_pretrained(Qwen2ForCausalLM.from_pretrained(lora["base"]), exact)
        got = peft_model(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    low = merge_checkpoints(MergeConfig(out=tmp_path / "r1", adapter_rank=1, **common))
    entries = json.loads((low / "merge_report.json").read_text())["tensors"]
    name = "model.layers.1.self_attn.q_proj.weight"  # adapted by both: rank up to 6
    dw = 0.5 * lora["dw"]["en"][name] + 0.5 * lora["dw"]["ko"][name]
    s = torch.linalg.svdvals(dw.double())
    optimal = float(s[1:].norm() / s.norm())  # Eckart–Young: best rank-1 error
    assert optimal > 0.1
    assert abs(entries[name]["relative_reconstruction_error"] - optimal) < 1e-3


def test_adapter_errors(lora, tmp_path):
    with pytest.raises(MergeError, match="--to-adapter needs every --model to be a LoRA adapter"):
        merge_checkpoints(
            MergeConfig(
                base=lora["base"],
                models=[ModelSpec("b", lora["base"]), ModelSpec("en", lora["en"])],
                out=tmp_path / "o",
                adapter_rank=2,
            )
        )
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((lora["en"] / "adapter_config.json").read_text())
    with pytest.raises(MergeError, match=r"adapter_model.safetensors is missing"):
        merge_checkpoints(MergeConfig(base=lora["base"], models=[ModelSpec("x", broken)], out=tmp_path / "o"))
    assert not (tmp_path / "o").exists()
