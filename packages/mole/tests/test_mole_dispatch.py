"""Grouped dispatch against a naive per-token reference, and the deterministic capacity drop rule."""

import math

import pytest
import torch
from torch import nn

from tbi_mole import expert_capacity, plan_dispatch, run_experts


def _naive_keep(expert_index, capacity):
    """Drop rule from its statement: first choices before second choices, then by token position."""
    num_tokens, top_k = expert_index.shape
    used: dict[int, int] = {}
    kept = torch.zeros(num_tokens, top_k, dtype=torch.bool)
    for s in range(top_k):
        for t in range(num_tokens):
            e = int(expert_index[t, s])
            if capacity is None or used.get(e, 0) < capacity:
                kept[t, s] = True
                used[e] = used.get(e, 0) + 1
    return kept


def _experts(num_experts, dim, seed):
    torch.manual_seed(seed)
    return [
        nn.Sequential(nn.Linear(dim, 2 * dim + 1), nn.GELU(), nn.Linear(2 * dim + 1, dim))
        for _ in range(num_experts)
    ]


@pytest.mark.parametrize(
    "num_tokens,num_experts,top_k,capacity",
    [(1, 3, 1, None), (33, 3, 1, None), (33, 3, 2, 9), (50, 4, 1, 7), (17, 5, 2, 1), (40, 3, 2, 0)],
)
def test_run_experts_matches_per_token_reference(num_tokens, num_experts, top_k, capacity):
    dim = 6
    gen = torch.Generator().manual_seed(num_tokens + 100 * num_experts)
    x = torch.randn(num_tokens, dim, generator=gen, dtype=torch.float64)
    expert_index = torch.stack(
        [torch.randperm(num_experts, generator=gen)[:top_k] for _ in range(num_tokens)]
    )  # distinct experts per token
    gate = torch.rand(num_tokens, top_k, generator=gen, dtype=torch.float64)
    experts = [m.double() for m in _experts(num_experts, dim, seed=num_tokens)]

    plan = plan_dispatch(expert_index, gate, num_experts, capacity)
    got = run_experts(x, plan, experts)

    kept = _naive_keep(expert_index, capacity)
    assert torch.equal(plan.kept, kept)
    expected = torch.zeros_like(x)
    for t in range(num_tokens):
        for s in range(top_k):
            if kept[t, s]:
                expected[t] += gate[t, s] * experts[int(expert_index[t, s])](x[t : t + 1])[0]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert sum(plan.block_sizes) == int(kept.sum()) == plan.token_index.numel()
    # Contiguous blocks: the gathered tokens are grouped by expert in ascending order.
    block_expert = torch.repeat_interleave(torch.arange(num_experts), torch.tensor(plan.block_sizes))
    flat_kept_expert = [
        int(expert_index[t, s]) for s in range(top_k) for t in range(num_tokens) if kept[t, s]
    ]
    assert block_expert.tolist() == sorted(flat_kept_expert)


def test_capacity_formula():
    assert expert_capacity(4096, 3, 1, 1.25) == math.ceil(4096 / 3 * 1.25) == 1707
    assert expert_capacity(10, 3, 2, 1.0) == 7
    assert expert_capacity(10, 3, 1, None) is None


def test_run_experts_gradients_match_reference():
    dim, num_tokens = 5, 21
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(num_tokens, dim, generator=gen, requires_grad=True)
    logits = torch.randn(num_tokens, 3, generator=gen, requires_grad=True)
    experts = _experts(3, dim, seed=1)
    gate, index = logits.softmax(-1).topk(2, dim=-1)
    out = run_experts(x, plan_dispatch(index, gate, 3, None), experts)
    weights = torch.randn(num_tokens, dim, generator=gen)
    (out * weights).sum().backward()
    grads = [x.grad.clone(), logits.grad.clone(), *(p.grad.clone() for m in experts for p in m.parameters())]

    x.grad = None
    logits.grad = None
    for m in experts:
        m.zero_grad(set_to_none=True)
    gate, index = logits.softmax(-1).topk(2, dim=-1)
    ref = torch.stack(
        [sum(gate[t, s] * experts[int(index[t, s])](x[t]) for s in range(2)) for t in range(num_tokens)]
    )
    (ref * weights).sum().backward()
    ref_grads = [x.grad, logits.grad, *(p.grad for m in experts for p in m.parameters())]
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
