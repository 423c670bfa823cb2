"""Next-token cross-entropy summed over supervised tokens, normalised by the optimizer step's token count."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["IGNORE_INDEX", "count_targets", "token_loss_sum"]

IGNORE_INDEX = -100
"""Label of positions that carry no loss (prompts, image tokens, padding)."""


def count_targets(labels: torch.Tensor) -> int:
    """Supervised next-token targets in labels [B, L]: positions 1.. not equal to IGNORE_INDEX."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """sum_t CE(logits[:, t], labels[:, t + 1]) over supervised t, in fp32.

    logits [B, L, V], labels [B, L] -> scalar. Dividing the sum of all micro-batches (and processes)
    by their total target count gives the same gradient for 1 x 2b, 2 x b, or b with 2 accumulation steps.
    """
    shift_logits = logits[:, :-1].float()  # [B, L-1, V]
    shift_labels = labels[:, 1:]  # [B, L-1]
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
