"""Shared input handling of the captioning metrics: one hypothesis and >= 1 references per image, tokenised."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from tbi_evalbench._errors import EvalbenchError
from tbi_evalbench.result import check_lengths
from tbi_evalbench.text import Tokenizer


def tokenised_pairs(
    predictions: Sequence[str], references: Sequence[Sequence[str]], tokenize: str | Tokenizer, ids: list[str]
) -> tuple[list[str], list[list[str]]]:
    """Hypotheses and references as whitespace-joined token strings, tokenised by one rule."""
    check_lengths(predictions, references)
    for i, refs in zip(ids, references):
        if isinstance(refs, str) or len(refs) == 0:
            raise EvalbenchError(f"image {i}: captioning needs a non-empty list of reference captions")
    tok = tokenize if isinstance(tokenize, Tokenizer) else Tokenizer(tokenize)
    flat = [r for refs in references for r in refs]
    done = tok.batch(list(predictions) + flat)
    hyps, rest = done[: len(predictions)], done[len(predictions) :]
    refs_out, k = [], 0
    for refs in references:
        refs_out.append(rest[k : k + len(refs)])
        k += len(refs)
    return hyps, refs_out


def reports_char_variant(fn):
    """With ``tokenize="ko-morph"`` also score with ``"char"`` tokens: ``extra["char_variant"]`` (the Korean rule)."""

    @functools.wraps(fn)
    def wrapper(predictions, references, **kwargs):
        result = fn(predictions, references, **kwargs)
        if result.extra.get("tokenize") == "ko-morph":
            result.extra["char_variant"] = fn(predictions, references, **{**kwargs, "tokenize": "char"}).score
        return result

    return wrapper
