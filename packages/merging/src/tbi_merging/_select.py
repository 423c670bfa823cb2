"""Exact k-th largest magnitude without sorting: radix selection on float32 bit patterns.

For non-negative float32 values the uint32 bit pattern orders like the value, so the k-th largest value is
found from a 65536-bin histogram of the high 16 bits (which bin holds it, and how many entries lie above),
then a 65536-bin histogram of the low 16 bits of the entries in that bin. The kernels in
:mod:`tbi_merging._kernels` build the histograms; extra memory is two histograms per model and thread,
never the int64 index tensors and copies of ``argsort``/``topk``/``kthvalue``.
"""

from __future__ import annotations

import numpy as np

BINS = 1 << 16


def find_bin(hist: np.ndarray, k: int) -> tuple[int, int]:
    """Bin holding the k-th largest entry (1 <= k <= hist.sum()) and the number of entries in higher bins."""
    suffix = np.cumsum(hist[::-1])[::-1]  # suffix[i] = entries in bins >= i
    idx = int(np.flatnonzero(suffix >= k)[-1])
    above = int(suffix[idx + 1]) if idx + 1 < len(hist) else 0
    return idx, above
