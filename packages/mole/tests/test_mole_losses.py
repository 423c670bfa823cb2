"""Router losses against independent float64 computations written from the formulas."""

import math

import pytest
import torch

from tbi_mole import language_loss, load_balancing_loss, router_z_loss


def _reference_load_balance(logits, expert_index, mask):
    """E · Σ_e f_e P_e with per-token Python loops in float64 (the Switch / Mixtral formula, f divided by k)."""
    num_tokens, num_experts = logits.shape
    top_k = expert_index.shape[1]
    probs = torch.softmax(logits.double(), dim=-1)
    real = [t for t in range(num_tokens) if mask is None or bool(mask[t])]
    loss = 0.0
    for e in range(num_experts):
        f_e = sum(int(expert_index[t, s]) == e for t in real for s in range(top_k)) / (top_k * len(real))
        p_e = sum(float(probs[t, e]) for t in real) / len(real)
        loss += f_e * p_e
    return num_experts * loss


@pytest.mark.parametrize("num_tokens,num_experts,top_k", [(1, 3, 1), (37, 3, 2), (64, 5, 1), (19, 7, 2)])
@pytest.mark.parametrize("masked", [False, True])
def test_load_balancing_matches_formula(num_tokens, num_experts, top_k, masked):
    gen = torch.Generator().manual_seed(num_tokens * 31 + num_experts)
    logits = torch.randn(num_tokens, num_experts, generator=gen) * 2
    expert_index = logits.softmax(-1).topk(top_k, dim=-1).indices
    mask = None
    if masked:
        mask = torch.rand(num_tokens, generator=gen) > 0.3
        mask[0] = True
    got = load_balancing_loss(logits, expert_index, mask)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(_reference_load_balance(logits, expert_index, mask), rel=1e-5)


def test_load_balancing_is_k_times_smaller_than_hf_mixtral():
    from transformers.models.mixtral import modeling_mixtral as mixtral

    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2 * 11, 4, generator=gen)
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 7:] = 0
    expert_index = logits.softmax(-1).topk(2, dim=-1).indices
    ours = load_balancing_loss(logits, expert_index, mask)
    theirs = mixtral.load_balancing_loss_func((logits,), num_experts=4, top_k=2, attention_mask=mask)
    assert float(ours) * 2 == pytest.approx(float(theirs), rel=1e-5)


def test_load_balancing_values_at_balance_and_collapse():
    num_experts = 3
    uniform = torch.zeros(6, num_experts)
    balanced_index = torch.tensor([[0], [1], [2], [0], [1], [2]])
    assert float(load_balancing_loss(uniform, balanced_index)) == pytest.approx(1.0)
    collapsed = torch.full((6, num_experts), -1e4)
    collapsed[:, 1] = 1e4
    assert float(load_balancing_loss(collapsed, torch.ones(6, 1, dtype=torch.long))) == pytest.approx(
        num_experts
    )


def test_load_balancing_gradient_only_through_probabilities():
    logits = torch.randn(9, 3, requires_grad=True)
    index = logits.detach().topk(1, dim=-1).indices
    load_balancing_loss(logits, index).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_losses_with_no_real_token_are_zero_and_differentiable():
    logits = torch.randn(4, 3, requires_grad=True)
    mask = torch.zeros(4, dtype=torch.bool)
    index = torch.zeros(4, 1, dtype=torch.long)
    total = load_balancing_loss(logits, index, mask) + router_z_loss(logits, mask)
    total = total + language_loss(logits, torch.zeros(4, dtype=torch.long), mask)
    assert float(total.detach()) == 0.0
    total.backward()
    assert logits.grad is not None


def test_z_loss_matches_formula():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(13, 3, generator=gen) * 3
    mask = torch.rand(13, generator=gen) > 0.4
    expected = [
        math.log(sum(math.exp(float(v)) for v in logits[t].double())) ** 2 for t in range(13) if bool(mask[t])
    ]
    got = router_z_loss(logits, mask)
    assert float(got) == pytest.approx(sum(expected) / len(expected), rel=1e-5)


def test_language_loss_matches_formula():
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(10, 3, generator=gen)
    target = torch.tensor([0, 1, 2, -100, 0, 1, -100, 2, 2, 0])
    mask = torch.ones(10, dtype=torch.bool)
    mask[4] = False
    terms = []
    for t in range(10):
        if target[t] == -100 or not mask[t]:
            continue
        log_probs = torch.log_softmax(logits[t].double(), dim=-1)
        terms.append(-float(log_probs[target[t]]))
    got = language_loss(logits, target, mask)
    assert float(got) == pytest.approx(sum(terms) / len(terms), rel=1e-5)
