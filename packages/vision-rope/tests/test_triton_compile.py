"""The Triton kernels are valid, spill-free GPU code, checked without a GPU.

Every autotune configuration of the forward and backward kernels is compiled ahead of time for sm_80
(A100) and sm_90 (H100) through ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))``;
ptxas then reports registers and spills. Head dim 128 is the largest register footprint: 72 and 80 use
the same [rows, 64] half tiles with column masks.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # shared process with the interpreter tests

from collections import Counter

import pytest

from tbi_vision_rope._triton_attention import _configs, compile_resource_usage

MAX_SHARED = {80: 163 * 1024, 90: 227 * 1024}  # opt-in shared memory per block


@pytest.mark.slow
@pytest.mark.parametrize("arch", [80, 90])
def test_every_autotune_config_compiles_without_register_spills(arch):
    rows = compile_resource_usage(archs=(arch,), head_dims=(128,))
    expected = {kind: len(_configs(kind, interpret=False)) for kind in ("fwd", "bwd_dkdv", "bwd_dq")}
    assert Counter(r.kernel for r in rows) == Counter({**expected, "bwd_delta": 1, "bwd_freq": 1})
    spilled = [r for r in rows if r.spill_stores or r.spill_loads]
    assert not spilled, f"register spills on sm_{arch}: {spilled}"
    for r in rows:
        assert r.arch == arch and r.head_dim == 128
        assert 0 < r.registers <= 255, r
        assert 0 < r.shared_bytes <= MAX_SHARED[arch], r
