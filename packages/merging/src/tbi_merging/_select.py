"""Exact k-th largest magnitude of a tensor without sorting it (radix select on float32 bit patterns).

For non-negative float32 values the int32 bit pattern orders like the value, so the k-th largest value
is found from a 65536-bin histogram of the high 16 bits (one pass over the tensor, keeping those high
halves as int16), then a 65536-bin histogram of the low 16 bits of the few entries in the chosen high
bin (read back by index). Extra memory is 2 bytes per entry plus O(chunk), never the int64 index
tensors and full copies of ``argsort``/``topk``/``kthvalue``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

_BINS = 1 << 16


@dataclass(frozen=True)
class Threshold:
    """Result of :func:`kth_largest`: keep entries with ``|x| > value`` plus the first ``ties_to_keep``
    entries (in flat order) with ``|x| == value``; exactly ``k`` entries are kept."""

    value: float
    ties_to_keep: int


def _find_bin(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """Bin holding the k-th largest entry and the number of entries in higher bins."""
    suffix = hist.flip(0).cumsum(0).flip(0)  # suffix[i] = entries in bins >= i
    idx = int(torch.nonzero(suffix >= k).max())
    above = int(suffix[idx + 1]) if idx + 1 < _BINS else 0
    return idx, above


def kth_largest(
    chunks: Iterator[tuple[int, torch.Tensor]], k: int, values_at: Callable[[int, torch.Tensor], torch.Tensor]
) -> Threshold:
    """Exact k-th largest value of non-negative float32 data given chunk by chunk.

    Args:
        chunks: yields ``(start, values)`` with 1-D float32 ``values`` covering the data in order.
        k: 1 <= k <= number of entries.
        values_at: ``values_at(start, idx)`` returns the values at offsets ``idx`` of the chunk at ``start``.
    """
    hist_hi = torch.zeros(_BINS, dtype=torch.int64)
    keys: list[tuple[int, torch.Tensor]] = []
    for start, c in chunks:
        hi = c.view(torch.int32) >> 16  # [C]; < 2**15 for non-negative floats
        hist_hi += torch.bincount(hi, minlength=_BINS)
        keys.append((start, hi.to(torch.int16)))
    hi_bin, above_hi = _find_bin(hist_hi, k)
    hist_lo = torch.zeros(_BINS, dtype=torch.int64)
    for start, key in keys:
        idx = torch.nonzero(key == hi_bin).squeeze(1)
        if idx.numel():
            lo = values_at(start, idx).view(torch.int32) & 0xFFFF
            hist_lo += torch.bincount(lo, minlength=_BINS)
    lo_bin, above_lo = _find_bin(hist_lo, k - above_hi)
    value = torch.tensor([(hi_bin << 16) | lo_bin], dtype=torch.int32).view(torch.float32).item()
    return Threshold(value=value, ties_to_keep=k - above_hi - above_lo)
