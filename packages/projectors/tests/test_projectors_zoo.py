"""Every projector of the registry: shapes, token counts, video, packed input, parameters, gradients,
save/load, determinism, bf16, gradient checkpointing."""

import json

import pytest
import torch

from tbi_projectors import (
    build_projector,
    get_projector_class,
    list_projectors,
    load_projector,
    projector_parameter_count,
)

NAMES = list_projectors()
GRIDS = [(5, 7), (4, 4), (3, 1), (9, 2)]
# Projectors that attend over all frames jointly (the others treat frames independently).
JOINT = {"perceiver", "query-attn"}


def _run(proj, x, grid, **kw):
    return proj(x, grid=grid, **kw)


def test_registry_lists_the_whole_zoo():
    assert NAMES == [
        "linear",
        "mlp2x_gelu",
        "c-abstractor",
        "pyramid-c-abstractor",
        "perceiver",
        "query-attn",
        "pixel-shuffle-mlp",
        "ldp",
        "spatial-tokens",
        "foveated-query",
        "multi-token",
        "pyramid-drop",
        "adaptive-compression",
    ]


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("name", NAMES)
def test_output_shape_matches_num_output_tokens(name, grid, tiny, make_inputs, gen):
    proj = tiny(name).eval()
    x, g = make_inputs(proj, 2, grid, generator=gen)
    out = _run(proj, x, g)
    m = proj.num_output_tokens(g)
    assert out.tokens.shape == (2, m, 16)
    assert torch.isfinite(out.tokens).all()
    if out.grid is not None:
        assert out.grid[0] * out.grid[1] == m
    if out.kept_indices is not None:
        assert out.kept_indices.shape == (2, m)
        n_in = sum(grid[0] * grid[1] for _ in proj._input_dims())
        assert int(out.kept_indices.min()) >= 0 and int(out.kept_indices.max()) < n_in


@pytest.mark.parametrize("name", NAMES)
def test_video_frames(name, tiny, make_inputs, gen):
    proj = tiny(name).eval()
    grid = (4, 3)
    x, g = make_inputs(proj, 2, grid, frames=3, generator=gen)
    out = _run(proj, x, g)
    m = proj.num_output_tokens(g, num_frames=3)
    assert out.tokens.shape == (2, m, 16)
    # A one-frame video is the same as an image.
    x1 = [v[:, :1] for v in x] if isinstance(x, list) else x[:, :1]
    xi = [v[:, 0] for v in x] if isinstance(x, list) else x[:, 0]
    torch.testing.assert_close(_run(proj, x1, g).tokens, _run(proj, xi, g).tokens)
    if name in JOINT:
        assert m == proj.num_output_tokens(g, num_frames=1)
        return
    per_frame = proj.num_output_tokens(g)
    assert m == 3 * per_frame
    for t in range(3):
        xt = [v[:, t] for v in x] if isinstance(x, list) else x[:, t]
        alone = _run(proj, xt, g)
        if name == "spatial-tokens":
            nb = per_frame - 3
            got = torch.cat(
                [out.tokens[:, t * nb : (t + 1) * nb], out.tokens[:, 3 * nb + 3 * t : 3 * nb + 3 * t + 3]], 1
            )
        else:
            got = out.tokens[:, t * per_frame : (t + 1) * per_frame]
        torch.testing.assert_close(got, alone.tokens, rtol=1e-5, atol=1e-5)
        if out.kept_indices is not None:
            n_in = sum(grid[0] * grid[1] for _ in proj._input_dims())
            expected = alone.kept_indices + t * n_in
            torch.testing.assert_close(out.kept_indices[:, t * per_frame : (t + 1) * per_frame], expected)


@pytest.mark.parametrize("name", NAMES)
def test_packed_images_match_one_by_one(name, tiny, gen):
    proj = tiny(name).eval()
    thw = torch.tensor([[1, 5, 7], [2, 3, 4], [1, 2, 9]])
    cu = torch.tensor([0, 35, 59, 77])
    packed = [torch.randn(77, c, generator=gen) for c in proj._input_dims()]
    out = proj(packed if proj.multi_scale else packed[0], cu_seqlens=cu, grid_thw=thw)
    assert out.tokens.shape[0] == 3
    for i, (t, h, w) in enumerate(thw.tolist()):
        xi = [p[cu[i] : cu[i + 1]].reshape(1, t, h * w, -1) for p in packed]
        grid = [(h, w)] * len(xi) if proj.multi_scale else (h, w)
        alone = proj(xi if proj.multi_scale else xi[0], grid=grid)
        m = alone.tokens.shape[1]
        assert int(out.lengths[i]) == m == proj.num_output_tokens(grid, num_frames=t)
        torch.testing.assert_close(out.tokens[i, :m], alone.tokens[0], rtol=1e-5, atol=1e-5)
        assert (out.tokens[i, m:] == 0).all()
        if alone.kept_indices is not None:
            assert torch.equal(out.kept_indices[i, :m], alone.kept_indices[0])
            assert (out.kept_indices[i, m:] == -1).all()


VARIANTS = [
    ("linear", {}),
    ("mlp2x_gelu", {"depth": 3}),
    ("c-abstractor", {}),
    ("c-abstractor", {"pos_emb": True, "group_width": 1, "bottleneck_ratio": 1.0, "pos_emb_grid": (3, 5)}),
    ("c-abstractor", {"se_reduction": 0, "blocks_before_pool": 0, "mlp_depth": 1}),
    ("pyramid-c-abstractor", {}),
    ("pyramid-c-abstractor", {"input_dims": (), "blocks_per_scale": 2, "group_width": 2}),
    ("perceiver", {}),
    ("query-attn", {}),
    ("pixel-shuffle-mlp", {"factor": 3}),
    ("ldp", {"output_grid": (1, 4)}),
    ("spatial-tokens", {}),
    (
        "spatial-tokens",
        {"mode": "faithful", "base": "c-abstractor", "base_options": {"hidden_dim": 8, "se_reduction": 2}},
    ),
    ("foveated-query", {}),
    ("foveated-query", {"deep_query": False, "lm_dim": 24}),
    ("multi-token", {"mlp_depth": 2}),
    ("pyramid-drop", {}),
    ("adaptive-compression", {"score": "learned", "factor": 3}),
]


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
def test_parameter_formula_matches_module(name, options, tiny):
    proj = tiny(name, **options)
    actual = sum(p.numel() for p in proj.parameters())
    assert proj.num_parameters() == actual
    cfg = proj.config.to_dict()
    assert projector_parameter_count(name, **{k: v for k, v in cfg.items() if k != "seed"}) == actual


def test_parameter_counts_at_seed_scale_match_the_papers():
    """LLaVA-SP's full convs cost ≈763M at C=1024; the factorised ones ≈2M (issue 5)."""
    full = dict(input_dim=1024, output_dim=2048)
    base = projector_parameter_count("mlp2x_gelu", **full)
    token_mlp = 512 * 2048 + 2048 + 2048 * 2048 + 2048
    faithful = projector_parameter_count("spatial-tokens", mode="faithful", **full) - base - token_mlp
    factorised = projector_parameter_count("spatial-tokens", mode="factorised", **full) - base - token_mlp
    assert faithful == 1024 * 512 * (16 + 64 + 144 + 256 + 400 + 576) + 6 * 512  # 763.4M
    assert 1.9e6 < factorised < 2.1e6
    # seed 004: a 1024 → 4096 linear projector has 4.2M parameters, the MLP 20.9M.
    assert round(projector_parameter_count("linear", input_dim=1024, output_dim=4096) / 1e5) == 42
    assert round(projector_parameter_count("mlp2x_gelu", input_dim=1024, output_dim=4096) / 1e5) == 210


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name, tiny, make_inputs, gen):
    proj = tiny(name).train()
    x, g = make_inputs(proj, 2, (4, 5), generator=gen)
    for v in x if isinstance(x, list) else [x]:
        v.requires_grad_(True)
    loss = _run(proj, x, g).tokens.pow(2).mean()
    if name == "foveated-query":  # the fine pass uses the LM query projection
        loss = loss + _run(proj, x, g, query=torch.randn(2, 16, generator=gen)).tokens.pow(2).mean()
    loss.backward()
    for pname, p in proj.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
    for v in x if isinstance(x, list) else [x]:
        assert v.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_save_and_load_round_trip(name, tiny, make_inputs, gen, tmp_path):
    proj = tiny(name, seed=7).eval()
    proj.save_pretrained(tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((tmp_path / "p" / "config.json").read_text())
    assert meta["projector"] == name
    # safetensors = 8-byte little-endian header length, then a JSON header (no pickle).
    raw = (tmp_path / "p" / "model.safetensors").read_bytes()
    assert raw[8:9] == b"{"
    loaded = load_projector(tmp_path / "p").eval()
    assert type(loaded) is type(proj) and loaded.config == proj.config
    x, g = make_inputs(proj, 2, (4, 3), generator=gen)
    torch.testing.assert_close(_run(loaded, x, g).tokens, _run(proj, x, g).tokens, rtol=0, atol=0)
    assert type(proj).from_pretrained(tmp_path / "p").config == proj.config


@pytest.mark.parametrize("name", NAMES)
def test_init_is_deterministic_from_the_seed(name, tiny):
    before = torch.get_rng_state()
    a, b, c = tiny(name, seed=3), tiny(name, seed=3), tiny(name, seed=4)
    assert torch.equal(before, torch.get_rng_state()), "building a projector must not move the global RNG"
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_matches_fp32(name, tiny, make_inputs, gen):
    proj = tiny(name).eval()
    x, g = make_inputs(proj, 2, (4, 4), generator=gen)
    ref = _run(proj, x, g).tokens
    proj16 = proj.to(torch.bfloat16)
    x16 = [v.bfloat16() for v in x] if isinstance(x, list) else x.bfloat16()
    out = _run(proj16, x16, g).tokens
    assert out.dtype == torch.bfloat16
    err = (out.float() - ref).norm() / ref.norm()
    assert err < 0.05, f"{name}: relative bf16 error {err:.3f}"


@pytest.mark.parametrize("name", ["c-abstractor", "pyramid-c-abstractor", "perceiver", "foveated-query"])
def test_gradient_checkpointing_gives_the_same_gradients(name, tiny, make_inputs, gen):
    proj = tiny(name).train()
    x, g = make_inputs(proj, 2, (5, 4), generator=gen)

    def grads():
        proj.zero_grad()
        _run(proj, x, g).tokens.pow(2).mean().backward()
        return {k: p.grad.clone() for k, p in proj.named_parameters() if p.grad is not None}

    plain = grads()
    proj.gradient_checkpointing_enable()
    ckpt = grads()
    assert plain.keys() == ckpt.keys() and plain
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-5, atol=1e-6)


def test_honeybee_preset():
    proj = build_projector("c-abstractor", preset="honeybee", input_dim=24, output_dim=16, hidden_dim=24)
    assert proj.config.output_grid == (12, 12) and proj.config.pos_emb and proj.config.group_width == 1
    assert proj.num_output_tokens((24, 24)) == 144
    out = proj(torch.randn(1, 30 * 17, 24), grid=(30, 17))  # any grid, not only the 24×24 of the original
    assert out.tokens.shape == (1, 144, 16) and out.grid == (12, 12)
    assert proj.before_pool[0].conv2.groups == 24  # depthwise, as RegNet with group width 1


def test_seed_000_defaults():
    cfg = get_projector_class("c-abstractor").config_class()
    assert (cfg.num_blocks, cfg.hidden_dim, cfg.output_grid, cfg.kernel_size, cfg.se_reduction) == (
        6,
        2048,
        (16, 16),
        3,
        16,
    )
    pyr = get_projector_class("pyramid-c-abstractor").config_class()
    assert pyr.output_grid == (16, 16) and pyr.num_scales == 3
    drop = get_projector_class("pyramid-drop").config_class()
    assert drop.drop_rates == (0.5, 0.3, 0.1) and not drop.training_only
