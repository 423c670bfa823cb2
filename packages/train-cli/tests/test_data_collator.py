"""Collator: chat-template and plain tokenisation, label masks, image-token expansion, pre-flight check."""

import json

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tbi_train.data import (
    IGNORE_INDEX,
    Collator,
    DataError,
    Sample,
    check_dataset,
    load_conversations,
    preflight_check,
)

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image_pad|>"]


def _tokenizer(chat_template=CHATML, with_image_token=True):
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    special = SPECIAL if with_image_token else SPECIAL[:-1]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(
        ["What color is the circle? red 빨간색 원은 무슨 색인가요?", "How many? 3 개"] * 20, trainer
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=special[2:],
    )
    tok.chat_template = chat_template
    return tok


@pytest.fixture(scope="module")
def tok():
    return _tokenizer()


def _transform(img):
    return (
        torch.from_numpy(__import__("numpy").asarray(img.resize((4, 4)), dtype="float32")).permute(2, 0, 1)
        / 255
    )


_transform.size = 4


def _sample(sid, q, a, n_images=1, frames=None, extra_turns=()):
    images = [Image.new("RGB", (8, 8), (10 * k, 0, 0)) for k in range(n_images)]
    frames = frames or [1] * n_images
    convs = [{"from": "human", "value": q}, {"from": "gpt", "value": a}, *extra_turns]
    return Sample(sid, images, convs, "en", "color", [a], {"media_frames": frames})


def _supervised_text(tok, ids, labels):
    return tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX])


def test_answer_only_labels_cover_exactly_the_replies(tok):
    col = Collator(tok, _transform, tokens_per_image=5)
    extra = ({"from": "human", "value": "And in Korean?"}, {"from": "gpt", "value": "빨간색"})
    batch = col([_sample("s", "<image>\nWhat color is the circle?", "red", extra_turns=extra)])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    assert _supervised_text(tok, ids, labels) == "red<|im_end|>\n빨간색<|im_end|>\n"
    rendered = tok.apply_chat_template(
        [
            {"role": "user", "content": "<image>\nWhat color is the circle?"},
            {"role": "assistant", "content": "red"},
            {"role": "user", "content": "And in Korean?"},
            {"role": "assistant", "content": "빨간색"},
        ],
        tokenize=False,
    )
    assert tok.decode(ids).replace("<|image_pad|>" * 5, "<image>") == rendered
    pad_id = tok.convert_tokens_to_ids("<|image_pad|>")
    assert batch["image_token_mask"][0].tolist() == [i == pad_id for i in ids]
    assert sum(batch["image_token_mask"][0].tolist()) == 5
    assert all(lab == IGNORE_INDEX for lab, m in zip(labels, batch["image_token_mask"][0].tolist()) if m)


def test_all_text_loss_masks_only_image_tokens(tok):
    col = Collator(tok, _transform, tokens_per_image=3, loss_on="all_text")
    batch = col([_sample("s", "<image>\nWhat color?", "red")])
    labels, mask = batch["labels"][0], batch["image_token_mask"][0]
    assert torch.equal(labels == IGNORE_INDEX, mask)
    assert torch.equal(labels[~mask], batch["input_ids"][0][~mask])


def test_padding_pixels_and_media_bookkeeping(tok):
    col = Collator(tok, _transform, tokens_per_image=2)
    video = _sample("v", "<image>\nWhat happens?", "A red circle moves.", n_images=4, frames=[4])
    video.images = [video.images[0]] * 2 + video.images[2:]  # replicated frames share one PIL object
    two = _sample("two", "<image> vs <image>: same?", "no", n_images=2)
    text = _sample("t", "Say hi", "hi", n_images=0)
    batch = col([video, two, text])
    assert batch["sample_ids"] == ["v", "two", "t"]
    assert batch["pixel_values"].shape == (6, 3, 4, 4)
    assert batch["media_frames"].tolist() == [4, 1, 1] and batch["media_sample"].tolist() == [0, 1, 1]
    assert batch["image_token_mask"].sum(1).tolist() == [8, 4, 0]
    lengths = batch["attention_mask"].sum(1)
    for b in range(3):
        n = int(lengths[b])
        assert batch["attention_mask"][b, :n].all() and not batch["attention_mask"][b, n:].any()
        assert (batch["labels"][b, n:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][b, n:] == tok.pad_token_id).all()
    assert torch.allclose(batch["pixel_values"][1], _transform(video.images[1]))
    empty = col([text])["pixel_values"]
    assert empty.shape == (0, 3, 4, 4)


def test_callable_tokens_per_image_for_temporal_pooling(tok):
    col = Collator(tok, _transform, tokens_per_image=lambda frames: 3 + frames)
    batch = col([_sample("v", "<image>\nQ", "A", n_images=8, frames=[8])])
    assert int(batch["image_token_mask"].sum()) == 11


def test_plain_template_when_the_tokenizer_has_none():
    tok = _tokenizer(chat_template=None)
    col = Collator(tok, _transform, tokens_per_image=2)
    assert not col.use_chat_template
    batch = col([_sample("s", "<image>\nWhat color?", "red")])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    assert _supervised_text(tok, ids, labels) == "red<|im_end|>\n"
    assert tok.decode(ids).startswith("### User:\n<|image_pad|><|image_pad|>\nWhat color?\n### Assistant:\n")
    prompt = col.encode_prompt(_sample("s", "<image>\nWhat color?", "red").conversations, [1])
    assert tok.decode(prompt.input_ids).endswith("### Assistant:\n") and prompt.supervised == 0


def test_encode_prompt_ends_with_the_generation_prompt(tok):
    col = Collator(tok, _transform, tokens_per_image=2)
    enc = col.encode_prompt([{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}], [1])
    assert tok.decode(enc.input_ids).endswith("<|im_start|>assistant\n")
    assert sum(enc.image_mask) == 2


def test_tokenizer_without_image_token_is_refused():
    with pytest.raises(DataError, match="add_special_tokens"):
        Collator(_tokenizer(with_image_token=False), _transform, tokens_per_image=2)
    with pytest.raises(DataError, match="loss_on"):
        Collator(_tokenizer(), _transform, tokens_per_image=2, loss_on="everything")


def test_unusable_samples_are_dropped_from_the_batch_and_counted(tok):
    col = Collator(tok, _transform, tokens_per_image=4, max_length=30)
    long = _sample("long", "Tell me a long story about the red circle " * 3 + "<image>", "ok")
    fine = _sample("fine", "<image>\nQ", "A")
    batch = col([long, fine])
    assert batch["sample_ids"] == ["fine"]
    assert col.bad_report.counts == {"collate": 1} and "long" in col.bad_report.examples["collate"][0]
    with pytest.raises(DataError, match="preflight"):
        col([long])


def _write(tmp_path, records):
    Image.new("RGB", (8, 8)).save(tmp_path / "i.png")
    (tmp_path / "d.json").write_text(json.dumps(records))
    return load_conversations(tmp_path / "d.json")


def test_preflight_passes_good_data_and_reports_lengths(tok, tmp_path):
    conv = [{"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "red"}]
    ds = _write(tmp_path, [{"id": f"s{i}", "image": "i.png", "conversations": conv} for i in range(6)])
    report = preflight_check(ds, Collator(tok, _transform, tokens_per_image=4), max_samples=3)
    assert report.ok and report.checked == 3 and report.mean_supervised > 0 and report.max_length > 4


def test_preflight_stops_on_zero_supervision_and_stray_image_tokens(tok, tmp_path):
    conv = [{"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "red"}]
    stray = [{"from": "human", "value": "<image>\nWhat is <|image_pad|>?"}, {"from": "gpt", "value": "red"}]
    long = [{"from": "human", "value": "<image>\n" + "What color? " * 4}, {"from": "gpt", "value": "red"}]
    ds = _write(
        tmp_path,
        [
            {"id": "good", "image": "i.png", "conversations": conv},
            {"id": "stray", "image": "i.png", "conversations": stray},
            {"id": "cut", "image": "i.png", "conversations": long},
        ],
    )
    fit = len(Collator(tok, _transform, tokens_per_image=4).encode(conv, [1]).input_ids)
    col = Collator(tok, _transform, tokens_per_image=4, max_length=fit)
    with pytest.raises(DataError, match="zero loss") as info:
        preflight_check(ds, col)
    message = str(info.value)
    assert "stray" in message and "cut" in message and "good" not in message.split("\n", 1)[1]
    report = preflight_check(ds, col, raise_on_problems=False)
    assert set(report.problems) == {"unusable", "no_supervised_tokens"}
    assert report.problems["no_supervised_tokens"] == ["cut"]


def test_check_dataset_with_tokenizer_runs_the_preflight(tok, tmp_path):
    conv = [{"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "red"}]
    _write(tmp_path, [{"id": "good", "image": "i.png", "conversations": conv}])
    report = check_dataset(tmp_path / "d.json", tokenizer=tok, tokens_per_image=4)
    assert report.ok and report.preflight["d.json"].checked == 1
    tight = check_dataset(tmp_path / "d.json", tokenizer=tok, tokens_per_image=4, max_length=6)
    assert not tight.ok and "max_length" in tight.summary()


def test_a_chat_template_that_refuses_a_conversation_is_a_counted_data_error():
    refusing = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}" + CHATML
    )
    col = Collator(_tokenizer(chat_template=refusing), _transform, tokens_per_image=2)
    system = _sample("sys", "<image>\nQ", "A")
    system.conversations.insert(0, {"from": "system", "value": "Be brief."})
    with pytest.raises(DataError, match="no system role"):
        col.encode(system.conversations, [1], "sys")
    batch = col([system, _sample("ok", "<image>\nQ", "A")])
    assert batch["sample_ids"] == ["ok"] and col.bad_report.counts == {"collate": 1}


def test_templates_that_rewrite_earlier_turns_fall_back_to_the_reply_text():
    # Like Qwen3: only the last assistant turn carries a reasoning block, so prefixes are not stable.
    rewriting = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' and loop.last %}<think></think>{% endif %}{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tok = _tokenizer(chat_template=rewriting)
    col = Collator(tok, _transform, tokens_per_image=2)
    extra = ({"from": "human", "value": "Again?"}, {"from": "gpt", "value": "blue"})
    batch = col([_sample("s", "<image>\nColor?", "red", extra_turns=extra)])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    assert _supervised_text(tok, ids, labels) == "red<|im_end|><think></think>blue<|im_end|>\n"
