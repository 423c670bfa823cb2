"""What every scorer returns: the corpus score, the per-sample scores and where they came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tbi_evalbench._errors import EvalbenchError

COMPAT_MODES = ("official", "lmms", "vlmeval")


def package_version() -> str:
    from tbi_evalbench import __version__

    return __version__


@dataclass(frozen=True)
class ScoreResult:
    """One metric over one set of predictions.

    Attributes:
        metric: metric name as the CLI spells it (``vqa_accuracy``, ``anls``, ...).
        scorer: the reference implementation whose semantics this matches (e.g. ``"VQA official vqaEval.py"``).
        compat: the compatibility mode used (``official``, ``lmms`` or ``vlmeval``).
        score: corpus score, an unrounded fraction in [0, 1] (CIDEr-D is unbounded); the mean of
            ``per_sample`` except where ``scorer`` says otherwise (COCO corpus BLEU).
        per_sample: one score per prediction, in input order.
        ids: the sample ids, aligned with ``per_sample``.
        version: tbi-evalbench version that produced the numbers.
        extra: metric-specific extras (BLEU-1..4, tokenisation, METEOR variant, ...).
    """

    metric: str
    scorer: str
    compat: str
    score: float
    per_sample: list[float]
    ids: list[str]
    version: str = field(default_factory=package_version)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.per_sample)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``{"metric", "compat", "score", "n", "per_sample": [{"id", "score"}], ...}``."""
        return {
            "metric": self.metric,
            "compat": self.compat,
            "score": self.score,
            "n": self.n,
            "per_sample": [{"id": i, "score": s} for i, s in zip(self.ids, self.per_sample)],
            "scorer": self.scorer,
            "version": self.version,
            "extra": self.extra,
        }


def check_compat(compat: str) -> str:
    if compat not in COMPAT_MODES:
        raise EvalbenchError(f"unknown compat mode {compat!r}; use one of {', '.join(COMPAT_MODES)}")
    return compat


def default_ids(n: int, ids: list[str] | None) -> list[str]:
    if ids is None:
        return [str(i) for i in range(n)]
    if len(ids) != n:
        raise EvalbenchError(f"got {len(ids)} ids for {n} predictions; pass one id per prediction")
    return [str(i) for i in ids]


def mean(values: list[float]) -> float:
    """Plain left-to-right mean, as the reference scripts compute it (``sum(x) / len(x)``); 0.0 when empty."""
    return float(sum(values)) / len(values) if values else 0.0


def check_lengths(predictions, references) -> None:
    if len(predictions) != len(references):
        raise EvalbenchError(
            f"{len(predictions)} predictions but {len(references)} references; pass one reference entry per prediction"
        )
