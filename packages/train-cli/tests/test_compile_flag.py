"""`compile=true` / `--compile`: torch.compile of the LM and tower gives eager's loss and gradients, keeps the
weights' names, and falls back to eager with a message when compilation fails."""

import logging
import os

import pytest
import torch

from tbi_train.config import apply_overrides, get_preset
from tbi_train.model import build_vlm
from tbi_train.model.compile import compile_vlm
from tbi_train.train import token_loss_sum

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _tiny(tmp_path):
    """The tiny preset cut to one tower and one LM layer (compile time grows with depth) without LoRA
    dropout (eager and compiled code draw different random masks)."""
    torch.manual_seed(0)
    overrides = ["model.lm.num_layers=1", "model.vision.num_layers=1", "model.peft.lm.dropout=0"]
    cfg = apply_overrides(get_preset("tiny"), overrides)
    vlm = build_vlm(cfg.model, cache_dir=tmp_path, corpus=["빨간색 red 파란색 blue"])
    m = vlm.tokens_per_image
    ids = torch.randint(10, len(vlm.tokenizer), (2, 24))
    ids[:, 2 : 2 + m] = vlm.image_pad_id
    labels = ids.clone()
    labels[:, : 2 + m] = -100
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(2, 3, 64, 64),
    }
    return vlm, batch, labels


def _step(vlm, batch, labels):
    """Loss and gradients of one training forward/backward."""
    vlm.zero_grad(set_to_none=True)
    loss = token_loss_sum(vlm(**batch), labels) / int((labels[:, 1:] != -100).sum())
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in vlm.named_parameters() if p.grad is not None}


def test_compile_flag_resolves():
    assert apply_overrides(get_preset("tiny"), ["compile=true"]).compile is True
    assert get_preset("tiny").compile is False


@pytest.mark.slow
def test_compiled_step_equals_eager(tmp_path):
    torch.set_num_threads(1)
    vlm, batch, labels = _tiny(tmp_path)
    vlm.train()
    for p in vlm.parameters():
        p.requires_grad_(True)
    keys = list(vlm.state_dict())
    eager_loss, eager_grads = _step(vlm, batch, labels)
    assert compile_vlm(vlm) == ["lm", "vision"]
    loss, grads = _step(vlm, batch, labels)
    assert vlm.lm._compiled_call_impl is not None  # still compiled: no fallback happened
    assert loss == pytest.approx(eager_loss, abs=1e-5)
    assert grads.keys() == eager_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    assert list(vlm.state_dict()) == keys  # saving and checkpoints see the same names


def test_a_failing_compiler_falls_back_to_eager_with_a_message(tmp_path, caplog):
    vlm, batch, _ = _tiny(tmp_path)
    vlm.eval()
    with torch.no_grad():
        expected = vlm(**batch)

    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler here")

    compile_vlm(vlm, backend=broken_backend)
    with caplog.at_level(logging.WARNING, logger="tbi_train.model.compile"), torch.no_grad():
        got = vlm(**batch)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    text = caplog.text
    assert "torch.compile of the vision failed" in text and "no C++ compiler here" in text
    assert "runs eagerly" in text and "--compile" in text
    assert vlm.lm._compiled_call_impl is None and vlm.vision._compiled_call_impl is None
