"""ANLS (DocVQA / InfoVQA), as the official RRC evaluation script computes it.

For a prediction o and gold answers a_1..a_m:

    NL(a, o)  = lev(norm(a), norm(o)) / max(|a|, |o|)        norm(s) = " ".join(s.strip().lower().split())
    ANLS(o)   = 1 - min_j NL(a_j, o)   if that is >= 0.5, else 0

| compat | denominator | note |
|---|---|---|
| official (RRC DocVQA/InfoVQA ``evaluate``), lmms (lmms-eval ``anls``) | raw lengths: ``max(len(a.upper()), len(o.upper()))`` of the *unnormalised* strings | the distance uses normalised strings, the length does not; ``str.upper`` can lengthen text (``"ß"`` -> ``"SS"``) |
| vlmeval (VLMEvalKit ``anls_compute``) | normalised lengths ``max(len(norm(a)), len(norm(o)))`` | |

A similarity of exactly 0.5 is kept in every mode (``< 0.5`` is zeroed). Two empty strings score 1.
"""

from __future__ import annotations

from collections.abc import Sequence

from rapidfuzz.distance import Levenshtein

from tbi_evalbench._errors import EvalbenchError
from tbi_evalbench.result import ScoreResult, check_compat, check_lengths, default_ids, mean

ANLS_THRESHOLD = 0.5


def _norm(text: str) -> str:
    return " ".join(text.strip().lower().split())


def anls_score(
    prediction: str, answers: Sequence[str], compat: str = "official", threshold: float = ANLS_THRESHOLD
) -> float:
    """ANLS of one prediction against its gold answers (see the module docstring)."""
    if not answers:
        raise EvalbenchError("ANLS needs at least one gold answer per question; got an empty list")
    pred = _norm(prediction)
    pred_raw_len = len(prediction.upper())
    values = []
    for answer in answers:
        gold = _norm(answer)
        dist = Levenshtein.distance(gold, pred)
        if compat == "vlmeval":
            length = max(len(gold), len(pred))
        else:
            length = max(len(answer.upper()), pred_raw_len)
        value = 0.0 if length == 0 else float(dist) / float(length)
        values.append(value)
    result = 1 - min(values)
    return 0.0 if result < threshold else result


def anls(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    compat: str = "official",
    ids: Sequence[str] | None = None,
    threshold: float = ANLS_THRESHOLD,
) -> ScoreResult:
    """ANLS over a set: per-question scores and their mean (DocVQA/InfoVQA leaderboards report this x 100)."""
    check_compat(compat)
    check_lengths(predictions, references)
    scores = [anls_score(p, a, compat, threshold) for p, a in zip(predictions, references)]
    scorer = "VLMEvalKit anls_compute" if compat == "vlmeval" else "RRC DocVQA/InfoVQA official ANLS"
    return ScoreResult("anls", scorer, compat, mean(scores), scores, default_ids(len(scores), ids))
