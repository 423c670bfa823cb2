"""Forward + backward of every projector on the CPU (pytest-benchmark).

Default: a small size so CI (``--benchmark-disable``) finishes in seconds. ``TBI_BENCH_FULL=1`` selects
seed-000 scale: a 32×32 grid of 1024-dim features → 2048-dim tokens, batch 2 (the README table).
Multi-scale projectors get three such maps (layers 8/16/24).
"""

import os

import pytest
import torch

from tbi_projectors import build_projector, list_projectors

FULL = os.environ.get("TBI_BENCH_FULL") == "1"
BATCH = 2
GRID, C, D = ((32, 32), 1024, 2048) if FULL else ((8, 8), 64, 128)
# Seed defaults at full scale; at the small size the wide defaults are narrowed to fit C=64, D=128.
SMALL = {
    "c-abstractor": {"hidden_dim": 128},
    "pyramid-c-abstractor": {"hidden_dim": 128, "branch_dim": 64},
    "perceiver": {"heads": 2, "dim_head": 32},
    "foveated-query": {"query_dim": 32},
    "pyramid-drop": {"score_dim": 32},
    "spatial-tokens": {"reference_grid": (8, 8), "kernel_sizes": (2, 4, 8)},
}


@pytest.mark.parametrize("name", list_projectors())
def test_forward_backward(benchmark, name):
    options = {} if FULL else SMALL.get(name, {})
    proj = build_projector(name, input_dim=C, output_dim=D, **options).train()
    gen = torch.Generator().manual_seed(0)
    n = GRID[0] * GRID[1]
    if proj.multi_scale:
        features, grid = [torch.randn(BATCH, n, C, generator=gen) for _ in range(3)], [GRID] * 3
    else:
        features, grid = torch.randn(BATCH, n, C, generator=gen), GRID

    def step():
        proj.zero_grad(set_to_none=True)
        tokens = proj(features, grid=grid).tokens
        tokens.pow(2).mean().backward()
        return tokens

    tokens = benchmark.pedantic(step, rounds=3, warmup_rounds=1) if FULL else benchmark(step)
    assert tokens.shape == (BATCH, proj.num_output_tokens(grid), D)
    benchmark.extra_info.update(
        {
            "output_tokens": proj.num_output_tokens(grid),
            "parameters": proj.num_parameters(),
            "threads": torch.get_num_threads(),
        }
    )
