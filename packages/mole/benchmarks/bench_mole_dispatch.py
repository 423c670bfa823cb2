"""Forward+backward time of a 3-expert top-1 MoLE layer vs one dense FFN vs naive per-expert loops.

Shape (issue 6): 4096 tokens, hidden 1024, intermediate 2816, SwiGLU experts, top-1, dropless, training mode.
With --benchmark-disable (the CI correctness run) a small shape (512 x 256 x 704) keeps the run short;
TBI_MOLE_BENCH_TOKENS / TBI_MOLE_BENCH_HIDDEN / TBI_MOLE_BENCH_INTERMEDIATE override either.

Baselines, both written here:
- `naive_index_loop`: for each expert, a boolean mask of its tokens, x[mask] gathered, the expert run on them,
  and the result written back with out[mask] = ... (the textbook eager MoE loop);
- `naive_masked_dense`: for each expert, the expert run on every token and its output kept where the boolean
  mask is set (out += mask * gate * expert(x)).
Ratios (MoLE / dense, naive / MoLE) are in the package README.
"""

import os

import pytest
import torch
from torch import nn

from tbi_mole import MoLEConfig, MoLELayer

FULL = {"TOKENS": 4096, "HIDDEN": 1024, "INTERMEDIATE": 2816}
SMALL = {"TOKENS": 512, "HIDDEN": 256, "INTERMEDIATE": 704}


class SwiGLU(nn.Module):
    def __init__(self, hidden, intermediate):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


def _route(layer, x):
    return layer.router(x).argmax(dim=-1)  # [T] top-1 expert


def naive_index_loop(layer, x):
    expert = _route(layer, x)  # [T]
    out = torch.zeros_like(x)
    for e, module in enumerate(layer.experts.values()):
        mask = expert == e  # [T] bool
        out[mask] = module(x[mask])  # top-1 renormalised: the gate is 1
    return out


def naive_masked_dense(layer, x):
    expert = _route(layer, x)  # [T]
    out = torch.zeros_like(x)
    for e, module in enumerate(layer.experts.values()):
        mask = (expert == e).to(x.dtype)  # [T]
        out = out + module(x) * mask[:, None]
    return out


@pytest.fixture(scope="module")
def setup(request):
    shape = SMALL if request.config.getoption("benchmark_disable") else FULL
    tokens, hidden, inter = (int(os.environ.get(f"TBI_MOLE_BENCH_{k}", v)) for k, v in shape.items())
    torch.manual_seed(0)
    dense = SwiGLU(hidden, inter)
    experts = {name: SwiGLU(hidden, inter) for name in ("ko", "en", "shared")}
    # Top-1 renormalised: every token's gate is exactly 1, as in the naive loops below.
    layer = MoLELayer(experts, MoLEConfig(top_k=1, capacity_factor=None, track_stats=False)).train()
    x = torch.randn(tokens, hidden, requires_grad=True)
    return dense, layer, x


def _step(fn, x):
    x.grad = None
    out = fn(x)
    out.backward(torch.ones_like(out))
    return out


def _run(benchmark, fn, x):
    return benchmark.pedantic(_step, args=(fn, x), rounds=3, iterations=1, warmup_rounds=1)


def test_dense_ffn(benchmark, setup):
    dense, _, x = setup
    out = _run(benchmark, dense, x)
    assert out.shape == x.shape


def test_mole_grouped(benchmark, setup):
    _, layer, x = setup
    out = _run(benchmark, layer, x)
    with torch.no_grad():
        torch.testing.assert_close(out, naive_index_loop(layer, x), rtol=1e-4, atol=1e-4)


def test_naive_index_loop(benchmark, setup):
    _, layer, x = setup
    out = _run(benchmark, lambda t: naive_index_loop(layer, t), x)
    assert out.shape == x.shape


def test_naive_masked_dense(benchmark, setup):
    _, layer, x = setup
    out = _run(benchmark, lambda t: naive_masked_dense(layer, t), x)
    with torch.no_grad():
        torch.testing.assert_close(out, layer(x), rtol=1e-4, atol=1e-4)
