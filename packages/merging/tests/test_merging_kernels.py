"""The C kernels' own contract: the radix selection against a sort, and a clear error when the build is
missing or older than its source."""

from __future__ import annotations

import itertools
import os
import time

import numpy as np
import pytest

from tbi_merging import _kernels


@pytest.mark.parametrize("n", [1, 7, 2049, 100_003])
def test_kth_largest_matches_sort(n):
    rng = np.random.default_rng(n)
    values = np.abs(np.round(rng.standard_normal(n) * 4) / 4).astype(np.float32)  # many ties
    values[:: max(1, n // 5)] = rng.standard_normal(len(values[:: max(1, n // 5)])).astype(np.float32) * 1e-30
    bits = values.view(np.uint32)
    descending = np.sort(bits)[::-1]
    for rank in {min(n, 2), 1, max(1, n // 3), max(1, n - 1), n}:
        assert _kernels.kth_largest(bits, rank) == descending[rank - 1], rank


@pytest.mark.parametrize("parts", [1, 3])
def test_select_candidates_threshold_and_tie_cut_follow_flat_order(parts):
    rng = np.random.default_rng(parts)
    n = 5_001
    bits = rng.integers(1000, 1040, n).astype(np.uint32) << 20  # 40 distinct patterns, ~125 ties each
    pos = np.sort(rng.choice(10 * n, n, replace=False)).astype(np.int64)
    cuts = np.linspace(0, n, parts + 1).astype(int)  # contiguous ranges, each ascending in flat order
    ranges = [(bits[a:b].copy(), pos[a:b].copy()) for a, b in itertools.pairwise(cuts)]
    counts = np.array([len(r[0]) for r in ranges])
    for rank in (1, 77, 2500, n):
        thr, cut = _kernels.select_candidates(
            tuple(r[0] for r in ranges), tuple(r[1] for r in ranges), counts, rank, True
        )
        assert thr == np.sort(bits)[::-1][rank - 1]
        above = int((bits > thr).sum())
        ties = pos[bits == thr]  # in flat order
        if above + len(ties) == rank:
            assert cut == -1
        else:
            assert cut == ties[rank - above - 1] + 1  # the first rank - above ties are kept


def test_missing_or_stale_build_is_refused(tmp_path):
    with pytest.raises(ImportError, match=r"not built.*pip install -e packages/merging"):
        _kernels._load_library("tbi_merging._no_such_kernels")
    newer = tmp_path / "_ckernels.c"
    newer.write_text("/* edited after the build */\n")
    future = time.time() + 3600
    os.utime(newer, (future, future))
    with pytest.raises(ImportError, match=r"older than _ckernels\.c: rebuild"):
        _kernels._load_library(source=newer)
    assert _kernels._load_library(source=tmp_path / "absent.c").merge_pass is not None


def test_wrong_argument_types_are_refused_before_the_call():
    b = np.zeros(16, dtype=np.uint16)
    with pytest.raises(TypeError, match="C-contiguous bool array, got int8"):
        _kernels.keep_mask(1, 2**31, 0, np.zeros(4, dtype=np.int8))
    with pytest.raises(TypeError, match="uint16 \\(bf16 bits\\) or float32, got float64"):
        _kernels.l1_pass(np.zeros(4), (), 0, 4, 0, np.zeros(0, np.uint64), 0, np.zeros((0, 2)))
    with pytest.raises(TypeError, match="C-contiguous uint16"):
        _kernels.hist_pass(
            b, (np.zeros(32, dtype=np.uint16)[::2],), 0, 16, 0, np.zeros(1, np.uint64), 0, False,
            np.full(1, -1, np.int64), np.zeros((1, 65536), np.int64),
        )  # fmt: skip
    with pytest.raises(ValueError, match="shorter than the range end 17"):
        _kernels.hist_pass(
            b, (b,), 0, 17, 0, np.zeros(1, np.uint64), 0, False, np.full(1, -1, np.int64),
            np.zeros((1, 65536), np.int64),
        )  # fmt: skip
