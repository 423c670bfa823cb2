"""Relaxed accuracy (ChartQA), as the official evaluation computes it (pix2struct ``relaxed_correctness``).

    to_float(s) = float(s[:-k]) / 100   if s ends with k >= 1 "%" signs
                  float(s)              otherwise (Python float syntax; None when it does not parse)
    correct(o, t) = |to_float(o) - to_float(t)| / |to_float(t)| <= 0.05   if to_float(o) is a number and
                                                                          to_float(t) is a non-zero number
                    o.lower() == t.lower()                                 otherwise
    score(o) = max_t correct(o, t)  over the gold answers

Consequences pinned by the tests: ``"45%"`` equals ``0.45`` (and not ``45``); a thousands separator makes a
string non-numeric (``float("1,000")`` fails), so ``"1,000"`` only matches ``"1,000"`` exactly (case-insensitive);
a gold ``0`` is compared as a string (``"0.0"`` is wrong); units (``"45 kg"``) make the answer a string.

| compat | prediction |
|---|---|
| official, lmms | used as given (a trailing space stops ``"45% "`` from being read as a percent) |
| vlmeval | stripped first (VLMEvalKit ``process_line(..., "relaxed_accuracy")``) |
"""

from __future__ import annotations

from collections.abc import Sequence

from tbi_evalbench._errors import EvalbenchError
from tbi_evalbench.result import ScoreResult, check_compat, check_lengths, default_ids, mean

MAX_RELATIVE_CHANGE = 0.05


def _to_float(text: str) -> float | None:
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correctness(
    prediction: str, target: str, max_relative_change: float = MAX_RELATIVE_CHANGE
) -> bool:
    """Whether one prediction is correct for one gold answer (see the module docstring)."""
    prediction_float = _to_float(prediction)
    target_float = _to_float(target)
    if prediction_float is not None and target_float:
        return abs(prediction_float - target_float) / abs(target_float) <= max_relative_change
    return prediction.lower() == target.lower()


def relaxed_score(prediction: str, answers: Sequence[str], compat: str = "official") -> float:
    """1.0 if the prediction is relaxed-correct for any gold answer, else 0.0."""
    if not answers:
        raise EvalbenchError(
            "relaxed accuracy needs at least one gold answer per question; got an empty list"
        )
    if compat == "vlmeval":
        prediction = prediction.strip()
    return 1.0 if any(relaxed_correctness(prediction, str(t)) for t in answers) else 0.0


def relaxed_accuracy(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    compat: str = "official",
    ids: Sequence[str] | None = None,
) -> ScoreResult:
    """ChartQA relaxed accuracy over a set: per-question 0/1 and their mean."""
    check_compat(compat)
    check_lengths(predictions, references)
    scores = [relaxed_score(p, a, compat) for p, a in zip(predictions, references)]
    scorer = (
        "VLMEvalKit relaxed_correctness"
        if compat == "vlmeval"
        else "ChartQA official (pix2struct relaxed_correctness)"
    )
    return ScoreResult(
        "relaxed_accuracy", scorer, compat, mean(scores), scores, default_ids(len(scores), ids)
    )
