"""Per-token language id by script: Hangul -> "ko", Latin -> "en", anything else -> "other".

Works on the token strings of a tokenizer's vocabulary, including the two encodings that hide the characters:
byte-level BPE (GPT-2, Qwen, LLaMA-3: each byte shown as one printable stand-in character) and sentencepiece byte
fallback tokens ("<0xEC>"). A token holding only the first byte(s) of a Hangul syllable still counts as Korean:
UTF-8 lead bytes 0xEB, 0xEC and 0xED (with a second byte below 0xA0) start code points inside U+B000..U+D7FF, which
are all Hangul, and 0xEA with a second byte of 0xB0 or more starts U+AC00..U+AFFF. Continuation bytes alone carry no
script and are ignored. A token with both scripts goes to the one with more letters (ties: Korean).

Labels are ints: 0 = "ko", 1 = "en", 2 = "other" (the order of `tbi_mole.LANGUAGES`); −100 marks padding.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any

import torch

from tbi_mole.errors import MoLEError

KO, EN, OTHER = 0, 1, 2
IGNORE = -100

_HANGUL_RANGES = ((0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xAC00, 0xD7AF), (0xD7B0, 0xD7FF))
_LATIN_RANGES = (
    (0x41, 0x5A),
    (0x61, 0x7A),
    (0xC0, 0xD6),
    (0xD8, 0xF6),
    (0xF8, 0x24F),
    (0x1E00, 0x1EFF),
    (0xFF21, 0xFF3A),
    (0xFF41, 0xFF5A),
)
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _in(code: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(lo <= code <= hi for lo, hi in ranges)


def _count_scripts(text: str) -> tuple[int, int]:
    hangul = latin = 0
    for ch in text:
        code = ord(ch)
        if _in(code, _HANGUL_RANGES):
            hangul += 1
        elif _in(code, _LATIN_RANGES):
            latin += 1
    return hangul, latin


def _decide(hangul: int, latin: int) -> int:
    if hangul == 0 and latin == 0:
        return OTHER
    return KO if hangul >= latin else EN


def classify_text(text: str) -> int:
    """Language label (0 ko, 1 en, 2 other) of a piece of decoded text by its letters' scripts."""
    return _decide(*_count_scripts(text))


def _byte_level_alphabet() -> dict[str, int]:
    """Inverse of the byte-level BPE byte -> printable character map (GPT-2 convention).

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are shifted, in byte order, to U+0100 onwards.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    char_of = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in char_of:
            char_of[b] = chr(256 + shift)
            shift += 1
    return {ch: b for b, ch in char_of.items()}


_BYTE_OF_CHAR = _byte_level_alphabet()


def _is_hangul_prefix(pending: bytes) -> bool:
    """True if an incomplete UTF-8 sequence can only continue to a Hangul code point."""
    if not pending:
        return False
    lead = pending[0]
    second = pending[1] if len(pending) > 1 else None
    if lead in (0xEB, 0xEC):
        return True
    if lead == 0xED:
        return second is None or second < 0xA0
    if lead == 0xEA:
        return second is not None and second >= 0xB0
    if lead == 0xE1:  # U+1100..U+11FF Hangul Jamo
        return second is not None and 0x84 <= second <= 0x87
    return False


def _classify_bytes(data: bytes) -> int:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
    text = decoder.decode(data, final=False)
    pending = decoder.getstate()[0]
    hangul, latin = _count_scripts(text)
    if _is_hangul_prefix(pending):
        hangul += 1
    return _decide(hangul, latin)


def classify_token(token: str, byte_level: bool = False) -> int:
    """Language label of one vocabulary token string (as `tokenizer.convert_ids_to_tokens` returns it).

    Args:
        token: the token string.
        byte_level: the tokenizer is byte-level BPE, so each character of `token` stands for one byte.
    """
    fallback = _BYTE_FALLBACK.match(token)
    if fallback:
        return _classify_bytes(bytes([int(fallback.group(1), 16)]))
    if byte_level and all(ch in _BYTE_OF_CHAR for ch in token):
        return _classify_bytes(bytes(_BYTE_OF_CHAR[ch] for ch in token))
    return classify_text(token)


def _detect_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return hasattr(tokenizer, "byte_encoder")
    spec = json.loads(backend.to_str())
    return "ByteLevel" in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])


def token_language_table(tokenizer: Any, byte_level: bool | None = None) -> torch.Tensor:
    """Language label of every token id of a Hugging Face tokenizer -> LongTensor [len(tokenizer)].

    Special tokens (`tokenizer.all_special_ids`, e.g. "<|image_pad|>") are "other" whatever their spelling.

    Args:
        tokenizer: a transformers tokenizer (anything with `convert_ids_to_tokens`, `__len__`, `all_special_ids`).
        byte_level: whether token strings are byte-level BPE; None detects it from the tokenizer's pre-tokenizer
            or decoder.
    """
    if byte_level is None:
        byte_level = _detect_byte_level(tokenizer)
    size = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
    labels = [OTHER if tok is None else classify_token(tok, byte_level) for tok in tokens]
    for special in getattr(tokenizer, "all_special_ids", []):
        if 0 <= special < size:
            labels[special] = OTHER
    return torch.tensor(labels, dtype=torch.long)


def language_labels(
    input_ids: torch.Tensor, table: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-token labels table[input_ids], −100 where attention_mask is 0. input_ids [B, L] -> [B, L] long."""
    if input_ids.numel() and int(input_ids.max()) >= table.numel():
        raise MoLEError(
            f"token id {int(input_ids.max())} is outside the language table of {table.numel()} tokens; "
            "build the table with token_language_table(tokenizer) from the tokenizer that made these input_ids."
        )
    labels = table.to(input_ids.device)[input_ids]  # [B, L]
    if attention_mask is not None:
        labels = labels.masked_fill(attention_mask.to(labels.device) == 0, IGNORE)
    return labels
