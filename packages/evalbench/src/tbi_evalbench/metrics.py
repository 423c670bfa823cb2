"""The metric registry behind the CLI: metric name -> scorer over id-aligned predictions and reference records."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tbi_evalbench._errors import EvalbenchError
from tbi_evalbench.anls import anls
from tbi_evalbench.bleu import bleu
from tbi_evalbench.choice import circular_accuracy, mc_accuracy
from tbi_evalbench.cider import cider
from tbi_evalbench.exact import exact_match, token_f1
from tbi_evalbench.meteor import meteor
from tbi_evalbench.ocrbench import ocrbench
from tbi_evalbench.relaxed import relaxed_accuracy
from tbi_evalbench.result import ScoreResult
from tbi_evalbench.vqa import vqa_accuracy

METRIC_NAMES = (
    "vqa_accuracy", "anls", "relaxed_accuracy", "exact_match", "token_f1", "ocrbench", "mc_accuracy",
    "circular_accuracy", "cider", "bleu", "meteor", "bertscore",
)  # fmt: skip


def score_metric(
    metric: str,
    ids: Sequence[str],
    predictions: Sequence[str],
    references: Sequence[dict[str, Any]],
    *,
    compat: str = "official",
    tokenize: str = "none",
    meteor_variant: str = "nltk",
    model_path: str | Path | None = None,
) -> ScoreResult:
    """Score one metric; ``references`` are the reference records of the CLI format (see :mod:`tbi_evalbench.cli`)."""
    ids = list(ids)
    answers = [r.get("answers") for r in references]
    simple = {
        "vqa_accuracy": vqa_accuracy,
        "anls": anls,
        "relaxed_accuracy": relaxed_accuracy,
        "exact_match": exact_match,
    }
    if metric in simple:
        return simple[metric](predictions, answers, compat=compat, ids=ids)
    if metric == "token_f1":
        return token_f1(predictions, answers, compat=compat, ids=ids, tokenize=tokenize)
    if metric == "ocrbench":
        cats = [r.get("dataset_name") or r.get("category") for r in references]
        return ocrbench(predictions, answers, categories=cats, compat=compat, ids=ids)
    if metric == "mc_accuracy":
        return mc_accuracy(
            predictions,
            [r["answer"] for r in references],
            [r["choices"] for r in references],
            compat=compat,
            ids=ids,
        )
    if metric == "circular_accuracy":
        indices = [int(r.get("index", i)) for r, i in zip(references, ids)]
        return circular_accuracy(
            predictions,
            [r["answer"] for r in references],
            [r["choices"] for r in references],
            indices,
            compat=compat,
        )
    if metric == "cider":
        return cider(predictions, answers, compat=compat, ids=ids, tokenize=tokenize)
    if metric == "bleu":
        return bleu(predictions, answers, compat=compat, ids=ids, tokenize=tokenize)
    if metric == "meteor":
        return meteor(predictions, answers, compat=compat, ids=ids, tokenize=tokenize, variant=meteor_variant)
    if metric == "bertscore":
        if model_path is None:
            raise EvalbenchError("bertscore needs --model DIR, a local Hugging Face model directory")
        from tbi_evalbench.bertscore import bertscore

        return bertscore(predictions, answers, model_path=model_path, compat=compat, ids=ids)
    raise EvalbenchError(f"unknown metric {metric!r}; use one of {', '.join(METRIC_NAMES)}")
