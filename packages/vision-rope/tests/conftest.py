"""Independent float64 references for the vision-rope tests (naive formulas, dense masks)."""

import pytest
import torch


def _rotate_naive(x, pos_h, pos_w, freq_h, freq_w, layout):
    """Pair-by-pair 2x2 rotation in float64, written without any vectorised trick."""
    pairs = x.shape[-1] // 2
    out = x.double().clone()
    for j in range(pairs):
        a_idx, b_idx = (j, j + pairs) if layout == "half" else (2 * j, 2 * j + 1)
        theta = (
            pos_h.double()[:, None] * freq_h.double()[None, :, j]
            + pos_w.double()[:, None] * freq_w.double()[None, :, j]
        )
        a, b = x.double()[:, :, a_idx], x.double()[:, :, b_idx]
        out[:, :, a_idx] = a * torch.cos(theta) - b * torch.sin(theta)
        out[:, :, b_idx] = a * torch.sin(theta) + b * torch.cos(theta)
    return out


def _attention_naive(q, k, v, allowed, scale=None):
    """Dense masked softmax attention in float64; ``allowed: [T, T]`` bool."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = torch.einsum("ihd,jhd->hij", q.double(), k.double()) * scale
    logits = logits.masked_fill(~allowed[None], float("-inf"))
    return torch.einsum("hij,jhd->ihd", logits.softmax(-1), v.double())


def _contract_reference(q, k, v, seq_id, pos_h, pos_w, freq_h, freq_w, window, rope_layout, scale=None):
    """The kernel primitive of CONTRACTS.md, computed densely in float64."""
    same = seq_id[:, None] == seq_id[None, :]
    if window:
        same &= (pos_h[:, None] // window == pos_h[None, :] // window) & (
            pos_w[:, None] // window == pos_w[None, :] // window
        )
    qr = _rotate_naive(q, pos_h, pos_w, freq_h, freq_w, rope_layout)
    kr = _rotate_naive(k, pos_h, pos_w, freq_h, freq_w, rope_layout)
    return _attention_naive(qr, kr, v, same, scale)


@pytest.fixture
def rotate_naive():
    return _rotate_naive


@pytest.fixture
def attention_naive():
    return _attention_naive


@pytest.fixture
def contract_reference():
    return _contract_reference
