"""OCRBench scoring, as the benchmark's own evaluation (MultimodalOCR ``eval``) does it.

A prediction is right (1) if any gold answer is *contained* in it:

| category | rule |
|---|---|
| every category but handwritten math | ``gold.lower().strip()`` in ``prediction.lower().strip()`` (newlines as spaces) |
| Handwritten Mathematical Expression Recognition (``dataset_name == "HME100k"``) | all spaces removed from both, **case-sensitive** containment |

| compat | difference |
|---|---|
| official, vlmeval | as above |
| lmms | lmms-eval lower-cases the prediction first, also for HME100k, so a gold with capitals never matches there |

An empty gold answer is contained in every prediction (as in the reference). The OCRBench score is the number
right out of 1000; this returns the fraction.
"""

from __future__ import annotations

from collections.abc import Sequence

from tbi_evalbench._errors import EvalbenchError
from tbi_evalbench.result import ScoreResult, check_compat, check_lengths, default_ids, mean

HME_DATASET = "HME100k"
HME_CATEGORY = "Handwritten Mathematical Expression Recognition"


def is_hme(category: str | None) -> bool:
    return category in (HME_DATASET, HME_CATEGORY)


def ocrbench_score(
    prediction: str, answers: Sequence[str], category: str | None = None, compat: str = "official"
) -> float:
    """1.0 if any gold answer is contained in the prediction under the category's rule."""
    if not answers:
        raise EvalbenchError("OCRBench needs at least one gold answer per question; got an empty list")
    if compat == "lmms":
        prediction = prediction.lower().strip()
    if is_hme(category):
        pred = prediction.strip().replace("\n", " ").replace(" ", "")
        return 1.0 if any(a.strip().replace("\n", " ").replace(" ", "") in pred for a in answers) else 0.0
    pred = prediction.lower().strip().replace("\n", " ")
    return 1.0 if any(a.lower().strip().replace("\n", " ") in pred for a in answers) else 0.0


def ocrbench(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    categories: Sequence[str | None] | None = None,
    compat: str = "official",
    ids: Sequence[str] | None = None,
) -> ScoreResult:
    """OCRBench over a set. ``categories`` gives each question's ``dataset_name`` or category (HME100k matters)."""
    check_compat(compat)
    check_lengths(predictions, references)
    cats = list(categories) if categories is not None else [None] * len(predictions)
    check_lengths(predictions, cats)
    scores = [ocrbench_score(p, a, c, compat) for p, a, c in zip(predictions, references, cats)]
    scorer = "lmms-eval ocrbench" if compat == "lmms" else "OCRBench official (MultimodalOCR)"
    return ScoreResult("ocrbench", scorer, compat, mean(scores), scores, default_ids(len(scores), ids))
