"""Numerical checks against independent references (naive loops, float64, published layouts)."""

import math

import pytest
import torch
from torch import nn

from tbi_projectors import ProjectorError, build_projector, space_to_depth

F64 = torch.float64


@pytest.mark.parametrize(("grid", "factor"), [((5, 7), 2), ((4, 6), 2), ((7, 5), 3), ((1, 1), 2)])
def test_space_to_depth_against_index_formula(grid, factor, gen):
    h, w = grid
    x = torch.randn(2, h * w, 3, generator=gen, dtype=F64)
    out, (oh, ow) = space_to_depth(x, grid, factor)
    assert (oh, ow) == (math.ceil(h / factor), math.ceil(w / factor))
    for i in range(oh):
        for j in range(ow):
            for dy in range(factor):
                for dx in range(factor):
                    src = min(factor * i + dy, h - 1) * w + min(factor * j + dx, w - 1)
                    ch = (dy * factor + dx) * 3
                    assert torch.equal(out[:, i * ow + j, ch : ch + 3], x[:, src])


def test_space_to_depth_matches_internvl_pixel_shuffle_v2(gen):
    """InternVL: view(n, a, b/2, 2c) → permute → view(n, b/2, a/2, 4c) → permute (ps_version v2)."""
    n, a, b, c = 2, 6, 4, 5
    x = torch.randn(n, a, b, c, generator=gen)
    y = x.view(n, a, b // 2, 2 * c).permute(0, 2, 1, 3).contiguous()
    y = y.view(n, b // 2, a // 2, 4 * c).permute(0, 2, 1, 3).contiguous()
    ours, _ = space_to_depth(x.reshape(n, a * b, c), (a, b), 2)
    assert torch.equal(ours, y.reshape(n, (a // 2) * (b // 2), 4 * c))


def test_query_attn_equals_torch_multihead_attention(gen):
    proj = build_projector("query-attn", input_dim=6, output_dim=8, num_queries=3, heads=2).double()
    mha = nn.MultiheadAttention(8, 2, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([proj.q_proj.weight, proj.k_proj.weight, proj.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([proj.q_proj.bias, proj.k_proj.bias, proj.v_proj.bias]))
        mha.out_proj.weight.copy_(proj.out_proj.weight)
        mha.out_proj.bias.copy_(proj.out_proj.bias)
    x = torch.randn(2, 2, 5, 6, generator=gen, dtype=F64)  # a 2-frame video: keys are all 10 tokens
    out = proj(x, grid=(1, 5))
    kv = proj.input_proj(x.reshape(2, 10, 6))
    ref, weights = mha(proj.queries.expand(2, -1, -1), kv, kv, need_weights=True, average_attn_weights=True)
    torch.testing.assert_close(out.tokens, ref)
    torch.testing.assert_close(out.attention, weights)


def test_perceiver_against_naive_float64(gen):
    proj = build_projector(
        "perceiver", input_dim=6, output_dim=8, num_latents=3, depth=2, heads=2, dim_head=4
    ).double()
    x = torch.randn(2, 2, 5, 6, generator=gen, dtype=F64)
    out = proj(x, grid=(5, 1))

    def ln(v, m):
        return (v - v.mean(-1, keepdim=True)) / torch.sqrt(
            v.var(-1, unbiased=False, keepdim=True) + m.eps
        ) * m.weight + m.bias

    media = (proj.input_proj(x) + proj.frame_emb[:2]).reshape(2, 10, 8)
    lat = proj.latents.expand(2, -1, -1)
    for layer in proj.layers:
        xm, xl = ln(media, layer.norm_media), ln(lat, layer.norm_latents)
        q = xl @ layer.to_q.weight.T
        kv = torch.cat([xm, xl], 1) @ layer.to_kv.weight.T
        k, v = kv[..., :8], kv[..., 8:]
        heads = []
        for h in range(2):
            sl = slice(4 * h, 4 * h + 4)
            a = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / 2.0, dim=-1)
            heads.append(a @ v[..., sl])
        lat = lat + torch.cat(heads, -1) @ layer.to_out.weight.T
        lat = lat + layer.ff(lat)
    torch.testing.assert_close(out.tokens, ln(lat, proj.norm))


def test_multi_token_is_region_mean_then_projection(gen):
    proj = build_projector("multi-token", input_dim=3, output_dim=4, pool_grid=(2, 2)).double()
    x = torch.randn(1, 8 * 4, 3, generator=gen, dtype=F64)
    out = proj(x, grid=(8, 4))
    fmap = x.reshape(8, 4, 3)
    ref = torch.stack(
        [fmap[4 * i : 4 * i + 4, 2 * j : 2 * j + 2].mean((0, 1)) for i in range(2) for j in range(2)]
    )
    torch.testing.assert_close(out.tokens[0], proj.proj(ref))
    assert out.grid == (2, 2)


def test_ldp_is_mlp_pool_then_residual_depthwise_conv(gen):
    proj = build_projector("ldp", input_dim=3, output_dim=4, output_grid=(2, 2)).double()
    x = torch.randn(1, 6 * 4, 3, generator=gen, dtype=F64)
    out = proj(x, grid=(6, 4))
    y = proj.mlp(x)[0].reshape(6, 4, 4)
    pooled = torch.stack(
        [
            torch.stack([y[3 * i : 3 * i + 3, 2 * j : 2 * j + 2].mean((0, 1)) for j in range(2)])
            for i in range(2)
        ]
    )
    padded = torch.nn.functional.pad(pooled.permute(2, 0, 1), (1, 1, 1, 1))  # [D, 4, 4]
    w, bias = proj.peg.weight[:, 0], proj.peg.bias  # [D, 3, 3]
    ref = torch.stack(
        [
            pooled[i, j] + (padded[:, i : i + 3, j : j + 3] * w).sum((1, 2)) + bias
            for i in range(2)
            for j in range(2)
        ]
    )
    torch.testing.assert_close(out.tokens[0], ref)


def test_c_abstractor_layer_norm_2d_and_position_embedding(gen):
    proj = build_projector(
        "c-abstractor",
        input_dim=4,
        output_dim=4,
        hidden_dim=8,
        se_reduction=2,
        pos_emb=True,
        pos_emb_grid=(3, 5),
    ).double()
    norm = proj.before_pool[0].norm1
    y = torch.randn(2, norm.normalized_shape[0], 3, 5, generator=gen, dtype=F64)
    mu, var = y.mean(1, keepdim=True), y.var(1, unbiased=False, keepdim=True)
    ref = (y - mu) / torch.sqrt(var + norm.eps) * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(norm(y), ref)
    # At the stored grid the position embedding is added unchanged; at another grid it is resized bilinearly.
    x = torch.randn(1, 15, 4, generator=gen, dtype=F64)
    x2 = torch.randn(1, 24, 4, generator=gen, dtype=F64)
    with torch.no_grad():
        a, a2 = proj(x, grid=(3, 5)).tokens, proj(x2, grid=(4, 6)).tokens
        pos = proj.pos_emb.clone()
        proj.pos_emb.zero_()
        b = proj(x + pos.flatten(2).transpose(1, 2), grid=(3, 5)).tokens
        resized = torch.nn.functional.interpolate(pos, size=(4, 6), mode="bilinear", align_corners=False)
        b2 = proj(x2 + resized.flatten(2).transpose(1, 2), grid=(4, 6)).tokens
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a2, b2)
    assert not torch.allclose(a, proj(x, grid=(3, 5)).tokens)


def test_spatial_tokens_factorised_equals_faithful_with_composed_weights(gen):
    """depthwise k×k then shared pointwise = one full k×k conv with weight P[o, c]·D[c] (float64)."""
    common = dict(input_dim=4, output_dim=6, reference_grid=(8, 8), kernel_sizes=(2, 4, 8), conv_dim=3)
    fact = build_projector("spatial-tokens", mode="factorised", **common).double()
    full = build_projector("spatial-tokens", mode="faithful", **common).double()
    full.base.load_state_dict(fact.base.state_dict())
    full.token_proj.load_state_dict(fact.token_proj.state_dict())
    p_w, p_b = fact.pointwise.weight, fact.pointwise.bias  # [3, 4], [3]
    with torch.no_grad():
        for conv_f, conv_d in zip(full.convs, fact.convs):
            conv_f.weight.copy_(p_w[:, :, None, None] * conv_d.weight[:, 0][None])  # [3, 4, k, k]
            conv_f.bias.copy_(p_w @ conv_d.bias + p_b)
    x = torch.randn(2, 35, 4, generator=gen, dtype=F64)
    torch.testing.assert_close(full(x, grid=(5, 7)).tokens, fact(x, grid=(5, 7)).tokens)
    # The kernel covering the whole reference grid is one dot product with the resized map.
    fmap = torch.nn.functional.interpolate(
        x.transpose(1, 2).reshape(2, 4, 5, 7), size=(8, 8), mode="bilinear"
    )
    big = full.convs[2]
    ref = torch.einsum("bchw,ochw->bo", fmap, big.weight) + big.bias
    torch.testing.assert_close(big(fmap).mean((2, 3)), ref)


def test_pyramid_drop_keeps_top_tokens_in_order_and_maps_back(gen):
    proj = build_projector(
        "pyramid-drop", input_dim=4, output_dim=6, score_dim=4, num_scales=2, drop_rates=(0.5, 0.25)
    ).double()
    grids = [(3, 4), (2, 3)]
    xs = [torch.randn(2, 12, 4, generator=gen, dtype=F64), torch.randn(2, 6, 4, generator=gen, dtype=F64)]
    scores = [torch.rand(2, 12, generator=gen, dtype=F64), torch.rand(2, 6, generator=gen, dtype=F64)]
    out = proj(xs, grid=grids, scores=scores)
    assert out.tokens.shape == (2, 6 + 5, 6)
    for b in range(2):
        expected, offset = [], 0
        tokens = []
        for s, (x, sc) in enumerate(zip(xs, scores)):
            k = [6, 5][s]
            top = sorted(sorted(range(x.shape[1]), key=lambda i: -float(sc[b, i]))[:k])
            expected += [offset + i for i in top]
            tokens.append(proj.projs[s](x[b, top]) + proj.scale_emb[s])
            offset += x.shape[1]
        assert out.kept_indices[b].tolist() == expected
        torch.testing.assert_close(out.tokens[b], torch.cat(tokens))
    # Mapping an index back to (scale, row, col): the best-scored token of scale 1 is at row 1, col 2.
    scores[1][0] = torch.tensor([0.0, 0, 0, 0, 0, 9.0], dtype=F64)
    kept = proj(xs, grid=grids, scores=scores).kept_indices[0]
    best = int(kept[6 + 4])  # the last kept token of scale 1 (order preserved) is position 5
    scale = 0 if best < 12 else 1
    pos = best - 12 * scale
    assert (scale, divmod(pos, grids[scale][1])) == (1, (1, 2))


def test_pyramid_drop_video_scores_are_per_frame(gen):
    proj = build_projector(
        "pyramid-drop", input_dim=4, output_dim=6, score_dim=4, num_scales=1, drop_rates=(0.5,)
    )
    x = torch.randn(2, 3, 8, 4, generator=gen)
    scores = [torch.rand(2, 3, 8, generator=gen)]
    out = proj([x], grid=[(2, 4)], scores=scores)
    for t in range(3):
        alone = proj([x[:, t]], grid=[(2, 4)], scores=[scores[0][:, t]])
        torch.testing.assert_close(out.tokens[:, 4 * t : 4 * t + 4], alone.tokens)
        assert torch.equal(out.kept_indices[:, 4 * t : 4 * t + 4], alone.kept_indices + 8 * t)
    with pytest.raises(ProjectorError, match=r"scores\[0\] must be a tensor of B·N_s = 48"):
        proj([x], grid=[(2, 4)], scores=[torch.rand(2, 7)])


def test_pyramid_drop_learned_scores_are_an_attention_distribution(gen):
    proj = build_projector("pyramid-drop", input_dim=4, output_dim=6, score_dim=4)
    xs = [torch.randn(2, 10, 4, generator=gen) for _ in range(3)]
    out = proj(xs, grid=[(2, 5)] * 3)
    sums = out.attention.reshape(2, 3, 10).sum(-1)
    torch.testing.assert_close(sums, torch.ones(2, 3))
    assert proj.num_output_tokens([(2, 5)] * 3) == 5 + 7 + 9
    proj.eval()
    assert proj(xs, grid=[(2, 5)] * 3).tokens.shape[1] == 21  # training_only=False: drops at inference too
    lazy = build_projector("pyramid-drop", input_dim=4, output_dim=6, score_dim=4, training_only=True).eval()
    assert lazy(xs, grid=[(2, 5)] * 3).tokens.shape[1] == 30 == lazy.num_output_tokens([(2, 5)] * 3)


def test_adaptive_compression_against_naive_loop(gen):
    proj = build_projector("adaptive-compression", input_dim=3, output_dim=4, fine_fraction=0.25).double()
    h, w = 5, 6  # odd rows: the last block row repeats row 4
    x = torch.randn(2, h * w, 3, generator=gen, dtype=F64)
    out = proj(x, grid=(h, w))
    oh, ow = 3, 3
    for b in range(2):
        fmap = x[b].reshape(h, w, 3)
        blocks, density = [], []
        for i in range(oh):
            for j in range(ow):
                pos = [(min(2 * i + dy, h - 1), min(2 * j + dx, w - 1)) for dy in range(2) for dx in range(2)]
                patches = torch.stack([fmap[r, c] for r, c in pos])
                blocks.append((pos, patches))
                density.append(float(patches.var(0, unbiased=False).mean()))
        k = round(0.25 * 9)
        fine = set(sorted(range(9), key=lambda i: -density[i])[:k])
        tokens, kept = [], []
        for i, (pos, patches) in enumerate(blocks):
            if i in fine:
                tokens += list(proj.fine_mlp(proj.fine_norm(patches)))
                kept += [r * w + c for r, c in pos]
            else:
                tokens.append(proj.merge_mlp(proj.merge_norm(patches.reshape(-1))))
                kept.append(pos[0][0] * w + pos[0][1])
        torch.testing.assert_close(out.tokens[b], torch.stack(tokens))
        assert out.kept_indices[b].tolist() == kept
        torch.testing.assert_close(out.attention[b].double(), torch.tensor(density, dtype=F64))


def test_adaptive_compression_spends_tokens_on_dense_content():
    proj = build_projector("adaptive-compression", input_dim=2, output_dim=4, fine_fraction=0.1)
    x = torch.zeros(1, 8 * 8, 2)  # a flat background ...
    x.view(8, 8, 2)[2:4, 4:6] = torch.tensor(
        [[[1.0, -1.0], [-2.0, 3.0]], [[0.5, 2.0], [-1.0, -3.0]]]
    )  # ... one busy block
    out = proj(x, grid=(8, 8))
    assert out.tokens.shape[1] == 16 + 3 * 2 == proj.num_output_tokens((8, 8))
    rows_cols = {divmod(int(i), 8) for i in out.kept_indices[0]}
    assert {(2, 4), (2, 5), (3, 4), (3, 5)} <= rows_cols


def test_foveated_shallow_query_against_naive_float64(gen):
    proj = build_projector(
        "foveated-query", input_dim=5, output_dim=6, query_dim=4, heads=1, deep_query=False
    ).double()
    x = torch.randn(2, 3, 7, 5, generator=gen, dtype=F64)  # 3 frames, 7 patches each
    hidden = torch.randn(2, 6, generator=gen, dtype=F64)
    layer = proj.layers[0]
    for query in (None, hidden):
        out = proj(x, grid=(7, 1), query=query)
        assert out.tokens.shape == (2, 3, 6)
        torch.testing.assert_close(out.attention.sum(-1), torch.ones(2, 3, dtype=F64))
        q0 = (
            proj.static_query.expand(2, 3, 1, 4)
            if query is None
            else proj.query_proj(query)[:, None, None].expand(2, 3, 1, 4)
        )
        k, v = layer.to_kv(layer.norm_x(x)).chunk(2, -1)  # [2, 3, 7, 4]
        a = torch.softmax(layer.to_q(layer.norm_q(q0)) @ k.transpose(-1, -2) / 2.0, dim=-1)  # [2, 3, 1, 7]
        q = q0 + layer.to_out(a @ v)
        q = q + layer.ff(q)
        torch.testing.assert_close(out.tokens, proj.out_proj(q)[:, :, 0])
        torch.testing.assert_close(out.attention, a[:, :, 0])


def test_foveated_fine_pass_differs_from_coarse_and_per_frame_queries(gen):
    proj = build_projector("foveated-query", input_dim=5, output_dim=6, query_dim=4)
    x = torch.randn(1, 2, 6, 5, generator=gen)
    coarse = proj(x, grid=(2, 3)).tokens
    fine = proj(x, grid=(2, 3), query=torch.randn(1, 6, generator=gen)).tokens
    per_frame = proj(x, grid=(2, 3), query=torch.randn(1, 2, 6, generator=gen)).tokens
    assert coarse.shape == fine.shape == per_frame.shape == (1, 2, 6)
    assert not torch.allclose(coarse, fine) and not torch.allclose(fine, per_frame)
    assert len(proj.layers) == 3 and len(build_projector("foveated-query", deep_query=False).layers) == 1
