"""`model.pretrained`: an existing InternVL / LLaVA / Qwen2.5-VL checkpoint through `tbi train`, save/load, generate.

Each family's tiny random checkpoint is trained for two LoRA steps by the CLI; the saved model reloads to
identical logits, and equals the original transformers model with the trained LoRA deltas merged into its
weights, both in logits (batches made by the Collator) and in greedy answers (`generate` vs the original's).
"""

import json
import os

import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from tbi_train.cli import app
from tbi_train.config import ModelConfig, ProjectorSpec, TokenizerConfig
from tbi_train.data import Collator, DataError, load_conversations
from tbi_train.data.sample import Sample
from tbi_train.errors import TrainError
from tbi_train.eval import generate
from tbi_train.model import (
    NativeResolutionVLM,
    PretrainedImageTransform,
    build_vlm,
    load_vlm,
    save_vlm,
    train_bpe_tokenizer,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXT = dict(
    vocab_size=320,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
)
VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
SPECIAL = {
    "internvl": ["<img>", "</img>", "<IMG_CONTEXT>"],
    "llava": ["<image>"],
    "qwen2_5_vl": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from tbi_train.synth import generate_synthetic

    folder = tmp_path_factory.mktemp("synth") / "data"
    generate_synthetic(
        folder, n=8, seed=0, image_size=96, val_fraction=0.25, task_weights={"color": 1.0, "count": 1.0}
    )
    return folder


def _tokenizer(family, folder):
    tok = train_bpe_tokenizer(["빨간색 원입니다. A red circle."], 300, folder / "bpe")
    tok.add_special_tokens({"additional_special_tokens": SPECIAL[family]})
    return tok


def _internvl(tok):
    from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration

    config = InternVLConfig(
        vision_config=dict(VISION, image_size=32, patch_size=8, use_mean_pooling=False),
        text_config=dict(TEXT, model_type="qwen2"),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
    )
    processor = GotOcr2ImageProcessorPil(
        size={"height": 32, "width": 32}, crop_to_patches=False, min_patches=1, max_patches=4
    )
    return InternVLForConditionalGeneration(config), processor


def _llava(tok):
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(
        vision_config=dict(VISION, model_type="clip_vision_model", image_size=32, patch_size=8),
        text_config=dict(TEXT, model_type="llama", tie_word_embeddings=True),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return LlavaForConditionalGeneration(config), processor


def _qwen(tok):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL["qwen2_5_vl"]}
    vision = dict(
        depth=2,
        hidden_size=16,
        intermediate_size=32,
        num_heads=2,
        out_hidden_size=32,
        patch_size=8,
        window_size=32,
        fullatt_block_indexes=[1],
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    config = Qwen2_5_VLConfig(
        vision_config=vision,
        text_config=dict(TEXT, rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]}),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    processor = Qwen2VLImageProcessorPil(
        patch_size=8, merge_size=2, temporal_patch_size=2, min_pixels=16 * 16, max_pixels=96 * 96
    )
    return Qwen2_5_VLForConditionalGeneration(config), processor


BUILDERS = {"internvl": _internvl, "llava": _llava, "qwen2_5_vl": _qwen}


def _checkpoint(family, tmp_path):
    """A tiny random checkpoint of `family` with every weight perturbed, saved as transformers saves it."""
    torch.manual_seed(0)
    tok = _tokenizer(family, tmp_path)
    model, processor = BUILDERS[family](tok)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=gen))
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model.eval(), tok, folder


def _merge_trained_lora(original, vlm, family):
    """Add each trained adapter's (alpha / r) B A to the matching weight of the original transformers model."""
    merged = 0
    for name, module in vlm.lm.named_modules():
        if not hasattr(module, "lora_A") or "default" not in module.lora_A:
            continue
        delta = module.lora_B["default"].weight @ module.lora_A["default"].weight
        delta = delta * module.scaling["default"]
        # InternVL/LLaVA: the LM shell's `model` is the original's `model.language_model`; Qwen: the original.
        target = name if family == "qwen2_5_vl" else name.replace("model.", "model.language_model.", 1)
        with torch.no_grad():
            original.get_parameter(f"{target}.weight").add_(delta)
        merged += 1
    return merged


def _model_inputs(batch, vlm):
    keys = ("input_ids", "attention_mask", "pixel_values", "image_token_mask", "image_grid_thw")
    return {k: batch[k] for k in keys if k in batch}


def _original_inputs(ids, mask, pixels, vlm):
    out = {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels["pixel_values"]}
    if isinstance(vlm, NativeResolutionVLM):
        out["image_grid_thw"] = pixels["image_grid_thw"]
        out["mm_token_type_ids"] = (ids == vlm.image_pad_id).int()
    return out


def _left_pad(rows, pad_id):
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, length - len(row) :] = torch.tensor(row)
        mask[b, length - len(row) :] = 1
    return ids, mask


@pytest.mark.slow
@pytest.mark.parametrize("family", ["internvl", "llava", "qwen2_5_vl"])
def test_tbi_train_from_an_existing_vlm_saves_reloads_and_answers_as_the_original(tmp_path, synth, family):
    original, tok, folder = _checkpoint(family, tmp_path)
    config = {
        "preset": "tiny",
        "name": f"from-{family}",
        "model": {"peft": {"lm": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}}},
        "data": {"train": str(synth / "train.json"), "val": str(synth / "val.json")},
        "phases": [
            {
                "name": "lm_lora",
                "trainable": ["lm_lora"],
                "lr": {"lm_lora": 0.05},
                "steps": 2,
                "batch_size": 2,
            }
        ],
        "eval": {"at_start": False, "limit": 2, "batch_size": 2, "max_new_tokens": 3},
        "checkpoint": {"every_steps": 0},
        "max_length": 1024,
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    args = ["train", str(tmp_path / "run.yaml"), f"model.pretrained={folder}", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(r["loss"] > 0 and r["tokens"] > 0 for r in steps)
    assert any("eval" in r for r in records)  # the phase-end evaluation generated through the split model

    vlm = load_vlm(out / "final")
    assert vlm.config.pretrained == str(folder)
    assert isinstance(vlm, NativeResolutionVLM) == (family == "qwen2_5_vl")
    trained = [p for n, p in vlm.named_parameters() if "lora_B" in n]
    assert trained and any(p.abs().max() > 0 for p in trained)  # the adapter moved off its zero init

    samples = [load_conversations(synth / "val.json")[i] for i in range(2)]
    collator = Collator(vlm.tokenizer, vlm.image_transform, vlm.tokens_per_image)
    batch = collator(samples)
    if family == "qwen2_5_vl":
        assert batch["image_grid_thw"].shape == (2, 3)
        assert int(batch["image_token_mask"].sum()) == int(batch["image_grid_thw"].prod(dim=1).sum()) // 4
    with torch.no_grad():
        ours = vlm(**_model_inputs(batch, vlm))
    again = load_vlm(save_vlm(vlm, tmp_path / "again"))
    with torch.no_grad():
        assert torch.equal(again(**_model_inputs(batch, again)), ours)

    # The original transformers model with the trained deltas merged is the independent reference.
    assert _merge_trained_lora(original, vlm, family) == 2 * 7
    prepared = [collator.prepare(s) for s in samples]
    pixels = vlm.image_transform.preprocess([im for s in samples for im in s.images])
    if family == "internvl":
        assert pixels["num_tiles"].tolist() == [5, 5]  # 96 x 96: a 2 x 2 grid + thumbnail (max 4 tiles)
    mask = batch["attention_mask"]
    with torch.no_grad():
        theirs = original(**_original_inputs(batch["input_ids"], mask, pixels, vlm)).logits
    keep = mask.bool()
    torch.testing.assert_close(ours[keep], theirs[keep], atol=1e-4, rtol=1e-4)

    media = [
        collator.media_tokens(collator.transform_images(s.images), s.meta["media_frames"]) for s in prepared
    ]
    prompts = [
        collator.encode_prompt(s.conversations, s.meta["media_frames"], m).input_ids
        for s, m in zip(prepared, media)
    ]
    ids, prompt_mask = _left_pad(prompts, collator.pad_token_id)
    kw = dict(
        max_new_tokens=5, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=collator.pad_token_id
    )
    with torch.no_grad():
        full = original.generate(**_original_inputs(ids, prompt_mask, pixels, vlm), **kw)
    expected = [t.strip() for t in tok.batch_decode(full[:, ids.shape[1] :], skip_special_tokens=True)]
    assert any(expected)
    assert generate(again, samples, max_new_tokens=5, batch_size=2) == expected


def _random_image(width, height, seed):
    gen = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(height, width, 3, generator=gen) * 255).to(torch.uint8).numpy())


def _runs(mask):
    """(start, length) of each run of True in a 1-D bool tensor."""
    runs, start = [], None
    for i, flag in enumerate([*mask.tolist(), False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def test_collator_concatenates_native_patches_and_counts_tokens_from_each_grid(tmp_path):
    from transformers import Qwen2VLImageProcessorPil

    tok = _tokenizer("qwen2_5_vl", tmp_path)
    processor = Qwen2VLImageProcessorPil(
        patch_size=8, merge_size=2, temporal_patch_size=2, min_pixels=16 * 16, max_pixels=96 * 96
    )
    transform = PretrainedImageTransform(processor, "qwen2_5_vl", image_token="<|image_pad|>")
    wide, tall = _random_image(72, 40, 0), _random_image(30, 56, 1)
    conv = [{"from": "human", "value": "<image>\n무슨 색? <image>"}, {"from": "gpt", "value": "red"}]
    video = Sample("v", [wide, tall, tall], conv, "ko", "color", ["red"], {"media_frames": [1, 2]})
    text = Sample(
        "t", [], [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "안녕"}], "ko", "qa", [], {}
    )
    collator = Collator(tok, transform, tokens_per_image=999)  # a packed transform's own counts win
    batch = collator([video, text])
    pixels, grid = transform.native([wide, tall, tall])  # the processor's own batched output
    assert torch.equal(batch["pixel_values"], pixels) and torch.equal(batch["image_grid_thw"], grid)
    assert batch["media_frames"].tolist() == [1, 1, 1]  # the 2-frame placeholder became two images
    ids = batch["input_ids"][0]
    runs = _runs(batch["image_token_mask"][0])
    assert [n for _, n in runs] == (grid.prod(dim=1) // 4).tolist()
    start, end = tok.convert_tokens_to_ids("<|vision_start|>"), tok.convert_tokens_to_ids("<|vision_end|>")
    assert all(ids[s - 1] == start and ids[s + n] == end for s, n in runs)
    assert not batch["image_token_mask"][1].any()
    only_text = collator([text])
    assert only_text["pixel_values"].shape[0] == 0 and only_text["image_grid_thw"].shape == (0, 3)


def test_prepare_is_idempotent_and_the_transform_names_the_image_token(tmp_path):
    from transformers import GotOcr2ImageProcessorPil

    tok = _tokenizer("internvl", tmp_path)
    processor = GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, min_patches=1, max_patches=12)
    transform = PretrainedImageTransform(processor, "internvl", image_token="<IMG_CONTEXT>")
    conv = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "red"}]
    sample = Sample("s", [_random_image(72, 40, 2)], conv, "en", "color", ["red"], {"media_frames": [1]})
    collator = Collator(tok, transform, tokens_per_image=4)
    once = collator.prepare(sample)
    assert once.meta["media_frames"] == [3] and once.conversations[0]["value"].startswith(
        "<img><image></img>"
    )
    assert collator.prepare(once) is once
    assert collator.image_token == "<IMG_CONTEXT>"
    assert int(collator([sample])["image_token_mask"].sum()) == 3 * 4
    with pytest.raises(DataError, match=r"set model.tokenizer.image_pad_token='<IMG_CONTEXT>'"):
        Collator(tok, transform, tokens_per_image=4, image_token="<image>")
    with pytest.raises(TrainError, match=r"tile_sample\(\) is InternVL's"):
        PretrainedImageTransform(processor, "llava").tile_sample(sample)


def test_model_pretrained_builds_the_split_model_and_names_conflicting_keys(tmp_path):
    import dataclasses

    from tbi_train.config import LMConfig

    _, _, folder = _checkpoint("llava", tmp_path)
    base = ModelConfig(pretrained=str(folder))
    with pytest.raises(TrainError, match=r"model.lm.path=.* remove model.lm.path"):
        build_vlm(dataclasses.replace(base, lm=LMConfig(path=str(tmp_path))))
    with pytest.raises(TrainError, match=r"model.pretrained=.*absent is not a folder"):
        build_vlm(ModelConfig(pretrained=str(tmp_path / "absent")))
    with pytest.raises(TrainError, match=r"model.projector.name=c-abstractor .* own mlp2x_gelu"):
        build_vlm(dataclasses.replace(base, projector=ProjectorSpec("c-abstractor")))
    with pytest.raises(TrainError, match=r"image_pad_token=<IMG_CONTEXT> but .* marks images with <image>"):
        build_vlm(dataclasses.replace(base, tokenizer=TokenizerConfig(image_pad_token="<IMG_CONTEXT>")))
    vlm = build_vlm(base)
    assert vlm.config.pretrained == str(folder) and vlm.config.projector.name == "mlp2x_gelu"
    assert vlm.config.tokenizer.image_pad_token == "<image>" and vlm.config.peft == base.peft
    assert any("lora_A" in n for n, _ in vlm.lm.named_parameters())  # PeftConfig's default LM adapter
    assert vlm.vision.model.is_activation_checkpointing  # VisionConfig.gradient_checkpointing applies too
