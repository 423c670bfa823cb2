"""Scoring generated answers against gold answers with tbi-evalbench's scorers."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["VAL_METRICS", "score_predictions"]

VAL_METRICS = ("exact_match", "token_f1")
"""Metrics of the validation split during training: tbi-evalbench exact match and SQuAD token F1."""


def score_predictions(
    predictions: Sequence[str], answers: Sequence[Sequence[str]], ids: Sequence[str] | None = None
) -> dict[str, float]:
    """{metric: corpus score in [0, 1]} over the samples, for each of VAL_METRICS (official compat mode)."""
    from tbi_evalbench import exact_match, token_f1

    answers = [list(a) for a in answers]
    ids = list(ids) if ids is not None else None
    return {
        "exact_match": exact_match(list(predictions), answers, compat="official", ids=ids).score,
        "token_f1": token_f1(list(predictions), answers, compat="official", ids=ids).score,
    }
