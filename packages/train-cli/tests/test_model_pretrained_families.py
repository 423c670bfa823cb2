"""Decomposing InternVL / LLaVA / Qwen2.5-VL checkpoints: the decomposed VLM reproduces the original logits."""

import os

import pytest
import torch
from PIL import Image

from tbi_train.errors import TrainError
from tbi_train.model import VLM, train_bpe_tokenizer
from tbi_train.model.pretrained import load_pretrained_vlm
from tbi_train.model.pretrained_qwen import NativeResolutionVLM, PatchMergerProjector

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXT = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
SPECIAL = {
    "internvl": ["<img>", "</img>", "<IMG_CONTEXT>"],
    "llava": ["<image>"],
    "qwen2_5_vl": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _tokenizer(family, tmp_path):
    tok = train_bpe_tokenizer(["빨간색 원입니다. A red circle."], 300, tmp_path / "bpe")
    tok.add_special_tokens({"additional_special_tokens": SPECIAL[family]})
    return tok


def _perturb(model, seed):
    """Random weights everywhere (norm gains, biases, layer scales too) so a misplaced tensor shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=gen))
    return model.eval()


def _internvl(tmp_path, **overrides):
    from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration

    tok = _tokenizer("internvl", tmp_path)
    vision = dict(VISION, image_size=32, patch_size=8, use_mean_pooling=False)
    config = InternVLConfig(
        vision_config=vision,
        text_config=dict(TEXT, model_type="qwen2"),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        **overrides,
    )
    model = InternVLForConditionalGeneration(config)
    processor = GotOcr2ImageProcessorPil(
        size={"height": 32, "width": 32}, crop_to_patches=False, min_patches=1, max_patches=12
    )
    return model, tok, processor


def _llava(tmp_path, **overrides):
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration

    tok = _tokenizer("llava", tmp_path)
    vision = dict(VISION, model_type="clip_vision_model", image_size=32, patch_size=8)
    config = LlavaConfig(
        vision_config=vision,
        text_config=dict(TEXT, model_type="llama", tie_word_embeddings=True),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        **overrides,
    )
    model = LlavaForConditionalGeneration(config)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, tok, processor


def _qwen(tmp_path, **overrides):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    tok = _tokenizer("qwen2_5_vl", tmp_path)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL["qwen2_5_vl"]}
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        patch_size=8,
        window_size=32,
        fullatt_block_indexes=[1],
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    text = dict(TEXT, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
    config = Qwen2_5_VLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        **overrides,
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    processor = Qwen2VLImageProcessorPil(
        patch_size=8, merge_size=2, temporal_patch_size=2, min_pixels=16 * 16, max_pixels=96 * 96
    )
    return model, tok, processor


BUILDERS = {"internvl": _internvl, "llava": _llava, "qwen2_5_vl": _qwen}


def _checkpoint(family, tmp_path, **overrides):
    torch.manual_seed(0)
    model, tok, processor = BUILDERS[family](tmp_path, **overrides)
    _perturb(model, 1)
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, tok, folder


def _images():
    gen = torch.Generator().manual_seed(3)
    wide = (torch.rand(40, 72, 3, generator=gen) * 255).to(torch.uint8).numpy()
    tall = (torch.rand(56, 30, 3, generator=gen) * 255).to(torch.uint8).numpy()
    return [Image.fromarray(wide), Image.fromarray(tall)]


def _batch(tok, pad_id, counts, wrap):
    """Two rows: row 0 has image 0 then text, row 1 text, image 1, more text; right padding."""

    def text(s):
        return tok(s, add_special_tokens=False).input_ids

    open_, close = wrap
    row0 = [*open_, *[pad_id] * counts[0], *close, *text("무슨 색입니까? what colour?")]
    row1 = [*text("Read:"), *open_, *[pad_id] * counts[1], *close, *text("글자")]
    length = max(len(row0), len(row1))
    ids = torch.full((2, length), tok.pad_token_id)
    mask = torch.zeros((2, length), dtype=torch.long)
    for b, row in enumerate((row0, row1)):
        ids[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = 1
    return ids, mask


def _assert_same_logits(ours, theirs, mask):
    keep = mask.bool()
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours[keep], theirs[keep], atol=1e-5, rtol=1e-5)
    assert theirs[keep].abs().max() > 1e-2  # a non-degenerate comparison


def test_internvl_tiles_and_logits_match_the_original(tmp_path):
    original, tok, folder = _checkpoint("internvl", tmp_path)
    vlm = load_pretrained_vlm(folder)
    assert type(vlm) is VLM and vlm.config.projector.name == "pixel-shuffle-mlp"
    assert vlm.config.tokenizer.image_pad_token == "<IMG_CONTEXT>"
    inputs = vlm.image_transform.preprocess(_images())
    # 72x40 (ratio 1.8) -> a 2x1 grid + thumbnail; 30x56 (ratio 0.54) -> 1x2 + thumbnail
    assert inputs["num_tiles"].tolist() == [3, 3]
    assert vlm.tokens_per_image == 4  # 4x4 patches, pixel shuffle 2x2
    counts = (inputs["num_tiles"] * vlm.tokens_per_image).tolist()
    wrap = ([tok.convert_tokens_to_ids("<img>")], [tok.convert_tokens_to_ids("</img>")])
    ids, mask = _batch(tok, vlm.image_pad_id, counts, wrap)
    pixels = inputs["pixel_values"]
    with torch.no_grad():
        ours = vlm(ids, attention_mask=mask, pixel_values=pixels)
        theirs = original(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    _assert_same_logits(ours, theirs, mask)


def test_llava_logits_match_the_original_and_projector_is_mlp2x_gelu(tmp_path):
    original, tok, folder = _checkpoint("llava", tmp_path)
    vlm = load_pretrained_vlm(folder, family="llava")
    assert vlm.config.projector.name == "mlp2x_gelu" and vlm.config.vision.feature_layer == -2
    torch.testing.assert_close(
        vlm.projector.mlp[2].weight, original.model.multi_modal_projector.linear_2.weight
    )
    inputs = vlm.image_transform.preprocess(_images())
    assert inputs["pixel_values"].shape == (2, 3, 32, 32)
    ids, mask = _batch(tok, vlm.image_pad_id, [vlm.tokens_per_image] * 2, ([], []))
    with torch.no_grad():
        ours = vlm(ids, attention_mask=mask, pixel_values=inputs["pixel_values"])
        theirs = original(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"]).logits
    _assert_same_logits(ours, theirs, mask)
    # tied embeddings stay tied, and the LM is a plain causal LM
    assert vlm.lm.lm_head.weight is vlm.lm.get_input_embeddings().weight
    assert vlm.tokens_per_image == 16
    half = load_pretrained_vlm(folder, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        low = half(ids, attention_mask=mask, pixel_values=inputs["pixel_values"])
    assert low.dtype == torch.bfloat16 and torch.isfinite(low.float()).all()


def test_qwen2_5_vl_native_resolution_logits_match_the_original(tmp_path):
    original, tok, folder = _checkpoint("qwen2_5_vl", tmp_path)
    vlm = load_pretrained_vlm(folder)
    assert isinstance(vlm, NativeResolutionVLM) and isinstance(vlm.projector, PatchMergerProjector)
    inputs = vlm.image_transform.preprocess(_images())
    grid = inputs["image_grid_thw"]
    assert grid[:, 1:].tolist() != [grid[0, 1:].tolist()] * 2  # two different native resolutions
    counts = (grid.prod(dim=1) // 4).tolist()
    wrap = ([tok.convert_tokens_to_ids("<|vision_start|>")], [tok.convert_tokens_to_ids("<|vision_end|>")])
    ids, mask = _batch(tok, vlm.image_pad_id, counts, wrap)
    kinds = (ids == vlm.image_pad_id).int()
    with torch.no_grad():
        ours = vlm(ids, attention_mask=mask, pixel_values=inputs["pixel_values"], image_grid_thw=grid)
        theirs = original(
            input_ids=ids,
            attention_mask=mask,
            pixel_values=inputs["pixel_values"],
            image_grid_thw=grid,
            mm_token_type_ids=kinds,
        ).logits
    _assert_same_logits(ours, theirs, mask)
    # the M-RoPE positions matter: plain 1-D positions give different logits
    with torch.no_grad():
        embeds = vlm.embed(ids, inputs["pixel_values"], image_grid_thw=grid)
        flat = vlm.lm(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
    assert (flat[mask.bool()] - theirs[mask.bool()]).abs().max() > 1e-3


def _left_pad(ids, mask, pad_id):
    length, out_ids, out_mask = ids.shape[1], torch.full_like(ids, pad_id), torch.zeros_like(mask)
    for b, n in enumerate(mask.sum(1).tolist()):
        out_ids[b, length - n :] = ids[b, :n]
        out_mask[b, length - n :] = 1
    return out_ids, out_mask


def test_qwen2_5_vl_greedy_generation_matches_the_original(tmp_path):
    original, tok, folder = _checkpoint("qwen2_5_vl", tmp_path)
    vlm = load_pretrained_vlm(folder)
    inputs = vlm.image_transform.preprocess(_images())
    grid = inputs["image_grid_thw"]
    wrap = ([tok.convert_tokens_to_ids("<|vision_start|>")], [tok.convert_tokens_to_ids("<|vision_end|>")])
    ids, mask = _left_pad(
        *_batch(tok, vlm.image_pad_id, (grid.prod(dim=1) // 4).tolist(), wrap), tok.pad_token_id
    )
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=None)
    theirs = original.generate(
        input_ids=ids,
        attention_mask=mask,
        pixel_values=inputs["pixel_values"],
        image_grid_thw=grid,
        mm_token_type_ids=(ids == vlm.image_pad_id).int(),
        **kw,
    )
    ours = vlm.generate(ids, mask, inputs["pixel_values"], grid, **kw)
    assert torch.equal(ours, theirs[:, ids.shape[1] :])


def test_llava_answers_through_tbi_generate_equal_the_original_generate(tmp_path):
    from types import SimpleNamespace

    from tbi_train.data import Collator
    from tbi_train.eval import generate

    original, tok, folder = _checkpoint("llava", tmp_path)
    vlm = load_pretrained_vlm(folder)
    image = _images()[0]
    conv = [{"from": "human", "value": "<image>\n무슨 색입니까?"}, {"from": "gpt", "value": "빨간색"}]
    sample = SimpleNamespace(
        id="s0", images=[image], conversations=conv, meta={"media_frames": [1]}, answers=[]
    )
    collator = Collator(tok, vlm.image_transform, vlm.tokens_per_image, image_token="<image>")
    prompt = torch.tensor([collator.encode_prompt(conv, [1]).input_ids])
    theirs = original.generate(
        input_ids=prompt,
        pixel_values=vlm.image_transform(image)[None],
        max_new_tokens=5,
        do_sample=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    expected = tok.decode(theirs[0, prompt.shape[1] :], skip_special_tokens=True).strip()
    assert expected
    assert generate(vlm, [sample], max_new_tokens=5) == [expected]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"vision_feature_layer": [-2, -1]}, "vision_feature_layer=\\[-2, -1\\] concatenates several layers"),
        ({"projector_hidden_act": "silu"}, "projector_hidden_act='silu'"),
        ({"vision_feature_select_strategy": "full"}, "vision_feature_select_strategy='full'"),
        ({"multimodal_projector_bias": False}, "multimodal_projector_bias=false"),
    ],
)
def test_checkpoints_the_decomposition_cannot_reproduce_are_refused_by_key(tmp_path, overrides, message):
    _, _, folder = _checkpoint("llava", tmp_path, **overrides)
    with pytest.raises(TrainError, match=message):
        load_pretrained_vlm(folder)


def test_internvl_tiles_go_through_the_collator_as_frames_and_match_the_original(tmp_path):
    from tbi_train.data import Collator
    from tbi_train.data.sample import Sample

    original, tok, folder = _checkpoint("internvl", tmp_path)
    vlm = load_pretrained_vlm(folder)
    wide, tall = _images()
    conv = [{"from": "human", "value": "<image>\n무슨 색입니까? <image>"}, {"from": "gpt", "value": "빨간색"}]
    sample = Sample("s0", [wide, tall], conv, "ko", "color", ["빨간색"], {"media_frames": [1, 1]})
    tiled = vlm.image_transform.tile_sample(sample)
    assert tiled.meta["media_frames"] == [3, 3] and sample.meta["media_frames"] == [1, 1]
    collator = Collator(tok, vlm.image_transform, vlm.tokens_per_image, image_token="<IMG_CONTEXT>")
    batch = collator([tiled])
    expected_pixels = torch.cat([vlm.image_transform.tiles(wide), vlm.image_transform.tiles(tall)])
    torch.testing.assert_close(batch["pixel_values"], expected_pixels, atol=1e-6, rtol=0)
    ids = batch["input_ids"]
    starts = (ids[0] == tok.convert_tokens_to_ids("<img>")).nonzero().flatten()
    assert len(starts) == 2 and bool((ids[0, starts[0] + 1 : starts[0] + 13] == vlm.image_pad_id).all())
    assert ids[0, starts[0] + 13] == tok.convert_tokens_to_ids("</img>")  # 3 tiles x 4 tokens, then </img>
    with torch.no_grad():
        ours = vlm(ids, batch["attention_mask"], batch["pixel_values"], batch["image_token_mask"])
        theirs = original(
            input_ids=ids, attention_mask=batch["attention_mask"], pixel_values=expected_pixels
        ).logits
    _assert_same_logits(ours, theirs, batch["attention_mask"])
