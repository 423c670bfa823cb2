"""The pre-flight check: tokenise the data as training will, and stop before a silent zero-loss run."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

from tbi_train.data.collator import Collator
from tbi_train.data.errors import DataError

logger = logging.getLogger(__name__)


@dataclass
class PreflightReport:
    """What the pre-flight check saw: samples checked, token lengths, supervised tokens, problems by kind."""

    checked: int = 0
    max_length: int = 0
    mean_length: float = 0.0
    mean_supervised: float = 0.0
    problems: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no sample has a problem."""
        return not self.problems

    def summary(self) -> str:
        """Human-readable lines."""
        lines = [
            f"pre-flight: {self.checked} samples tokenised; length mean {self.mean_length:.1f}, max {self.max_length}; "
            f"supervised tokens per sample {self.mean_supervised:.1f}"
        ]
        for kind, ids in self.problems.items():
            lines.append(f"  {kind}: {len(ids)} samples, e.g. {', '.join(ids[:5])}")
        return "\n".join(lines)


_FIXES = {
    "no_supervised_tokens": "these samples would train on zero loss: check the reply turns and loss_on",
    "image_token_mismatch": "the image-pad token count differs from tokens_per_image x media: check the text and tokenizer",
    "unusable": "see each sample's reason above",
}


def preflight_check(
    dataset,
    collator: Collator,
    max_samples: int | None = None,
    seed: int = 0,
    *,
    raise_on_problems: bool = True,
) -> PreflightReport:
    """Tokenise samples of `dataset` with `collator` (text only, no pixels) and verify them.

    Checks per sample: at least one supervised label; the image-pad tokens equal
    sum_k tokens_for(media_frames[k]) (no stray pad tokens in the text, none cut by max_length).
    `max_samples` checks a seeded random subset instead of everything. `raise_on_problems=False`
    returns the report with its problems instead (for `tbi data check`).

    Raises:
        DataError: any sample fails, naming the first ids per problem and the fix.
    """
    indices = list(range(len(dataset)))
    if max_samples is not None and max_samples < len(indices):
        indices = sorted(random.Random(f"tbi-preflight:{seed}").sample(indices, max_samples))
    report = PreflightReport()
    lengths, supervised = [], []
    for i in indices:
        info = dataset.describe(i)
        try:
            enc = collator.encode(info.conversations, info.media_frames, info.id)
        except DataError as exc:
            report.problems.setdefault("unusable", []).append(f"{info.id} ({exc})")
            continue
        expected = sum(collator.tokens_for(f) for f in info.media_frames)
        found = sum(t == collator.image_token_id for t in enc.input_ids)
        if found != expected or sum(enc.image_mask) != expected:
            report.problems.setdefault("image_token_mismatch", []).append(
                f"{info.id} ({found} != {expected})"
            )
        if enc.supervised == 0:
            report.problems.setdefault("no_supervised_tokens", []).append(info.id)
        lengths.append(len(enc.input_ids))
        supervised.append(enc.supervised)
    report.checked = len(indices)
    if lengths:
        report.max_length = max(lengths)
        report.mean_length = sum(lengths) / len(lengths)
        report.mean_supervised = sum(supervised) / len(supervised)
    logger.info("%s", report.summary())
    if not report.ok and raise_on_problems:
        fixes = "; ".join(f"{k}: {_FIXES[k]}" for k in report.problems)
        raise DataError(f"{report.summary()}\npre-flight failed - {fixes}.")
    return report
