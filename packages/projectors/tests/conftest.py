"""Tiny configurations of every projector, shared by the tests (C=12 → D=16, a few thousand parameters)."""

import pytest
import torch

from tbi_projectors import build_projector

C, D = 12, 16

TINY = {
    "linear": {},
    "mlp2x_gelu": {},
    "c-abstractor": {
        "hidden_dim": 16,
        "output_grid": (3, 2),
        "se_reduction": 2,
        "num_blocks": 2,
        "blocks_before_pool": 1,
    },
    "pyramid-c-abstractor": {
        "hidden_dim": 16,
        "branch_dim": 8,
        "output_grid": (2, 3),
        "se_reduction": 2,
        "input_dims": (12, 6, 12),
        "blocks_after_fusion": 1,
    },
    "perceiver": {"num_latents": 5, "heads": 2, "dim_head": 4, "max_frames": 4},
    "query-attn": {"num_queries": 5, "heads": 4},
    "pixel-shuffle-mlp": {},
    "ldp": {"output_grid": (2, 3)},
    "spatial-tokens": {"reference_grid": (8, 8), "kernel_sizes": (2, 4, 8)},
    "foveated-query": {"query_dim": 8, "heads": 2, "depth": 2},
    "multi-token": {"pool_grid": (2, 2)},
    "pyramid-drop": {"score_dim": 8, "input_dims": (12, 6, 12)},
    "adaptive-compression": {"fine_fraction": 0.34},
}
DEEP = ["c-abstractor", "pyramid-c-abstractor", "perceiver", "foveated-query"]


def _tiny(name, **overrides):
    return build_projector(name, input_dim=C, output_dim=D, **{**TINY[name], **overrides})


def _make_inputs(proj, batch, grid, frames=None, generator=None, dtype=torch.float32):
    """Random features of the right shape for ``proj`` (a list for multi-scale projectors)."""
    n = grid[0] * grid[1]
    lead = (batch, n) if frames is None else (batch, frames, n)
    xs = [torch.randn(*lead, c, generator=generator).to(dtype) for c in proj._input_dims()]
    return (xs, [grid] * len(xs)) if proj.multi_scale else (xs[0], grid)


@pytest.fixture
def tiny():
    """``tiny(name, **overrides)`` builds the tiny config of a projector."""
    return _tiny


@pytest.fixture
def make_inputs():
    """``make_inputs(proj, batch, grid, frames=None)`` → (features, grid) ready for ``proj(features, grid=grid)``."""
    return _make_inputs


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
