"""Counting and reporting unusable samples instead of crashing on them."""

from __future__ import annotations

from dataclasses import dataclass, field

from tbi_train.data.errors import DataError

REASONS = {
    "bad_json": "the line is not valid JSON",
    "not_a_record": "the record is not a JSON object",
    "duplicate_id": "another record has the same id",
    "bad_conversation": "conversations missing or malformed (need from/value or role/content turns)",
    "no_answer": "no assistant (gpt) turn with text",
    "placeholder_mismatch": "the number of <image> placeholders differs from the number of images/videos",
    "path_outside_root": "a media path escapes the data root",
    "missing_media": "an image, video or frame folder does not exist",
    "corrupt_media": "an image or video cannot be decoded",
    "collate": "unusable at batching: image tokens past max_length, or no supervised token",
}
"""Reason code -> what it means; the keys of `BadSampleReport.counts`."""


@dataclass
class BadSampleReport:
    """Unusable samples of one dataset: how many, why, and the first few ids per reason.

    `fraction = bad / total`; `check(max_bad_fraction)` raises when it is exceeded.
    """

    source: str
    total: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5

    @property
    def bad(self) -> int:
        """Number of skipped samples."""
        return sum(self.counts.values())

    @property
    def fraction(self) -> float:
        """bad / total (0 for an empty dataset)."""
        return self.bad / self.total if self.total else 0.0

    def add(self, sample_id: str, reason: str, detail: str = "") -> None:
        """Count one skipped sample under `reason` (a key of REASONS), keeping the first few ids."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < self.max_examples:
            shown.append(f"{sample_id} ({detail})" if detail else sample_id)

    def merge(self, other: BadSampleReport) -> BadSampleReport:
        """A report covering this dataset and `other`."""
        out = BadSampleReport(
            f"{self.source} + {other.source}", self.total + other.total, max_examples=self.max_examples
        )
        for report in (self, other):
            for reason, n in report.counts.items():
                out.counts[reason] = out.counts.get(reason, 0) + n
                room = out.max_examples - len(out.examples.setdefault(reason, []))
                out.examples[reason].extend(report.examples.get(reason, [])[: max(room, 0)])
        return out

    def summary(self) -> str:
        """Human-readable lines: totals, then one line per reason with example ids."""
        lines = [f"{self.source}: {self.bad} of {self.total} samples skipped ({100 * self.fraction:.1f}%)"]
        for reason in sorted(self.counts, key=lambda r: -self.counts[r]):
            lines.append(
                f"  {reason}: {self.counts[reason]} - {REASONS.get(reason, reason)}; e.g. "
                + ", ".join(self.examples.get(reason, []))
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        """JSON-able form."""
        return {
            "source": self.source,
            "total": self.total,
            "bad": self.bad,
            "fraction": self.fraction,
            "counts": dict(self.counts),
            "examples": {k: list(v) for k, v in self.examples.items()},
        }

    def check(self, max_bad_fraction: float) -> None:
        """Raise DataError when more than `max_bad_fraction` of the samples are bad.

        Raises:
            DataError: with the summary, so the user sees which ids to fix.
        """
        if self.total and self.fraction > max_bad_fraction:
            raise DataError(
                f"{self.summary()}\nmore than max_bad_fraction={max_bad_fraction} of the data is unusable: fix the "
                "records above (run `tbi data check` for the full list) or raise data.max_bad_fraction."
            )
