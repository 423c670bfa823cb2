"""Vision-side experiment features of the core: 2D-RoPE, window attention, multi-scale taps, in-LM PyramidDrop,
the foveated query from the LM, and image-frame replication; each trains, saves and reloads."""

import json
import os

import pytest
import torch
from PIL import Image

from tbi_train.config import apply_overrides, get_preset
from tbi_train.errors import TrainError
from tbi_train.model import build_tokenizer, build_vlm, load_vlm, save_vlm
from tbi_train.train import token_loss_sum

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CORPUS = ["빨간색 원입니다. A red circle.", "숫자는 3 입니다. The number is three.", "What colour is it?"]
PYRAMID_C = [
    "model.vision.feature_layers=[1,3,4]",
    "model.projector.name=pyramid-c-abstractor",
    "model.projector.options.hidden_dim=64",
    "model.projector.options.output_grid=[2,2]",
    "model.projector.options.se_reduction=4",
    "model.projector.options.branch_dim=32",
]
FOVEATED = [
    "model.projector.name=foveated-query",
    "model.projector.options.query_dim=32",
    "model.projector.options.depth=1",
    "model.projector.query_from_lm=true",
]
ALL_VISION = [
    "model.vision.rope_2d=true",
    "model.vision.window_attention=true",
    *PYRAMID_C,
    "model.lm.pyramid_drop=[0.5,0.3,0.1]",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(_cfg().tokenizer, None, tmp_path_factory.mktemp("tok"), CORPUS)


def _cfg(*overrides):
    return apply_overrides(get_preset("tiny"), list(overrides)).model


def _vlm(tokenizer, *overrides, seed=0):
    torch.manual_seed(seed)
    return build_vlm(_cfg(*overrides), tokenizer=tokenizer).eval()


def _ids(vlm, questions, answer="red", left_pad=False):
    """Chat-template rows (one image each) padded into [B, L] ids and mask."""
    rows = []
    for q in questions:
        text = (
            "<|im_start|>user\n" + "<|image_pad|>" * vlm.tokens_per_image + f"\n{q}<|im_end|>\n"
            "<|im_start|>assistant\n" + (f"{answer}<|im_end|>\n" if answer else "")
        )
        rows.append(vlm.tokenizer(text, add_special_tokens=False).input_ids)
    length = max(map(len, rows))
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, row in enumerate(rows):
        span = slice(length - len(row), length) if left_pad else slice(0, len(row))
        ids[b, span], mask[b, span] = torch.tensor(row), 1
    return ids, mask


def _pixels(n, seed=1):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


# ---- 2D-RoPE and window attention ------------------------------------------------------------------------


def _swap_patches(x, a, b, patch=16):
    """Swap the pixel blocks of patches a=(row, col) and b in [N, 3, H, W]."""
    y = x.clone()
    (ra, ca), (rb, cb) = a, b
    sa = (..., slice(ra * patch, (ra + 1) * patch), slice(ca * patch, (ca + 1) * patch))
    sb = (..., slice(rb * patch, (rb + 1) * patch), slice(cb * patch, (cb + 1) * patch))
    y[sa], y[sb] = x[sb], x[sa]
    return y


def test_rope_2d_removes_absolute_positions_and_positions_come_from_rope(tokenizer):
    from tbi_vision_rope import RopeWindowAttention

    plain = _vlm(tokenizer)
    assert any("position_embedding" in n for n, _ in plain.vision.named_parameters())
    vlm = _vlm(tokenizer, "model.vision.rope_2d=true")
    assert not any("position_embedding" in n for n, _ in vlm.vision.named_parameters())
    info = vlm.vision.model.tbi_vision_rope
    assert info.rope is not None and info.drop_abs_pos and info.window == 0
    x = _pixels(1)
    swapped = _swap_patches(x, (0, 0), (3, 2))
    i, j = 0, 3 * 4 + 2  # row-major token indexes of the two patches

    def features():
        with torch.no_grad():
            f, g = vlm.vision(x)[0], vlm.vision(swapped)[0]  # [P, C]
        g_back = g.clone()
        g_back[[i, j]] = g[[j, i]]
        return f, g_back

    f, g = features()
    assert not torch.allclose(f, g, atol=1e-3)  # moving a patch changes what it encodes: positions matter
    for module in vlm.vision.modules():
        if isinstance(module, RopeWindowAttention):
            module.rope = None
    f, g = features()
    torch.testing.assert_close(f, g, atol=1e-5, rtol=1e-5)  # without the rotation the tower is position-blind


def test_window_attention_keeps_information_inside_windows(tokenizer):
    vlm = _vlm(tokenizer, "model.vision.rope_2d=true", "model.vision.window_attention=true")
    info = vlm.vision.model.tbi_vision_rope
    assert info.window == 2 and info.global_layers == (3,)  # 2x2 windows on the 4x4 grid, last layer global
    x = _pixels(1)
    y = x.clone()
    y[..., :16, :16] += 1.0  # patch (0, 0): window (0, 0) holds patches (0,0) (0,1) (1,0) (1,1)
    with torch.no_grad():
        hx = vlm.vision.model(pixel_values=x, output_hidden_states=True).hidden_states
        hy = vlm.vision.model(pixel_values=y, output_hidden_states=True).hidden_states
    changed = (hx[1][0] - hy[1][0]).abs().amax(dim=-1) > 1e-6  # [16] after layer 0 (a window layer)
    inside = torch.zeros(16, dtype=torch.bool)
    inside[[0, 1, 4, 5]] = True
    assert torch.equal(changed, inside)
    reached = (hx[4][0] - hy[4][0]).abs().amax(dim=-1) > 1e-6  # after the global layer: everywhere
    assert reached.all()


# ---- multi-scale taps ------------------------------------------------------------------------------------


def test_feature_layers_feed_the_chosen_hidden_states_to_the_projector(tokenizer):
    vlm = _vlm(tokenizer, *PYRAMID_C)
    seen = {}
    vlm.projector.register_forward_hook(
        lambda m, args, kwargs, out: seen.update(features=args[0], grid=kwargs["grid"]), with_kwargs=True
    )
    x = _pixels(2)
    with torch.no_grad():
        vlm.encode_images(x)
        hidden = vlm.vision.model(pixel_values=x, output_hidden_states=True).hidden_states
    assert len(seen["features"]) == 3 and seen["grid"] == [(4, 4)] * 3
    for got, index in zip(seen["features"], (1, 3, 4)):
        torch.testing.assert_close(got, hidden[index], rtol=0, atol=0)
    assert vlm.tokens_per_image == 4


def test_feature_layers_into_a_single_scale_projector_are_concatenated(tokenizer):
    vlm = _vlm(tokenizer, "model.vision.feature_layers=[1,3,4]")  # the tiny preset's mlp2x_gelu
    seen = {}
    vlm.projector.register_forward_hook(
        lambda m, args, kwargs, out: seen.update(features=args[0], grid=kwargs["grid"]), with_kwargs=True
    )
    x = _pixels(2)
    with torch.no_grad():
        vlm.encode_images(x)
        hidden = vlm.vision.model(pixel_values=x, output_hidden_states=True).hidden_states
    assert seen["grid"] == (4, 4)
    expected = torch.cat([hidden[i] for i in (1, 3, 4)], dim=-1)
    torch.testing.assert_close(seen["features"], expected, rtol=0, atol=0)
    assert vlm.projector.config.input_dim == 3 * vlm.vision.hidden_size


def test_feature_layers_config_errors_name_the_keys(tokenizer):
    with pytest.raises(TrainError, match=r"num_scales=3"):
        _vlm(tokenizer, *PYRAMID_C[1:], "model.vision.feature_layers=[2,4]")
    with pytest.raises(TrainError, match=r"out of range"):
        _vlm(tokenizer, *PYRAMID_C[1:], "model.vision.feature_layers=[1,3,9]")


# ---- PyramidDrop inside the LM ----------------------------------------------------------------------------


def _reference_logits(vlm, ids, mask, ratio):
    """A manual decoder loop driven by tbi_projectors' PyramidDropHook, masks from transformers itself."""
    from transformers.masking_utils import create_causal_mask

    from tbi_projectors import PyramidDropHook, PyramidDropLMConfig, decoder_query_key, gather_positions

    lm = vlm.lm
    decoder = lm.model
    image = ids == vlm.image_pad_id
    embeds = vlm.embed(ids, _pixels(ids.shape[0]))
    hook = PyramidDropHook(PyramidDropLMConfig(layers=(1, 2, 3), ratio=ratio))
    hook.start(image, vlm.instruction_index(ids, mask, image))
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    h, m, kept = embeds, mask, []

    def causal(h, m, positions):
        return create_causal_mask(
            config=lm.config, inputs_embeds=h, attention_mask=m, past_key_values=None, position_ids=positions
        )

    rope = decoder.rotary_emb(h, positions)
    for i, layer in enumerate(decoder.layers):
        h = layer(h, attention_mask=causal(h, m, positions), position_ids=positions, position_embeddings=rope)
        if hook.is_drop_layer(i + 1):
            q, k = decoder_query_key(decoder.layers[i + 1], h, rope)
            res = hook.after_layer(i + 1, h, q, k, m)
            h, m = res.hidden_states, res.attention_mask
            positions = gather_positions(positions, res.positions, 0)
            rope = decoder.rotary_emb(h, positions)
            kept.append(res.image_mask.sum(dim=1))
    logits = lm.lm_head(decoder.norm(h))  # [B, L', V]
    return logits, hook.original_positions, kept


def test_pyramid_drop_equals_a_manual_loop_with_pyramid_drop_hook(tokenizer):
    vlm = _vlm(tokenizer, "model.lm.pyramid_drop=[0.5,0.5,0.5]")
    assert vlm.pyramid_drop.layers == (1, 2, 3)
    ids, mask = _ids(vlm, ["What colour is the circle?", "Count?"])  # different lengths: right padding
    with torch.no_grad():
        ref, original, kept = _reference_logits(vlm, ids, mask, 0.5)
        got = vlm(ids, mask, _pixels(2))
    n = 16  # image tokens per sample
    assert [k.tolist() for k in kept] == [[n * 0.5**s] * 2 for s in (1, 2, 3)]  # floor(N * lambda^s)
    for b in range(2):
        rows = original[b] >= 0
        torch.testing.assert_close(got[b, original[b, rows]], ref[b, rows], atol=1e-5, rtol=1e-4)
        dropped = torch.ones(ids.shape[1], dtype=torch.bool)
        dropped[original[b, rows]] = False
        dropped &= mask[b].bool()
        assert int(dropped.sum()) == n - n // 8 and (ids[b, dropped] == vlm.image_pad_id).all()
        assert (got[b, dropped] == 0).all()  # dropped image positions carry no logits


def test_pyramid_drop_keeps_the_seed_rates_and_rate_zero_is_the_plain_lm(tokenizer):
    vlm = _vlm(tokenizer, "model.lm.pyramid_drop=[0.5,0.3,0.1]")
    n = torch.tensor([16, 7])
    assert [vlm.pyramid_drop.keep_counts(n, s).tolist() for s in (1, 2, 3)] == [[8, 3], [5, 2], [5, 2]]
    ids, mask = _ids(vlm, ["What colour?"])
    with torch.no_grad():
        _, original, _ = vlm.pyramid_drop.run(
            vlm.lm,
            vlm.embed(ids, _pixels(1)),
            mask,
            ids == vlm.image_pad_id,
            vlm.instruction_index(ids, mask),
            torch.arange(ids.shape[1]).expand_as(ids),
        )
    image_left = (ids[0, original[0][original[0] >= 0]] == vlm.image_pad_id).sum()
    assert int(image_left) == 5  # floor(16 * 0.5 * 0.7 * 0.9)
    assert int((original[0] >= 0).sum()) == ids.shape[1] - 11  # text is never dropped

    plain = _vlm(tokenizer, "model.lm.pyramid_drop=[0.0,0.0]")
    ids, mask = _ids(plain, ["What colour is the circle?", "Count?"])
    with torch.no_grad():
        got = plain(ids, mask, _pixels(2))
        want = plain.lm(inputs_embeds=plain.embed(ids, _pixels(2)), attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-4)


def test_pyramid_drop_same_under_eager_attention(tokenizer):
    vlm = _vlm(tokenizer, "model.lm.pyramid_drop=[0.5,0.3,0.1]")
    ids, mask = _ids(vlm, ["What colour is the circle?", "Count?"])
    with torch.no_grad():
        sdpa = vlm(ids, mask, _pixels(2))
        vlm.lm.set_attn_implementation("eager")
        eager = vlm(ids, mask, _pixels(2))
    assert vlm.lm.config._attn_implementation == "eager"
    real = mask.bool()
    torch.testing.assert_close(eager[real], sdpa[real], atol=1e-5, rtol=1e-4)


def test_instruction_index_is_the_token_before_the_first_answer(tokenizer):
    from tbi_train.data import Collator
    from tbi_train.data.sample import Sample

    vlm = _vlm(tokenizer)
    collator = Collator(vlm.tokenizer, vlm.image_transform, vlm.tokens_per_image)
    conv = [{"from": "human", "value": "<image>\n무슨 색?"}, {"from": "gpt", "value": "빨간색"}]
    long = [{"from": "human", "value": "<image>\nWhat colour is the big shape on the left?"},
            {"from": "gpt", "value": "red"}]  # fmt: skip
    image = Image.new("RGB", (32, 32), "red")
    batch = collator([Sample("a", [image], conv, "ko", "color", ["빨간색"]),
                      Sample("b", [image], long, "en", "color", ["red"])])  # fmt: skip
    index = vlm.instruction_index(batch["input_ids"], batch["attention_mask"], batch["image_token_mask"])
    first_answer = (batch["labels"] != -100).long().argmax(dim=1)
    assert torch.equal(index + 1, first_answer)


def test_pyramid_drop_generation_matches_forward_and_padding(tokenizer):
    vlm = _vlm(tokenizer, "model.lm.pyramid_drop=[0.5,0.3,0.1]", seed=3)
    questions = ["What colour is the circle?", "Count?"]
    ids, mask = _ids(vlm, questions, answer=None, left_pad=True)
    options = dict(max_new_tokens=4, do_sample=False, num_beams=1, eos_token_id=-1, pad_token_id=0)
    out = vlm.generate(ids, mask, _pixels(2), **options)  # [B, 4]
    assert out.shape == (2, 4)
    for b, q in enumerate(questions):  # each prompt alone, unpadded, decoded by repeated full forwards
        one, one_mask = _ids(vlm, [q], answer=None)
        pixels = _pixels(2)[b : b + 1]
        for t in range(4):
            with torch.no_grad():
                logits = vlm(one, one_mask, pixels)
            assert int(logits[0, -1].argmax()) == int(out[b, t])
            one = torch.cat([one, out[b : b + 1, t : t + 1]], dim=1)
            one_mask = torch.ones_like(one)


# ---- foveated query from the LM --------------------------------------------------------------------------


def test_query_from_lm_makes_image_tokens_depend_on_the_prompt(tokenizer):
    vlm = _vlm(tokenizer, *FOVEATED)
    assert vlm.tokens_per_image == 1
    ids, mask = _ids(vlm, ["What colour is the circle?", "How many squares are there?"])
    pixels = _pixels(1).expand(2, -1, -1, -1)  # the same image for both prompts
    image = ids == vlm.image_pad_id
    with torch.no_grad():
        fine = vlm.embed(ids, pixels, attention_mask=mask)[image]  # [2, D]
    assert not torch.allclose(fine[0], fine[1], atol=1e-4)

    coarse_only = _vlm(tokenizer, *FOVEATED[:-1])  # seed 003 A6: no fine pass
    with torch.no_grad():
        coarse = coarse_only.embed(ids, pixels, attention_mask=mask)[image]
    torch.testing.assert_close(coarse[0], coarse[1], rtol=0, atol=0)

    # The query is the LM's final hidden state at the last instruction token over the coarse sequence.
    queries = []
    vlm.projector.register_forward_hook(
        lambda m, args, kwargs, out: queries.append(kwargs.get("query")), with_kwargs=True
    )
    with torch.no_grad():
        vlm.embed(ids, pixels, attention_mask=mask)
    assert queries[0] is None and queries[1].shape == (2, vlm.lm.config.hidden_size)  # coarse, then fine
    with torch.no_grad():
        tokens = vlm.projector(vlm.vision(pixels), grid=vlm.vision.grid).tokens
        coarse_embeds = vlm.lm.get_input_embeddings()(ids).masked_scatter(
            image.unsqueeze(-1), tokens.reshape(-1, tokens.shape[-1])
        )
        hidden = vlm.lm(
            inputs_embeds=coarse_embeds, attention_mask=mask, output_hidden_states=True
        ).hidden_states
    index = vlm.instruction_index(ids, mask, image)
    torch.testing.assert_close(queries[1], hidden[-1][torch.arange(2), index], atol=1e-5, rtol=1e-4)


def test_query_from_lm_needs_a_projector_that_takes_a_query(tokenizer):
    with pytest.raises(TrainError, match=r"query_from_lm=true.*mlp2x_gelu"):
        _vlm(tokenizer, "model.projector.query_from_lm=true")


@pytest.mark.parametrize("key", ["model.vision.rope_2d=true", "model.lm.pyramid_drop=[0.5]"])
def test_features_are_refused_on_a_split_pretrained_checkpoint(tokenizer, tmp_path, key):
    with pytest.raises(TrainError, match=key.split("=")[0].replace(".", r"\.") + " with model.pretrained"):
        _vlm(tokenizer, f"model.pretrained={tmp_path}", key)


# ---- frame replication -----------------------------------------------------------------------------------


def test_replicate_image_frames_gives_n_frames_per_image(tmp_path):
    from tbi_train.data import Collator
    from tbi_train.train.run import _datasets

    Image.new("RGB", (32, 32), "blue").save(tmp_path / "a.png")
    record = {"id": "a", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "blue"}]}  # fmt: skip
    (tmp_path / "train.json").write_text(json.dumps([record]))
    cfg = apply_overrides(
        get_preset("tiny"),
        [f"data.train={tmp_path / 'train.json'}", f"data.val={tmp_path / 'train.json'}",
         "data.replicate_image_frames=3"],
    )  # fmt: skip
    data = _datasets(cfg, tmp_path / "run")
    sample = data.train[0]
    assert len(sample.images) == 3 and sample.meta["media_frames"] == [3]
    tok = build_tokenizer(cfg.model.tokenizer, None, tmp_path / "tok", CORPUS)
    from tbi_train.model import ImageTransform

    batch = Collator(tok, ImageTransform(64, (0.5,) * 3, (0.5,) * 3), 1)([sample])
    assert batch["pixel_values"].shape[0] == 3 and int(batch["image_token_mask"].sum()) == 3


# ---- training steps and save/load ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [ALL_VISION, [*FOVEATED, "model.vision.rope_2d=true"]],
    ids=["rope-window-taps-pyramid-c-drop", "foveated-query"],
)
def test_training_step_and_save_load_round_trip(tokenizer, tmp_path, overrides):
    vlm = _vlm(tokenizer, *overrides).train()
    ids, mask = _ids(vlm, ["What colour is the circle?", "Count?"])
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, : int(vlm.instruction_index(ids, mask).max()) + 1] = -100
    params = [p for p in vlm.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    loss = token_loss_sum(vlm(ids, mask, _pixels(2)), labels) / (labels[:, 1:] != -100).sum()
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n: p.grad for n, p in vlm.named_parameters() if p.requires_grad}
    for part in ("vision.", "projector.", "lm."):
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(part)), part
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, params))
    vlm.eval()
    save_vlm(vlm, tmp_path / "model")
    again = load_vlm(tmp_path / "model")
    with torch.no_grad():
        torch.testing.assert_close(again(ids, mask, _pixels(2)), vlm(ids, mask, _pixels(2)), rtol=0, atol=0)
