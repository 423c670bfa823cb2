"""Script-based per-token language id, on plain text, byte-level BPE and byte-fallback tokens, and router supervision."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tbi_mole import (
    MoLEConfig,
    MoLEError,
    MoLELayer,
    anneal_language_loss,
    classify_text,
    classify_token,
    language_labels,
    set_language_loss_weight,
    token_language_table,
)
from tbi_mole.language import _BYTE_OF_CHAR

KO, EN, OTHER = 0, 1, 2
CHAR_OF_BYTE = {b: ch for ch, b in _BYTE_OF_CHAR.items()}


def _byte_level(text: str) -> str:
    return "".join(CHAR_OF_BYTE[b] for b in text.encode("utf-8"))


@pytest.mark.parametrize(
    "text,label",
    [
        ("안녕", KO),
        ("hello", EN),
        ("Ünïcödé", EN),
        ("123 ,.!", OTHER),
        ("", OTHER),
        ("漢字", OTHER),
        ("ㅋㅋ", KO),
        ("a한글", KO),
        ("ab한", EN),
        ("▁한국어", KO),
        ("▁the", EN),
    ],
)
def test_classify_text(text, label):
    assert classify_text(text) == label


def test_byte_level_tokens_including_partial_syllables():
    assert classify_token(_byte_level(" 한국어"), byte_level=True) == KO
    assert classify_token(_byte_level(" world"), byte_level=True) == EN
    raw = "한".encode()  # ED 95 9C
    assert classify_token(CHAR_OF_BYTE[raw[0]], byte_level=True) == KO  # lead byte only
    assert classify_token(CHAR_OF_BYTE[raw[0]] + CHAR_OF_BYTE[raw[1]], byte_level=True) == KO
    assert classify_token(CHAR_OF_BYTE[raw[2]], byte_level=True) == OTHER  # continuation byte: no script
    ga = "가".encode()  # EA B0 80: 0xEA needs the second byte to be sure
    assert classify_token(CHAR_OF_BYTE[ga[0]], byte_level=True) == OTHER
    assert classify_token(CHAR_OF_BYTE[ga[0]] + CHAR_OF_BYTE[ga[1]], byte_level=True) == KO
    assert classify_token(CHAR_OF_BYTE["ꀀ".encode()[0]] + CHAR_OF_BYTE[0x80], byte_level=True) == OTHER  # Yi
    # Without byte_level the same string is read as Latin-1 letters.
    assert classify_token(_byte_level("한"), byte_level=False) == EN


def test_sentencepiece_byte_fallback_tokens():
    assert classify_token("<0xEC>") == KO
    assert classify_token("<0x41>") == EN
    assert classify_token("<0x95>") == OTHER


@pytest.fixture(scope="module")
def tokenizer():
    texts = [
        "안녕하세요 반갑습니다",
        "hello world, how are you",
        "표와 차트를 읽어요 123",
        "tables and charts",
    ] * 20
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<pad>", "<|image_pad|>"],
    )
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", additional_special_tokens=["<|image_pad|>"]
    )


def test_token_language_table_on_a_byte_level_tokenizer(tokenizer):
    table = token_language_table(tokenizer)
    assert table.shape == (len(tokenizer),)
    ids = tokenizer("안녕하세요 hello 반갑습니다 world 123")["input_ids"]
    pieces = [tokenizer.decode([i]) for i in ids]
    for i, piece in zip(ids, pieces):
        assert int(table[i]) == classify_text(piece), piece
    labels = {piece.strip(): int(table[i]) for i, piece in zip(ids, pieces)}
    assert labels["안녕하세요"] == KO and labels["hello"] == EN and labels["123"] == OTHER
    assert int(table[tokenizer.convert_tokens_to_ids("<|image_pad|>")]) == OTHER
    assert int(table[tokenizer.pad_token_id]) == OTHER


def test_language_labels_mask_padding_and_check_range():
    table = torch.tensor([KO, EN, OTHER, EN])
    ids = torch.tensor([[0, 1, 2, 3], [3, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert language_labels(ids, table, mask).tolist() == [[KO, EN, OTHER, EN], [EN, KO, -100, -100]]
    with pytest.raises(MoLEError, match="outside the language table"):
        language_labels(torch.tensor([[4]]), table)


def _layer(weight, **overrides):
    torch.manual_seed(0)
    experts = {name: torch.nn.Linear(8, 8) for name in ("ko", "en", "shared")}
    return MoLELayer(
        experts, MoLEConfig(router_type="linear", top_k=1, language_loss_weight=weight, **overrides)
    )


def test_language_supervision_teaches_the_router_and_anneals():
    layer = _layer(1.0, load_balancing_loss_weight=0.0).train()
    gen = torch.Generator().manual_seed(1)
    centers = torch.randn(3, 8, generator=gen) * 2
    labels = torch.randint(0, 3, (64,), generator=gen)
    x = centers[labels] + 0.3 * torch.randn(64, 8, generator=gen)
    optimizer = torch.optim.Adam(layer.router.parameters(), lr=0.05)
    for _ in range(60):
        optimizer.zero_grad()
        layer(x, language_labels=labels)
        layer.aux_loss.backward()
        optimizer.step()
    assert layer.aux_losses["language"] < 0.1
    layer.reset_stats()
    layer(x, language_labels=labels)
    confusion = torch.tensor(layer.stats().language_confusion)
    assert confusion.sum() == 64
    assert confusion.diagonal().sum() >= 62  # tokens go to their language's expert

    assert anneal_language_loss(layer, step=30, total_steps=60) == pytest.approx(0.5)
    assert layer.language_loss_weight == pytest.approx(0.5)
    anneal_language_loss(layer, step=90, total_steps=60)
    layer(x, language_labels=labels)
    assert "language" not in layer.aux_losses
    set_language_loss_weight(layer, 0.2)
    layer(x, language_labels=labels)
    total = layer.config.load_balancing_loss_weight * layer.aux_losses["load_balancing"]
    total = total + 0.2 * layer.aux_losses["language"]
    torch.testing.assert_close(layer.aux_loss, total)


def test_unrouted_language_targets_are_ignored():
    torch.manual_seed(0)
    experts = {name: torch.nn.Linear(8, 8) for name in ("ko", "en")}
    layer = MoLELayer(experts, MoLEConfig(router_type="linear", top_k=1, language_loss_weight=1.0))
    x = torch.randn(6, 8)
    layer(x, language_labels=torch.full((6,), OTHER))  # "other" -> "shared", not a routed expert here
    assert float(layer.aux_losses["language"].detach()) == 0.0
    layer(x, language_labels=torch.tensor([KO, KO, EN, EN, OTHER, -100]))
    logits = layer.router(x)
    expected = torch.nn.functional.cross_entropy(logits[:4], torch.tensor([0, 0, 1, 1]))
    torch.testing.assert_close(layer.aux_losses["language"], expected)
