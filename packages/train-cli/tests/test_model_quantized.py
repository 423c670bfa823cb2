"""`model.lm.quantize=nf4` (seed 004 QLoRA): the LM loads 4-bit NF4 through bitsandbytes, computes as its
dequantised weights, trains LoRA only, saves and reloads; without a working bitsandbytes it is refused early."""

import importlib.util
import os

import pytest
import torch

from tbi_train.config import apply_overrides, get_preset
from tbi_train.errors import TrainError
from tbi_train.model import build_tokenizer, build_vlm, load_vlm, save_vlm
from tbi_train.model.lm import check_quantization
from tbi_train.train import build_optimizer, set_trainable, token_loss_sum

os.environ.setdefault("HF_HUB_OFFLINE", "1")

NF4 = ["model.lm.quantize=nf4", "model.lm.num_layers=2", "model.peft.lm.dropout=0"]


def _batch(vlm, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, len(vlm.tokenizer), (2, 20), generator=g)
    ids[:, 2 : 2 + vlm.tokens_per_image] = vlm.image_pad_id
    labels = ids.clone()
    labels[:, : 2 + vlm.tokens_per_image] = -100
    pixels = torch.randn(2, 3, 64, 64, generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}, labels


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    torch.set_num_threads(1)
    cfg = apply_overrides(get_preset("tiny"), NF4)
    tokenizer = build_tokenizer(cfg.model.tokenizer, None, tmp_path_factory.mktemp("tok"), ["빨간색 red"])
    torch.manual_seed(0)
    quantized = build_vlm(cfg.model, tokenizer=tokenizer).eval()
    torch.manual_seed(0)  # same draws: the float LM the quantised one was made from
    plain = build_vlm(apply_overrides(cfg, ["model.lm.quantize=none"]).model, tokenizer=tokenizer).eval()
    return cfg, quantized, plain


def _linear4bit_layers(vlm):
    from bitsandbytes.nn import Linear4bit

    return {n: m for n, m in vlm.lm.named_modules() if isinstance(m, Linear4bit)}


def test_nf4_lm_computes_as_its_dequantised_weights(built):
    from bitsandbytes.functional import dequantize_4bit

    _, quantized, plain = built
    layers = _linear4bit_layers(quantized)
    assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down per decoder layer
    for layer in layers.values():
        assert layer.weight.dtype == torch.uint8 and layer.weight.quant_state.quant_type == "nf4"
        assert layer.weight.quant_state.nested  # double quantisation
    # Reference: the float LM with every quantised weight replaced by its NF4 round trip.
    batch, _ = _batch(quantized)
    with torch.no_grad():
        unquantised = plain(**batch)
        for name, layer in layers.items():
            target = plain.lm.get_submodule(name.removesuffix(".base_layer"))
            target = getattr(target, "base_layer", target)
            w = target.weight
            assert (
                dequantize_4bit(layer.weight.data, layer.weight.quant_state) - w
            ).abs().max() < 0.2 * w.abs().max()
            w.copy_(dequantize_4bit(layer.weight.data, layer.weight.quant_state))
        got = quantized(**batch)
        torch.testing.assert_close(got, plain(**batch), atol=1e-4, rtol=1e-4)
        assert (got - unquantised).abs().max() > 0.1  # NF4 is visibly not the float model


def test_qlora_step_trains_adapters_and_keeps_the_4bit_base(built):
    cfg, quantized, _ = built
    phase = cfg.phases[2]  # lm_lora (+ projector)
    assert "lm" not in phase.trainable and "lm_lora" in phase.trainable
    groups = quantized.parameter_groups()
    set_trainable(groups, phase)
    opt = build_optimizer(groups, phase, cfg.optim)
    packed = {n: m.weight.data.clone() for n, m in _linear4bit_layers(quantized).items()}
    lora_b = {n: p.detach().clone() for n, p in quantized.lm.named_parameters() if "lora_B" in n}
    quantized.train()
    batch, labels = _batch(quantized, seed=1)
    losses = []
    for _ in range(3):
        loss = token_loss_sum(quantized(**batch), labels) / int((labels[:, 1:] != -100).sum())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    quantized.eval()
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert any(not torch.equal(p, lora_b[n]) for n, p in quantized.lm.named_parameters() if "lora_B" in n)
    for name, layer in _linear4bit_layers(quantized).items():
        assert torch.equal(layer.weight.data, packed[name]) and not layer.weight.requires_grad


def test_nf4_vlm_saves_and_reloads_exactly(built, tmp_path):
    _, quantized, _ = built
    batch, _ = _batch(quantized, seed=2)
    save_vlm(quantized, tmp_path / "m")
    with torch.no_grad():
        expected = quantized(**batch)
    reloaded = load_vlm(tmp_path / "m")
    assert len(_linear4bit_layers(reloaded)) == 14
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch), expected, rtol=0, atol=0)


def test_missing_bitsandbytes_is_refused_before_the_run_starts(monkeypatch, tmp_path):
    from tbi_train.train import train

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a)
    )
    cfg = apply_overrides(get_preset("tiny"), NF4)
    with pytest.raises(
        TrainError, match=r"quantize=nf4 needs bitsandbytes.*pip install 'tbi-train\[qlora\]'"
    ):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before any folder or model was made


def test_a_device_bitsandbytes_cannot_quantise_on_is_named(monkeypatch):
    import bitsandbytes.functional

    def no_backend(*args, **kwargs):
        raise NotImplementedError("no kernel registered for this device")

    monkeypatch.setattr(bitsandbytes.functional, "quantize_4bit", no_backend)
    cfg = apply_overrides(get_preset("tiny"), NF4)
    with pytest.raises(TrainError, match=r"cannot quantise to NF4 on device cpu.*no kernel registered"):
        check_quantization(cfg)


def test_training_the_4bit_base_is_refused():
    cfg = apply_overrides(get_preset("tiny"), [*NF4, "phases.2.trainable=[lm]", "phases.2.lr.lm=1e-5"])
    with pytest.raises(TrainError, match=r"trains 'lm'.*4 bits.*lm_lora"):
        check_quantization(cfg)
    check_quantization(apply_overrides(get_preset("tiny"), NF4))  # the tiny preset's QLoRA phases pass
