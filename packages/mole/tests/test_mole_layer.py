"""MoLELayer: routing semantics, identity with identical experts, capacity, gradients, freezing, statistics."""

import copy
import math

import pytest
import torch
from torch import nn
from transformers import CLIPTextConfig, GPT2Config, Qwen2Config
from transformers.models.clip.modeling_clip import CLIPMLP
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP
from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP

from tbi_mole import MoLEConfig, MoLEError, MoLELayer, collect_aux_loss, router_stats

DIM = 16


class InternLM2StyleMLP(nn.Module):
    """InternLM2's FFN naming: w1 (gate), w3 (up), w2 (down)."""

    def __init__(self, dim, inner):
        super().__init__()
        self.w1 = nn.Linear(dim, inner, bias=False)
        self.w3 = nn.Linear(dim, inner, bias=False)
        self.w2 = nn.Linear(inner, dim, bias=False)

    def forward(self, x):
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))


class FixedRouter(nn.Module):
    """Hand-built router: logits = x @ W with a given W [D, E]."""

    def __init__(self, weight):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x):
        return x.float() @ self.weight


class Counting(nn.Module):
    """Wraps an expert and records how many rows it processed."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.rows = []

    def forward(self, x):
        self.rows.append(x.detach().clone())
        return self.inner(x)


def _mlp(kind, seed=0):
    torch.manual_seed(seed)
    if kind == "swiglu":
        return Qwen2MLP(Qwen2Config(hidden_size=DIM, intermediate_size=27))
    if kind == "fc1fc2":
        return CLIPMLP(CLIPTextConfig(hidden_size=DIM, intermediate_size=23, hidden_act="gelu"))
    if kind == "w1w2w3":
        return InternLM2StyleMLP(DIM, 19)
    if kind == "gpt2":
        return GPT2MLP(4 * DIM, GPT2Config(n_embd=DIM, resid_pdrop=0.0))
    raise ValueError(kind)


def _three(seed=0):
    return {name: _mlp("swiglu", seed + i) for i, name in enumerate(["ko", "en", "shared"])}


@pytest.mark.parametrize("kind", ["swiglu", "fc1fc2", "w1w2w3", "gpt2"])
@pytest.mark.parametrize("top_k", [1, 2])
def test_identical_experts_dropless_equal_the_dense_ffn(kind, top_k):
    dense = _mlp(kind).eval()
    experts = {name: copy.deepcopy(dense) for name in ("ko", "en", "shared")}
    layer = MoLELayer(experts, MoLEConfig(top_k=top_k, capacity_factor=None), hidden_size=DIM).eval()
    x = torch.randn(3, 11, DIM)
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-5, atol=1e-6)


def test_top1_output_is_chosen_expert_times_gate():
    experts = _three()
    weight = torch.randn(DIM, 3)
    layer = MoLELayer(
        experts, MoLEConfig(top_k=1, gate="softmax", capacity_factor=None), router=FixedRouter(weight)
    )
    x = torch.randn(29, DIM)
    out = layer(x)
    probs = torch.softmax(x @ weight, dim=-1)
    names = list(experts)
    chosen = probs.argmax(dim=-1)
    assert len(set(chosen.tolist())) > 1
    for t in range(29):
        e = int(chosen[t])
        expected = probs[t, e] * experts[names[e]](x[t : t + 1])[0]
        torch.testing.assert_close(out[t], expected, rtol=1e-5, atol=1e-6)

    renorm = MoLELayer(experts, MoLEConfig(top_k=1, capacity_factor=None), router=FixedRouter(weight))
    out = renorm(x)
    for t in range(29):
        torch.testing.assert_close(
            out[t], experts[names[int(chosen[t])]](x[t : t + 1])[0], rtol=1e-5, atol=1e-6
        )


def test_top2_renormalised_mixture_and_always_on_shared_expert():
    experts = _three()
    shared = _mlp("swiglu", seed=9)
    routed = {"ko": experts["ko"], "en": experts["en"], "x": experts["shared"]}
    weight = torch.randn(DIM, 3)
    layer = MoLELayer(routed, MoLEConfig(top_k=2), shared_expert=shared, router=FixedRouter(weight)).eval()
    x = torch.randn(2, 5, DIM)
    out = layer(x)
    flat = x.reshape(-1, DIM)
    probs = torch.softmax(flat @ weight, dim=-1)
    modules = list(routed.values())
    for t in range(flat.shape[0]):
        top = probs[t].topk(2)
        w = top.values / top.values.sum()
        expected = shared(flat[t]) + sum(w[s] * modules[int(top.indices[s])](flat[t]) for s in range(2))
        torch.testing.assert_close(out.reshape(-1, DIM)[t], expected, rtol=1e-5, atol=1e-6)


def test_capacity_one_expert_processes_exactly_capacity_tokens():
    experts = {name: Counting(m) for name, m in _three().items()}
    weight = torch.zeros(DIM, 3)
    router = FixedRouter(weight)
    router.forward = lambda x: torch.tensor([0.0, 50.0, 0.0]).expand(x.shape[0], 3)
    layer = MoLELayer(experts, MoLEConfig(top_k=1, capacity_factor=1.0), router=router).train()
    num_tokens = 20
    x = torch.randn(num_tokens, DIM)
    out = layer(x)
    capacity = math.ceil(num_tokens / 3 * 1.0)
    assert capacity == 7
    processed = torch.cat(experts["en"].rows)
    assert processed.shape[0] == capacity
    assert experts["ko"].rows == [] and experts["shared"].rows == []
    # Positional rule: the first `capacity` tokens are processed, the rest pass through (MoLE output 0).
    torch.testing.assert_close(processed, x[:capacity])
    torch.testing.assert_close(out[:capacity], experts["en"].inner(x[:capacity]), rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(out[capacity:]) == 0
    stats = layer.stats()
    assert stats.tokens_per_expert == [0, num_tokens, 0]
    assert stats.dropped_fraction == pytest.approx((num_tokens - capacity) / num_tokens)

    layer.eval()  # dropless by default at inference
    for m in experts.values():
        m.rows.clear()
    layer(x)
    assert torch.cat(experts["en"].rows).shape[0] == num_tokens


def test_gradients_reach_router_and_experts_and_frozen_experts_stay_frozen():
    layer = MoLELayer(_three(), MoLEConfig(top_k=2, z_loss_weight=1e-3)).train()
    layer.freeze_experts(["en"])
    frozen_before = {k: v.clone() for k, v in layer.experts["en"].state_dict().items()}
    ko_before = {k: v.clone() for k, v in layer.experts["ko"].state_dict().items()}
    optimizer = torch.optim.AdamW(
        [p for p in layer.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1
    )
    x = torch.randn(4, 9, DIM)
    loss = layer(x).square().mean() + collect_aux_loss(layer)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.router.parameters())
    for name in ("ko", "shared"):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.experts[name].parameters())
    assert all(p.grad is None and not p.requires_grad for p in layer.experts["en"].parameters())
    optimizer.step()
    for k, v in layer.experts["en"].state_dict().items():
        assert torch.equal(v, frozen_before[k])
    assert any(not torch.equal(v, ko_before[k]) for k, v in layer.experts["ko"].state_dict().items())


def test_top1_renormalised_router_learns_from_aux_loss():
    layer = MoLELayer(_three(), MoLEConfig(top_k=1)).train()
    layer(torch.randn(12, DIM))
    layer.aux_loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.router.parameters())


def test_mask_changes_losses_and_stats_not_output():
    layer = MoLELayer(_three(), MoLEConfig(capacity_factor=None)).train()
    x = torch.randn(2, 6, DIM)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 3:] = 0
    out_plain = layer(x)
    lb_plain = layer.aux_losses["load_balancing"]
    layer.reset_stats()
    out_masked = layer(x, token_mask=mask)
    assert torch.equal(out_plain, out_masked)
    assert not torch.isclose(layer.aux_losses["load_balancing"], lb_plain)
    assert layer.stats().num_tokens == 9
    # A mask longer than the sequence (KV-cache generation) is aligned on its last positions.
    layer.set_routing_context(token_mask=torch.cat([torch.ones(2, 4), mask], dim=1))
    layer.reset_stats()
    layer(x)
    assert layer.stats().num_tokens == 9
    layer.clear_routing_context()


def test_router_stats_match_reference():
    weight = torch.randn(DIM, 3)
    layer = MoLELayer(_three(), MoLEConfig(top_k=1, capacity_factor=None), router=FixedRouter(weight)).eval()
    x = torch.randn(2, 10, DIM)
    labels = torch.randint(-1, 3, (2, 10))
    labels[labels == -1] = -100
    layer(x[:1], language_labels=labels[:1])
    layer(x[1:], language_labels=labels[1:])
    stats = router_stats(layer, reset=True)[""]
    probs = torch.softmax(x.reshape(-1, DIM) @ weight, dim=-1).double()
    chosen = probs.argmax(-1)
    assert stats.num_tokens == 20
    assert stats.tokens_per_expert == [int((chosen == e).sum()) for e in range(3)]
    entropy = float(-(probs * probs.log()).sum(-1).mean())
    assert stats.entropy == pytest.approx(entropy, rel=1e-5)
    flat_labels = labels.reshape(-1)
    table = [[int(((flat_labels == lang) & (chosen == e)).sum()) for e in range(3)] for lang in range(3)]
    assert stats.language_confusion == table
    assert stats.to_dict("L16/")["L16/tokens/ko"] == stats.tokens_per_expert[0]
    assert layer.stats().num_tokens == 0  # reset


def test_bad_construction_raises_clear_errors():
    with pytest.raises(MoLEError, match="top_k=2"):
        MoLELayer({"ko": _mlp("swiglu")}, MoLEConfig(top_k=2))
    with pytest.raises(MoLEError, match="cannot be a module name"):
        MoLELayer({"k.o": _mlp("swiglu")}, MoLEConfig(top_k=1))
    with pytest.raises(MoLEError, match="top_k"):
        MoLEConfig(top_k=3)
    with pytest.raises(MoLEError, match="capacity_factor"):
        MoLEConfig(capacity_factor=0)
    with pytest.raises(MoLEError, match="hidden_size"):
        MoLELayer({"a": nn.GELU(), "b": nn.GELU()})
    layer = MoLELayer(_three(), router=FixedRouter(torch.randn(DIM, 2)))
    with pytest.raises(MoLEError, match="router returned logits"):
        layer(torch.randn(3, DIM))
    with pytest.raises(MoLEError, match="token_mask"):
        _three_layer = MoLELayer(_three())
        _three_layer(torch.randn(2, 5, DIM), token_mask=torch.ones(3, 5))
