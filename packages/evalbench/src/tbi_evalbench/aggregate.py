"""Aggregate scores of seed 000 section 5.1: Korean, English, Structured-content and Overall averages.

| group | benchmarks (default table) |
|---|---|
| korean | K-DTCBench, MMBench-KO, KoMM-Bench |
| english | MMBench-EN, TextVQA, OCRBench, DocVQA, ChartQA, MathVista |
| structured | ChartQA, DocVQA, WTQ |
| overall | every benchmark given, equal weight (macro-average) |

All inputs are fractions in [0, 1] (OCRBench as right/1000). Pass ``groups`` to change the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tbi_evalbench._errors import EvalbenchError

DEFAULT_GROUPS: dict[str, tuple[str, ...]] = {
    "korean": ("K-DTCBench", "MMBench-KO", "KoMM-Bench"),
    "english": ("MMBench-EN", "TextVQA", "OCRBench", "DocVQA", "ChartQA", "MathVista"),
    "structured": ("ChartQA", "DocVQA", "WTQ"),
}


def aggregate_scores(
    scores: Mapping[str, float],
    groups: Mapping[str, Sequence[str]] | None = None,
    *,
    strict: bool = True,
) -> dict[str, float]:
    """Group averages and the overall macro-average of per-benchmark scores.

    Args:
        scores: benchmark name -> score.
        groups: group name -> member benchmarks (default :data:`DEFAULT_GROUPS`).
        strict: raise when a group member is missing; with ``False`` a group averages the members present and a
            group with none present is left out.

    Returns:
        ``{group: mean of its members, ..., "overall": mean of all scores}``.
    """
    groups = DEFAULT_GROUPS if groups is None else groups
    if not scores:
        raise EvalbenchError("no benchmark scores to aggregate")
    out: dict[str, float] = {}
    for name, members in groups.items():
        present = [m for m in members if m in scores]
        missing = [m for m in members if m not in scores]
        if missing and strict:
            raise EvalbenchError(
                f"group {name!r} is missing benchmark(s) {missing}; score them, pass groups= without them, or strict=False"
            )
        if present:
            out[name] = sum(float(scores[m]) for m in present) / len(present)
    out["overall"] = sum(float(v) for v in scores.values()) / len(scores)
    return out
