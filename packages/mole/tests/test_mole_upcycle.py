"""Upcycling a tiny random Qwen2 from three safetensors checkpoints; training loss; save/load round trip."""

import json
import os
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

import tbi_mole.checkpoint
from tbi_mole import (
    MoLEConfig,
    MoLEError,
    MoLELayer,
    collect_aux_loss,
    detach_hooks,
    load_mole,
    router_stats,
    upcycle,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LAYERS = [1, 3]
VOCAB = 96


def _config(intermediate=48):
    return Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=intermediate,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )


def _model(seed):
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(_config()).eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Three fine-tunes of the same architecture with different weights: ko (seed 1), en (seed 0), shared (seed 2)."""
    root = tmp_path_factory.mktemp("ckpts")
    paths = {}
    for name, seed in (("ko", 1), ("en", 0), ("shared", 2)):
        paths[name] = root / name
        _model(seed).save_pretrained(paths[name])
    return paths


def _ids(seed=0, batch=2, length=9):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=gen)


class _SpyOpen:
    """Stands in for safetensors.safe_open and records every tensor key read."""

    def __init__(self, real, log):
        self.real, self.log = real, log

    def __call__(self, *args, **kwargs):
        handle = self.real(*args, **kwargs)
        log = self.log

        class Handle:
            def __enter__(self):
                self.inner = handle.__enter__()
                return self

            def __exit__(self, *exc):
                return handle.__exit__(*exc)

            def keys(self):
                return self.inner.keys()

            def get_tensor(self, key):
                log.append(key)
                return self.inner.get_tensor(key)

        return Handle()


def test_upcycle_loads_only_the_needed_tensors_and_keeps_every_other_weight(checkpoints, monkeypatch):
    base = _model(5)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    read: list[str] = []
    monkeypatch.setattr(tbi_mole.checkpoint, "safe_open", _SpyOpen(tbi_mole.checkpoint.safe_open, read))
    upcycle(base, LAYERS, {name: checkpoints[name] for name in ("ko", "en", "shared")})

    per_file = 3 * len(LAYERS)  # gate/up/down of each converted layer
    assert len(read) == 3 * per_file
    assert all(any(k.startswith(f"model.layers.{i}.mlp.") for i in LAYERS) for k in read)

    sources = {name: _model(seed).state_dict() for name, seed in (("ko", 1), ("en", 0), ("shared", 2))}
    after = base.state_dict()
    for i in LAYERS:
        assert isinstance(base.model.layers[i].mlp, MoLELayer)
        for name in sources:
            for proj in ("gate_proj", "up_proj", "down_proj"):
                got = after[f"model.layers.{i}.mlp.experts.{name}.{proj}.weight"]
                assert torch.equal(got, sources[name][f"model.layers.{i}.mlp.{proj}.weight"])
    kept = [k for k in before if not any(k.startswith(f"model.layers.{i}.mlp.") for i in LAYERS)]
    assert len(kept) > 20
    for key in kept:
        assert torch.equal(after[key], before[key]), key


@pytest.mark.parametrize("top_k", [1, 2])
def test_identical_experts_dropless_reproduce_the_dense_logits(checkpoints, top_k):
    dense = _model(0)
    ids = _ids()
    reference = dense(ids).logits
    model = upcycle(
        _model(0),
        LAYERS,
        {"ko": checkpoints["en"], "en": checkpoints["en"], "shared": checkpoints["en"]},
        MoLEConfig(top_k=top_k, capacity_factor=None),
    )
    with torch.no_grad():  # whatever the router does
        for i in LAYERS:
            for p in model.model.layers[i].mlp.router.parameters():
                p.normal_(0, 5.0)
    assert all(s.num_tokens == 0 for s in router_stats(model).values())  # nothing routed yet
    torch.testing.assert_close(model(ids).logits, reference, rtol=1e-5, atol=2e-5)
    used = [sum(1 for c in s.tokens_per_expert if c) for s in router_stats(model).values()]
    assert max(used) > 1  # the router really spread tokens over several experts
    model.train()  # still dropless: capacity_factor=None
    torch.testing.assert_close(model(ids).logits, reference, rtol=1e-5, atol=2e-5)


def test_training_loss_includes_aux_loss_and_trains_router_and_unfrozen_experts(checkpoints):
    model = upcycle(
        _model(0),
        LAYERS,
        {"ko": checkpoints["ko"], "en": _model(0), "shared": checkpoints["shared"]},
        MoLEConfig(z_loss_weight=1e-3),
        freeze=["en"],
    ).train()
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    out = model(ids, attention_mask=mask, labels=labels)
    lm = F.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
    aux = collect_aux_loss(model)
    assert float(aux.detach()) > 0.01 * len(LAYERS) * 0.9  # load balancing is near 1 per layer, weight 0.01
    torch.testing.assert_close(out.loss, lm + aux)
    assert {s.num_tokens for s in router_stats(model, reset=True).values()} == {15}  # padding left out

    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".experts.en." in k}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out.loss.backward()
    for i in LAYERS:
        mole = model.model.layers[i].mlp
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mole.router.parameters())
        assert all(p.grad is not None for name in ("ko", "shared") for p in mole.experts[name].parameters())
        assert all(p.grad is None for p in mole.experts["en"].parameters())
    optimizer.step()
    for key, value in model.state_dict().items():
        if key in frozen:
            assert torch.equal(value, frozen[key])

    model.eval()
    out = model(ids, attention_mask=mask, labels=labels)
    lm = F.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, lm)  # no aux term outside training

    detach_hooks(model)
    model.train()
    out = model(ids, attention_mask=mask, labels=labels)
    lm = F.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, lm)  # hooks gone: plain loss


def test_language_labels_reach_the_router_through_the_model_call(checkpoints):
    table = torch.arange(VOCAB) % 3  # stands in for token_language_table(tokenizer)
    model = upcycle(
        _model(0),
        LAYERS,
        {"ko": checkpoints["ko"], "en": checkpoints["en"], "shared": checkpoints["shared"]},
        MoLEConfig(language_loss_weight=0.5, top_k=1),
        language_table=table,
    ).train()
    ids = _ids(length=12)
    model(ids, labels=ids)
    for name, stats in router_stats(model, reset=True).items():
        confusion = torch.tensor(stats.language_confusion)
        assert confusion.sum(dim=1).tolist() == [int((table[ids] == lang).sum()) for lang in range(3)], name
    assert all("language" in layer.aux_losses for layer in (model.model.layers[i].mlp for i in LAYERS))
    explicit = torch.zeros_like(ids)  # every token labelled Korean
    model(ids, labels=ids, mole_language_labels=explicit)
    for stats in router_stats(model).values():
        assert sum(stats.language_confusion[0]) == ids.numel()


def test_generate_runs_with_kv_cache(checkpoints):
    model = upcycle(
        _model(0), LAYERS, {"ko": checkpoints["ko"], "en": checkpoints["en"]}, MoLEConfig(top_k=1)
    )
    out = model.generate(
        _ids(batch=1, length=4), max_new_tokens=3, do_sample=False, attention_mask=torch.ones(1, 4)
    )
    assert out.shape == (1, 7)


@pytest.mark.parametrize("shared_expert,shard", [(None, None), ("shared", "20KB")])
def test_save_pretrained_and_load_mole_round_trip_exactly(checkpoints, tmp_path, shared_expert, shard):
    model = upcycle(
        _model(0),
        LAYERS,
        {"ko": checkpoints["ko"], "en": checkpoints["en"], "shared": checkpoints["shared"]},
        MoLEConfig(router_type="mlp", top_k=1 if shared_expert else 2, language_loss_weight=0.1),
        shared_expert=shared_expert,
        freeze=["en"],
    )
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(tmp_path / "mole", **kwargs)
    if shard:
        assert (tmp_path / "mole" / "model.safetensors.index.json").is_file()
    meta = json.loads((tmp_path / "mole" / "config.json").read_text())["tbi_mole"]
    assert meta["layers"] == LAYERS and meta["experts"] == ["ko", "en", "shared"]
    assert meta["shared_expert"] == shared_expert

    loaded = load_mole(tmp_path / "mole")
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
    for i in LAYERS:
        a, b = model.model.layers[i].mlp, loaded.model.layers[i].mlp
        assert a.config == b.config and a.expert_names == b.expert_names
        assert (b.shared_expert is not None) == (shared_expert is not None)
        assert all(not p.requires_grad for p in b.experts["en"].parameters())
    ids = _ids()
    assert torch.equal(model.eval()(ids).logits, loaded.eval()(ids).logits)
    out = loaded.train()(ids, labels=ids)  # the loaded model has the aux-loss hook too
    assert float(collect_aux_loss(loaded).detach()) > 0 and out.loss.requires_grad


def test_checkpoint_saved_under_another_prefix_is_found(checkpoints, tmp_path):
    state = {f"language_model.{k}": v.contiguous() for k, v in _model(1).state_dict().items()}
    save_file(state, tmp_path / "vlm.safetensors")
    model = upcycle(
        _model(0), LAYERS, {"ko": tmp_path / "vlm.safetensors", "en": checkpoints["en"]}, MoLEConfig(top_k=1)
    )
    expected = _model(1).model.layers[1].mlp.up_proj.weight
    assert torch.equal(model.model.layers[1].mlp.experts["ko"].up_proj.weight, expected)


def test_errors_name_the_problem(checkpoints, tmp_path):
    experts = {"ko": checkpoints["ko"], "en": checkpoints["en"]}
    with pytest.raises(MoLEError, match="no safetensors checkpoint"):
        upcycle(_model(0), LAYERS, {"ko": tmp_path / "nowhere", "en": checkpoints["en"]})
    with pytest.raises(MoLEError, match="layer 9 does not exist"):
        upcycle(_model(0), [9], experts)
    with pytest.raises(MoLEError, match="not one of"):
        upcycle(_model(0), LAYERS, experts, shared_expert="shared")
    torch.manual_seed(0)
    Qwen2ForCausalLM(_config(intermediate=40)).save_pretrained(tmp_path / "other")
    with pytest.raises(MoLEError, match=r"model\.layers\.1\.mlp\.gate_proj\.weight.*shape"):
        upcycle(_model(0), LAYERS, {"ko": tmp_path / "other", "en": checkpoints["en"]})
    save_file({"lm_head.weight": torch.zeros(2, 2)}, tmp_path / "partial.safetensors")
    with pytest.raises(MoLEError, match=re.escape("partial.safetensors: no tensor 'model.layers.1.mlp")):
        upcycle(_model(0), LAYERS, {"ko": tmp_path / "partial.safetensors", "en": checkpoints["en"]})
    model = upcycle(_model(0), LAYERS, experts, MoLEConfig(top_k=1))
    with pytest.raises(MoLEError, match="already upcycled"):
        upcycle(model, [0], experts)
    with pytest.raises(MoLEError, match="not an upcycled checkpoint"):
        load_mole(checkpoints["ko"])


def test_gradient_checkpointing_gives_the_same_loss_and_gradients_and_counts_tokens_once(checkpoints):
    def build():
        torch.manual_seed(11)
        return upcycle(
            _model(0), LAYERS, {"ko": checkpoints["ko"], "en": checkpoints["en"]}, MoLEConfig(top_k=1)
        ).train()

    ids = _ids()
    plain, ckpt = build(), build()
    ckpt.activation_checkpointing_enable()
    assert ckpt.is_activation_checkpointing
    losses = []
    for model in (plain, ckpt):
        loss = model(ids, labels=ids).loss
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1])
    router_grads = [m.model.layers[1].mlp.router.proj[0].weight.grad for m in (plain, ckpt)]
    torch.testing.assert_close(router_grads[0], router_grads[1])
    assert {s.num_tokens for s in router_stats(ckpt).values()} == {ids.numel()}


def test_deepcopy_of_an_upcycled_model_keeps_its_own_hooks(checkpoints):
    import copy

    model = upcycle(
        _model(0), LAYERS, {"ko": checkpoints["ko"], "en": checkpoints["en"]}, MoLEConfig(top_k=1)
    )
    twin = copy.deepcopy(model).train()
    ids = _ids()
    out = twin(ids, labels=ids)
    assert float(collect_aux_loss(twin).detach()) > 0
    assert all(layer.aux_loss is None for layer in (model.model.layers[i].mlp for i in LAYERS))
    assert out.loss.requires_grad


def test_gpt2_style_model_is_found_and_identity_holds():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=32)
    ).eval()
    ids = _ids()
    reference = gpt2(ids).logits
    upcycle(gpt2, [0, 2], {"ko": gpt2, "en": gpt2}, MoLEConfig(top_k=1, capacity_factor=None))
    assert isinstance(gpt2.transformer.h[2].mlp, MoLELayer)
    assert gpt2.config.tbi_mole["layers_path"] == "transformer.h"
    torch.testing.assert_close(gpt2(ids).logits, reference, rtol=1e-5, atol=2e-5)


def test_bfloat16_model_round_trip_keeps_dtypes_and_values(checkpoints, tmp_path):
    model = _model(0).to(torch.bfloat16)
    upcycle(model, LAYERS, {"ko": checkpoints["ko"], "en": model}, MoLEConfig(top_k=1))
    mole = model.model.layers[1].mlp
    assert mole.experts["ko"].up_proj.weight.dtype == torch.bfloat16
    assert next(mole.router.parameters()).dtype == torch.float32  # router kept in float32
    expected = _model(1).model.layers[1].mlp.up_proj.weight.to(torch.bfloat16)
    assert torch.equal(mole.experts["ko"].up_proj.weight, expected)
    model.save_pretrained(tmp_path / "bf16")
    loaded = load_mole(tmp_path / "bf16")
    for key, value in model.state_dict().items():
        restored = loaded.state_dict()[key]
        assert restored.dtype == value.dtype and torch.equal(restored, value), key


def test_peft_lora_on_an_upcycled_model_trains_the_routers_with_modules_to_save(checkpoints):
    from peft import LoraConfig, get_peft_model

    model = upcycle(
        _model(0), LAYERS, {"ko": checkpoints["ko"], "en": checkpoints["en"]}, MoLEConfig(top_k=1)
    )
    lora = LoraConfig(
        r=4, target_modules=["q_proj", "gate_proj", "up_proj", "down_proj"], modules_to_save=["router"]
    )
    peft_model = get_peft_model(model, lora).train()
    ids = _ids()
    out = peft_model(input_ids=ids, labels=ids)
    lm = F.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, lm + collect_aux_loss(peft_model))
    out.loss.backward()
    trained = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any(".mlp.router.modules_to_save." in n and p.grad is not None for n, p in trained.items())
    assert any(".mlp.experts.ko.up_proj.lora_A." in n and p.grad is not None for n, p in trained.items())
