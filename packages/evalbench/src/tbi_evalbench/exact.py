"""Exact match (WTQ, TabFact) and token-level F1 (SQuAD v1.1 official ``evaluate-v1.1.py``).

Exact match, best over the gold answers:

| compat | rule |
|---|---|
| official, lmms | NFC, strip, lower-case, collapse whitespace, then string equality; or numeric equality when both sides parse as numbers after removing thousands separators (WTQ's evaluator compares numbers by value: ``"2"`` == ``"2.0"``, ``"1,000"`` == ``"1000"``) |
| vlmeval | ``gold.strip().lower() == prediction.strip().lower()`` (VLMEvalKit ``process_line(..., "accuracy")``) |

Token F1 (SQuAD v1.1): normalise (lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse
whitespace), split into tokens, F1 of the token multisets, best over the gold answers. No common token gives 0,
so an empty prediction scores 0 (also against an empty gold, as in v1.1). With ``tokenize="ko-morph"`` or
``"char"`` the normalised text is tokenised by :class:`tbi_evalbench.text.Tokenizer` instead of split on spaces.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from tbi_evalbench._captions import reports_char_variant
from tbi_evalbench._errors import EvalbenchError
from tbi_evalbench.result import ScoreResult, check_compat, check_lengths, default_ids, mean
from tbi_evalbench.text import Tokenizer, nfc

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def _norm_em(text: str) -> str:
    return " ".join(nfc(text).strip().lower().split())


def _as_number(text: str) -> float | None:
    candidate = text.replace(",", "")
    return float(candidate) if _NUMBER.match(candidate) else None


def exact_score(prediction: str, answers: Sequence[str], compat: str = "official") -> float:
    """1.0 if the prediction equals any gold answer under the mode's normalisation, else 0.0."""
    if not answers:
        raise EvalbenchError("exact match needs at least one gold answer per question; got an empty list")
    if compat == "vlmeval":
        pred = prediction.strip().lower()
        return 1.0 if any(str(a).strip().lower() == pred for a in answers) else 0.0
    pred = _norm_em(prediction)
    pred_num = _as_number(pred)
    for answer in answers:
        gold = _norm_em(str(answer))
        if gold == pred:
            return 1.0
        if pred_num is not None and (gold_num := _as_number(gold)) is not None and gold_num == pred_num:
            return 1.0
    return 0.0


def squad_normalize(text: str) -> str:
    """SQuAD v1.1 ``normalize_answer``: lower, remove punctuation, remove articles, fix whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = 1.0 * num_same / len(pred_tokens)
    recall = 1.0 * num_same / len(gold_tokens)
    return (2 * precision * recall) / (precision + recall)


def token_f1_score(prediction: str, answers: Sequence[str], tokenizer: Tokenizer | None = None) -> float:
    """Best token F1 of one prediction over its gold answers."""
    if not answers:
        raise EvalbenchError("token F1 needs at least one gold answer per question; got an empty list")
    tok = tokenizer or Tokenizer("none")

    def tokens(text: str) -> list[str]:
        return tok.tokens(squad_normalize(nfc(text)))

    pred = tokens(prediction)
    return max(_f1(pred, tokens(str(a))) for a in answers)


def exact_match(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    compat: str = "official",
    ids: Sequence[str] | None = None,
) -> ScoreResult:
    """Exact match over a set (WTQ, TabFact): per-question 0/1 and their mean."""
    check_compat(compat)
    check_lengths(predictions, references)
    scores = [exact_score(p, a, compat) for p, a in zip(predictions, references)]
    scorer = (
        "VLMEvalKit accuracy (strip+lower)"
        if compat == "vlmeval"
        else "normalised exact match (WTQ number rule)"
    )
    return ScoreResult("exact_match", scorer, compat, mean(scores), scores, default_ids(len(scores), ids))


@reports_char_variant
def token_f1(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    compat: str = "official",
    ids: Sequence[str] | None = None,
    tokenize: str | Tokenizer = "none",
) -> ScoreResult:
    """SQuAD-style token F1 over a set: per-question best F1 and their mean (all compat modes agree)."""
    check_compat(compat)
    check_lengths(predictions, references)
    tokenizer = tokenize if isinstance(tokenize, Tokenizer) else Tokenizer(tokenize)
    scores = [token_f1_score(p, a, tokenizer) for p, a in zip(predictions, references)]
    return ScoreResult(
        "token_f1", "SQuAD v1.1 evaluate (token F1)", compat, mean(scores), scores,
        default_ids(len(scores), ids), extra={"tokenize": tokenizer.mode},
    )  # fmt: skip
