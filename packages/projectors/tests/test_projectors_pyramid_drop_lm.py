"""The in-LM PyramidDrop pieces against per-sample reference loops (the original implementation's shape)."""

import math

import pytest
import torch

from tbi_projectors import (
    ProjectorError,
    PyramidDropHook,
    PyramidDropLMConfig,
    keep_counts,
    last_instruction_attention,
    rank_and_drop,
)

F64 = torch.float64


def test_keep_counts_are_floor_n_lambda_s():
    n = torch.tensor([576, 100, 7])
    assert [keep_counts(n, s, 0.5).tolist() for s in (1, 2, 3)] == [[288, 50, 3], [144, 25, 1], [72, 12, 0]]
    assert keep_counts(torch.tensor([10]), 1, 0.3).tolist() == [3]


def test_last_instruction_attention_against_naive_loop(gen):
    b, h, hkv, length, d = 3, 4, 2, 9, 5
    q = torch.randn(b, h, length, d, generator=gen, dtype=F64)
    k = torch.randn(b, hkv, length, d, generator=gen, dtype=F64)
    qi = torch.tensor([8, 5, 6])
    mask = torch.ones(b, length, dtype=torch.long)
    mask[2, 7:] = 0
    mask[1, 0] = 0
    out = last_instruction_attention(q, k, qi, mask)
    for bi in range(b):
        ref = torch.zeros(length, dtype=F64)
        for hi in range(h):
            allowed = [j for j in range(length) if j <= qi[bi] and mask[bi, j]]
            logits = torch.stack([q[bi, hi, qi[bi]] @ k[bi, hi // 2, j] / math.sqrt(d) for j in allowed])
            ref[allowed] += torch.softmax(logits, 0) / h
        torch.testing.assert_close(out[bi], ref)


def _reference_drop(hidden, scores, image, keep, mask):
    """Per-sample loop: keep text, top-``keep`` image tokens by score, in order; pad on the right."""
    rows, positions = [], []
    for b in range(hidden.shape[0]):
        img = [i for i in range(hidden.shape[1]) if image[b, i] and mask[b, i]]
        top = set(sorted(img, key=lambda i: -float(scores[b, i]))[: int(keep[b])])
        pos = [i for i in range(hidden.shape[1]) if mask[b, i] and (not image[b, i] or i in top)]
        positions.append(pos)
        rows.append(hidden[b, pos])
    return rows, positions


def test_rank_and_drop_matches_reference_loop(gen):
    b, length, d = 3, 14, 4
    hidden = torch.randn(b, length, d, generator=gen)
    scores = torch.rand(b, length, generator=gen)
    image = torch.zeros(b, length, dtype=torch.bool)
    image[0, 2:10] = True  # 8 image tokens
    image[1, 1:5] = True  # 4
    image[2, 3:12] = True  # 9, then padding
    mask = torch.ones(b, length, dtype=torch.long)
    mask[2, 12:] = 0
    keep = torch.tensor([4, 2, 4])
    res = rank_and_drop(hidden, scores, image, keep, mask)
    rows, positions = _reference_drop(hidden, scores, image, keep, mask)
    assert res.hidden_states.shape == (b, max(len(p) for p in positions), d)
    for i in range(b):
        n = len(positions[i])
        assert res.positions[i, :n].tolist() == positions[i]
        assert (res.positions[i, n:] == -1).all() and (res.attention_mask[i, n:] == 0).all()
        assert res.attention_mask[i, :n].all()
        torch.testing.assert_close(res.hidden_states[i, :n], rows[i])
        assert (res.hidden_states[i, n:] == 0).all()
        assert int(res.image_mask[i].sum()) == int(keep[i])


def test_hook_runs_three_stages_and_tracks_positions(gen):
    b, length, d, h = 2, 40, 3, 2
    image = torch.zeros(b, length, dtype=torch.bool)
    image[0, 5:37] = True  # 32 image tokens
    image[1, 2:22] = True  # 20
    query_index = torch.tensor([39, 30])
    hidden = torch.randn(b, length, d, generator=gen)
    hidden[..., 0] = torch.arange(length, dtype=torch.float)  # each token carries its original position
    hook = PyramidDropHook(PyramidDropLMConfig(layers=(2, 4, 6), ratio=0.5))
    hook.start(image, query_index)
    mask = torch.ones(b, length, dtype=torch.long)
    for layers_done in range(1, 8):
        if not hook.is_drop_layer(layers_done):
            continue
        cur = hidden.shape[1]
        q = torch.randn(b, h, cur, 4, generator=gen)
        k = torch.randn(b, h, cur, 4, generator=gen)
        res = hook.after_layer(layers_done, hidden, q, k, mask)
        hidden, mask = res.hidden_states, res.attention_mask
        stage = (2, 4, 6).index(layers_done) + 1
        assert res.image_mask.sum(1).tolist() == [32 // 2**stage, 20 // 2**stage]
        for i in range(b):
            valid = hook.original_positions[i][mask[i].bool()]
            assert (valid.diff() > 0).all(), "order must be preserved"
            torch.testing.assert_close(hidden[i, : len(valid), 0], valid.float())
            assert int(hook.original_positions[i, hook.query_index[i]]) == int(query_index[i])
    assert hidden.shape[1] == max(40 - 32 + 4, 31 - 20 + 2 + 9)


def test_hook_ranks_by_the_query_tokens_attention():
    b, length = 1, 10
    image = torch.zeros(b, length, dtype=torch.bool)
    image[0, 1:9] = True
    hook = PyramidDropHook(PyramidDropLMConfig(layers=(1,), ratio=0.25))
    hook.start(image, torch.tensor([9]))
    k = torch.zeros(1, 1, length, 2)
    k[0, 0, [3, 7], 0] = 5.0  # positions 3 and 7 are the ones the query looks at
    q = torch.zeros(1, 1, length, 2)
    q[0, 0, 9, 0] = 1.0
    res = hook.after_layer(1, torch.randn(1, length, 4), q, k)
    assert res.positions[0].tolist() == [0, 3, 7, 9]


def test_hook_errors():
    hook = PyramidDropHook()
    with pytest.raises(ProjectorError, match="before start"):
        hook.after_layer(8, torch.zeros(1, 3, 2), torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2))
    image = torch.tensor([[False, True, False]])
    with pytest.raises(ProjectorError, match="points at an image token"):
        hook.start(image, torch.tensor([1]))
    hook.start(image, torch.tensor([2]))
    with pytest.raises(ProjectorError, match="not a drop layer"):
        hook.after_layer(3, torch.zeros(1, 3, 2), torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2))
    with pytest.raises(ProjectorError, match="ratio"):
        PyramidDropLMConfig(ratio=0.0)
    with pytest.raises(ProjectorError, match="increasing"):
        PyramidDropLMConfig(layers=(16, 8))
