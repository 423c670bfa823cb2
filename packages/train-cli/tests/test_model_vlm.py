"""VLM composition: tokenizer, image-token splicing, adapters, local checkpoints, save/load, generation."""

import json
import os
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from tbi_train.config import apply_overrides, get_preset
from tbi_train.errors import TrainError
from tbi_train.eval import generate
from tbi_train.model import build_tokenizer, build_vlm, load_vlm, save_vlm

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CORPUS = ["빨간색 원입니다. A red circle.", "숫자는 3 입니다. The number is three."]


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(*overrides):
    return apply_overrides(get_preset("tiny"), list(overrides)).model


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    torch.manual_seed(0)
    model = build_vlm(_cfg(), cache_dir=tmp_path_factory.mktemp("run"), corpus=CORPUS)
    return model.eval()


def _sample(i, colour, question="<image>\n무슨 색입니까?", answer="빨간색"):
    image = Image.new("RGB", (40, 30), colour)
    conv = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return SimpleNamespace(
        id=f"s{i}", images=[image], conversations=conv, meta={"media_frames": [1]}, answers=[answer]
    )


def test_tokenizer_round_trips_hangul_and_is_cached(tmp_path):
    cfg = _cfg().tokenizer
    tok = build_tokenizer(cfg, None, tmp_path, CORPUS)
    text = "다람쥐 헌 쳇바퀴에 타고파 — mixed 한국어 and English 123"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    for special in ("<|image_pad|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert len(tok(special, add_special_tokens=False).input_ids) == 1
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    cached = tmp_path / "tokenizer" / "tokenizer.json"
    before = cached.read_bytes()
    again = build_tokenizer(cfg, None, tmp_path, ["a different corpus would train different merges"])
    assert cached.read_bytes() == before and again.get_vocab() == tok.get_vocab()


def test_splice_matches_a_per_position_reference(vlm):
    pad = vlm.image_pad_id
    m = vlm.tokens_per_image
    # row 0: two images with text between; row 1: no image; row 2: one image at the very end
    rows = [[5, *[pad] * m, 7, 8, *[pad] * m, 9], [11, 12, 13], [14, *[pad] * m]]
    length = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (length - len(r)) for r in rows])
    pixels = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        got = vlm.embed(ids, pixels)  # [B, L, D]
        tokens = vlm.encode_images(pixels)  # [3, M, D]
        table = vlm.lm.get_input_embeddings().weight
    flat = tokens.reshape(-1, tokens.shape[-1])
    cursor = 0
    for b in range(ids.shape[0]):
        for t in range(length):
            if ids[b, t] == pad:
                expected = flat[cursor]
                cursor += 1
            else:
                expected = table[ids[b, t]]
            torch.testing.assert_close(got[b, t], expected, rtol=0, atol=0)
    assert cursor == flat.shape[0]


def test_image_token_count_mismatch_is_an_error(vlm):
    ids = torch.tensor([[1, *[vlm.image_pad_id] * (vlm.tokens_per_image - 1), 2]])
    with pytest.raises(TrainError, match=r"image-pad tokens but 1 images"):
        vlm.embed(ids, torch.randn(1, 3, 64, 64))


def test_parameter_groups_partition_the_parameters(vlm):
    groups = vlm.parameter_groups()
    assert set(groups) == {"vision", "projector", "lm", "lm_lora"}
    names = [n for params in groups.values() for n, _ in params]
    assert len(names) == len(set(names))
    unique = {id(p) for p in vlm.parameters()}
    assert {id(p) for params in groups.values() for _, p in params} == unique
    assert all("lora_" in n for n, _ in groups["lm_lora"]) and not any("lora_" in n for n, _ in groups["lm"])


def test_adapters_start_as_identity_and_take_per_component_ranks(tmp_path):
    ids = torch.tensor([[13, 14, 15, 16]])
    torch.manual_seed(1)
    plain = build_vlm(
        _cfg("model.peft.lm.enabled=false", "phases=[]"), cache_dir=tmp_path, corpus=CORPUS
    ).eval()
    torch.manual_seed(1)
    adapted = build_vlm(
        _cfg(
            "model.peft.lm.use_dora=true",
            "model.peft.vision.enabled=true",
            "model.peft.vision.r=2",
            "model.peft.projector.enabled=true",
            "model.peft.projector.r=3",
        ),
        cache_dir=tmp_path,
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(adapted(ids), plain(ids))
    groups = adapted.parameter_groups()
    assert {"vision_lora", "projector_lora", "lm_lora"} <= set(groups)
    assert {p.shape[0] for n, p in groups["vision_lora"] if "lora_A" in n} == {2}
    assert {p.shape[0] for n, p in groups["projector_lora"] if "lora_A" in n} == {3}
    assert {p.shape[0] for n, p in groups["lm_lora"] if "lora_A" in n} == {8}
    assert any("lora_magnitude_vector" in n for n, _ in groups["lm_lora"])  # DoRA


def test_unmatched_lora_targets_name_the_key(tmp_path):
    with pytest.raises(TrainError, match=r"model.peft.vision.target_modules=\['nope'\]"):
        build_vlm(
            _cfg("model.peft.vision.enabled=true", "model.peft.vision.target_modules=nope"), tmp_path, CORPUS
        )


def test_save_load_round_trip_and_peft_adapter_folder(vlm, tmp_path):
    with torch.no_grad():
        for p in vlm.parameter_groups()["lm_lora"]:
            p[1].add_(0.01)  # non-zero adapter, so the round trip covers it
    out = save_vlm(vlm, tmp_path / "model")
    assert not (tmp_path / "model.tmp").exists()
    again = load_vlm(out)
    ids = torch.tensor([[1, *[vlm.image_pad_id] * vlm.tokens_per_image, 20, 21]])
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            again(ids, pixel_values=pixels), vlm(ids, pixel_values=pixels), rtol=0, atol=0
        )
    adapter = json.loads((out / "adapters" / "lm" / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["lora_alpha"] == 16 and adapter["peft_type"] == "LORA"
    from safetensors.torch import load_file

    keys = load_file(str(out / "adapters" / "lm" / "adapter_model.safetensors"))
    assert keys and all(k.startswith("base_model.model.model.layers.") for k in keys)
    with pytest.raises(TrainError, match="not a saved VLM"):
        load_vlm(tmp_path)


def test_local_checkpoints_of_other_families_load(tmp_path):
    from transformers import CLIPConfig, CLIPModel, Qwen2Config, Qwen2ForCausalLM

    clip = CLIPModel(
        CLIPConfig(
            vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
            text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
            projection_dim=16,
        )
    )  # fmt: skip
    clip.save_pretrained(tmp_path / "clip")
    tok = build_tokenizer(_cfg().tokenizer, None, tmp_path, CORPUS)
    tok.save_pretrained(tmp_path / "lm")
    Qwen2ForCausalLM(
        Qwen2Config(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2)
    ).save_pretrained(tmp_path / "lm")  # fmt: skip
    cfg = _cfg(
        f"model.vision.path={tmp_path / 'clip'}",
        "model.vision.feature_layer=-2",
        f"model.lm.path={tmp_path / 'lm'}",
    )
    model = build_vlm(cfg).eval()
    assert model.vision.grid == (4, 4) and model.tokens_per_image == 16  # CLIP's class token dropped
    ids = torch.tensor([[1, *[model.image_pad_id] * 16, 2]])
    with torch.no_grad():
        assert model(ids, pixel_values=torch.randn(1, 3, 32, 32)).shape == (1, 18, len(tok))
    with pytest.raises(TrainError, match=r"model.lm.path=.*is not a folder"):
        build_vlm(_cfg(f"model.lm.path={tmp_path / 'missing'}"))


def test_generate_is_batched_and_matches_a_naive_greedy_loop(vlm):
    samples = [_sample(i, c) for i, c in enumerate(["red", "blue", "green"])]
    samples.append(
        _sample(3, "red", question="Long question first. <image>\nWhat colour is the shape in the picture?")
    )
    one = generate(vlm, samples, max_new_tokens=6, batch_size=1)
    batched = generate(vlm, samples, max_new_tokens=6, batch_size=4)
    assert batched == one
    # independent reference: full forward each step, argmax, stop at <|im_end|>
    from tbi_train.data import Collator

    collator = Collator(vlm.tokenizer, vlm.image_transform, vlm.tokens_per_image)
    ids = torch.tensor([collator.encode_prompt(samples[3].conversations, [1]).input_ids])
    pixels = vlm.image_transform(samples[3].images[0])[None]
    out = []
    with torch.no_grad():
        for _ in range(6):
            nxt = int(vlm(ids, pixel_values=pixels)[0, -1].argmax())
            if nxt == vlm.tokenizer.eos_token_id:
                break
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    assert one[3] == vlm.tokenizer.decode(out, skip_special_tokens=True).strip()


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    ids = torch.tensor([[1, *[3] * 16, 20, 21, 22], [1, *[3] * 16, 23, 24, 25]])
    pixels = torch.randn(2, 3, 64, 64)
    grads = []
    for flag in ("false", "true"):
        torch.manual_seed(2)
        cfg = _cfg(f"model.vision.gradient_checkpointing={flag}", f"model.lm.gradient_checkpointing={flag}")
        model = build_vlm(cfg, cache_dir=tmp_path, corpus=CORPUS).train()
        for p in model.parameters():
            p.requires_grad_(False)
        trained = [p for n, p in model.named_parameters() if "lora_" in n or n.startswith("vision.")]
        for p in trained:
            p.requires_grad_(True)
        torch.manual_seed(5)  # same LoRA dropout masks in both runs
        model(ids, pixel_values=pixels).logsumexp(-1).mean().backward()
        grads.append([p.grad for p in trained])  # None: unused by the features (post-layernorm)
    assert model.lm.is_gradient_checkpointing and model.vision.model.is_gradient_checkpointing
    assert sum(g is not None for g in grads[0]) > 20
    for a, b in zip(*grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


def test_any_registry_projector_sets_the_image_token_count(tmp_path):
    cfg = _cfg(
        "model.projector.name=c-abstractor",
        "model.projector.options={hidden_dim: 32, output_grid: [2, 2], num_blocks: 2, blocks_before_pool: 1, se_reduction: 4}",
    )
    model = build_vlm(cfg, cache_dir=tmp_path, corpus=CORPUS).eval()
    assert model.tokens_per_image == 4
    ids = torch.tensor([[1, *[model.image_pad_id] * 8, 20]])
    with torch.no_grad():
        assert model(ids, pixel_values=torch.randn(2, 3, 64, 64)).shape == (1, 10, len(model.tokenizer))
