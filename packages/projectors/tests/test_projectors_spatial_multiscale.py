"""``spatial-tokens`` over a multi-scale base (seed 001 A3c: LLaVA-SP spatial tokens + PIIP pyramid)."""

import pytest
import torch

from tbi_projectors import ProjectorError, build_projector, load_projector

DIMS = (12, 6, 10)
BASE = {"score_dim": 8, "input_dims": DIMS, "drop_rates": (0.5, 0.0, 0.25)}


def _build(**overrides):
    options = {
        "base": "pyramid-drop",
        "base_options": BASE,
        "reference_grid": (8, 8),
        "kernel_sizes": (2, 4, 8),
    }
    return build_projector("spatial-tokens", input_dim=12, output_dim=16, **{**options, **overrides})


def _inputs(gen, lead=(2,), grid=(3, 5)):
    n = grid[0] * grid[1]
    return [torch.randn(*lead, n, c, generator=gen) for c in DIMS], [grid] * len(DIMS)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("scale", [-1, 0, 1])
def test_shapes_counts_and_parameter_formula(scale, gen):
    proj = _build(spatial_scale=scale).eval()
    assert proj.multi_scale and proj._input_dims() == list(DIMS)
    xs, grids = _inputs(gen)
    out = proj(xs, grid=grids)
    base_tokens = 15 - 7 + 15 + 15 - 3  # keep N - floor(N * r) per scale
    assert out.tokens.shape == (2, base_tokens + 3, 16)
    assert proj.num_output_tokens(grid=grids) == base_tokens + 3
    assert proj.num_output_tokens(grid=grids, num_frames=4) == 4 * (base_tokens + 3)
    assert proj.num_parameters() == sum(p.numel() for p in proj.parameters())
    # the convs read the chosen scale's channels (depthwise: C groups of one channel)
    assert proj.convs[0].in_channels == DIMS[scale]
    # kept indices: the base's (into the concatenated scales), then -1 for the spatial tokens
    assert out.kept_indices.shape == (2, base_tokens + 3) and (out.kept_indices[:, -3:] == -1).all()
    assert (out.kept_indices[:, :base_tokens] >= 0).all()


def test_base_tokens_are_the_base_projector_and_spatial_tokens_read_one_scale(gen):
    proj = _build(spatial_scale=1).eval()
    alone = build_projector("pyramid-drop", input_dim=12, output_dim=16, **BASE).eval()
    xs, grids = _inputs(gen)
    out = proj(xs, grid=grids).tokens
    m = alone(xs, grid=grids).tokens.shape[1]
    torch.testing.assert_close(out[:, :m], alone(xs, grid=grids).tokens, rtol=0, atol=0)
    # other scales do not move the spatial tokens, the chosen scale does
    others = [xs[0] + 1.0, xs[1], xs[2] * 2.0]
    torch.testing.assert_close(proj(others, grid=grids).tokens[:, m:], out[:, m:], rtol=0, atol=0)
    moved = proj([xs[0], xs[1] + 1.0, xs[2]], grid=grids).tokens[:, m:]
    assert (moved - out[:, m:]).abs().max() > 1e-4


def test_video_frames_follow_the_base_tokens(gen):
    proj = _build().eval()
    xs, grids = _inputs(gen, lead=(2, 3))
    out = proj(xs, grid=grids).tokens
    assert out.shape == (2, proj.num_output_tokens(grid=grids, num_frames=3), 16)
    # frame 1 alone gives the same spatial tokens as its slot in the video output (spatial tokens after base)
    single = proj([x[:, 1] for x in xs], grid=grids).tokens
    torch.testing.assert_close(out[:, -3 * 3 + 3 : -3 * 3 + 6], single[:, -3:], rtol=1e-5, atol=1e-6)


def test_gradients_reach_every_parameter(gen):
    proj = _build().train()
    xs, grids = _inputs(gen)
    xs = [x.requires_grad_(True) for x in xs]
    proj(xs, grid=grids).tokens.square().mean().backward()
    missing = [n for n, p in proj.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in xs)


def test_save_and_load_round_trip(gen, tmp_path):
    proj = _build(spatial_scale=0, mode="faithful", conv_dim=5).eval()
    xs, grids = _inputs(gen)
    proj.save_pretrained(tmp_path / "p")
    back = load_projector(tmp_path / "p").eval()
    assert back.multi_scale and back.config.base_config() == proj.config.base_config()
    torch.testing.assert_close(back(xs, grid=grids).tokens, proj(xs, grid=grids).tokens, rtol=0, atol=0)


def test_packed_images_match_one_by_one(gen):
    proj = _build().eval()
    grids = [(3, 5), (2, 4)]
    per_image = [[torch.randn(1, h * w, c, generator=gen) for c in DIMS] for h, w in grids]
    packed = [torch.cat([img[s][0] for img in per_image]) for s in range(len(DIMS))]
    cu = torch.tensor([0, 15, 23])
    thw = torch.tensor([[1, 3, 5], [1, 2, 4]])
    out = proj(packed, cu_seqlens=cu, grid_thw=thw)
    for i, (img, g) in enumerate(zip(per_image, grids)):
        alone = proj(img, grid=[g] * 3).tokens[0]
        torch.testing.assert_close(out.tokens[i, : alone.shape[0]], alone, rtol=1e-5, atol=1e-6)
        assert int(out.lengths[i]) == alone.shape[0]


def test_errors_name_the_fix(gen):
    with pytest.raises(ProjectorError, match="spatial_scale=3 but the pyramid-drop base has 3 scales"):
        _build(spatial_scale=3)
    proj = _build()
    xs, grids = _inputs(gen)
    with pytest.raises(ProjectorError, match="expects a list of 3 feature maps"):
        proj(xs[0], grid=grids[0])
    with pytest.raises(ProjectorError, match="needs grid="):
        proj(xs)
    with pytest.raises(ProjectorError, match="built for 3 scales but got 2"):
        proj(xs[:2], grid=grids[:2])


def test_base_options_as_frozen_pairs(gen):
    """A frozen config (tbi-train's) holds the base options as sorted (key, value) pairs."""
    pairs = tuple(sorted(BASE.items()))
    proj = _build(base_options=pairs).eval()
    assert proj.config.base_options == BASE
    xs, grids = _inputs(gen)
    torch.testing.assert_close(proj(xs, grid=grids).tokens, _build().eval()(xs, grid=grids).tokens)
    with pytest.raises(ProjectorError, match="base_options must be a mapping"):
        _build(base_options=("drop_rates", 0.5))
