"""Bad input gets a ProjectorError that names the problem and the fix."""

import json

import pytest
import torch

from tbi_projectors import ProjectorError, build_projector, list_projectors, load_projector


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ProjectorError, match="Did you mean 'c-abstractor'"):
        build_projector("c_abstractor")


def test_unknown_option_lists_valid_ones():
    with pytest.raises(ProjectorError, match=r"unknown option\(s\) \['hiden_dim'\].*hidden_dim"):
        build_projector("c-abstractor", hiden_dim=3)


def test_unknown_preset():
    with pytest.raises(ProjectorError, match=r"no preset 'llava'.*honeybee"):
        build_projector("c-abstractor", preset="llava")


@pytest.mark.parametrize(
    ("name", "options", "pattern"),
    [
        ("c-abstractor", {"kernel_size": 4}, "kernel_size must be odd"),
        ("c-abstractor", {"num_blocks": 2, "blocks_before_pool": 3}, "blocks_before_pool"),
        ("pyramid-drop", {"drop_rates": (0.5, 0.3)}, "one rate in"),
        ("pyramid-drop", {"drop_rates": (0.5, 1.0, 0.1)}, "one rate in"),
        ("query-attn", {"heads": 3}, "heads dividing output_dim"),
        ("spatial-tokens", {"kernel_sizes": (4, 30)}, "kernel sizes"),
        ("spatial-tokens", {"mode": "full"}, "faithful"),
        ("foveated-query", {"query_dim": 10, "heads": 3}, "multiple of heads"),
        ("adaptive-compression", {"score": "entropy"}, "score in"),
        ("linear", {"input_dim": 0}, "input_dim must be a positive int"),
    ],
)
def test_bad_config_fails_at_construction(name, options, pattern):
    with pytest.raises(ProjectorError, match=pattern):
        build_projector(name, **options)


@pytest.mark.parametrize(
    "name", [n for n in list_projectors() if n not in ("pyramid-c-abstractor", "pyramid-drop")]
)
def test_single_scale_errors(name, tiny):
    proj = tiny(name)
    x = torch.randn(2, 12, 12)
    with pytest.raises(ProjectorError, match="has 11 channels but the projector was built with input_dim=12"):
        proj(torch.randn(2, 12, 11), grid=(3, 4))
    with pytest.raises(ProjectorError, match=r"N=12 tokens per frame but grid=\(5, 3\) gives 15"):
        proj(x, grid=(5, 3))
    with pytest.raises(ProjectorError, match="takes one feature map, got a list"):
        proj([x, x], grid=(3, 4))
    with pytest.raises(ProjectorError, match=r"expected \[B, N, C\] or video"):
        proj(torch.randn(12, 12), grid=(3, 4))
    with pytest.raises(ProjectorError, match="grid must be"):
        proj(x, grid=(3, 4, 1))
    if proj.needs_grid:
        with pytest.raises(ProjectorError, match=r"pass grid=\(h, w\)"):
            proj(x)


@pytest.mark.parametrize("name", ["pyramid-c-abstractor", "pyramid-drop"])
def test_multi_scale_errors(name, tiny):
    proj = tiny(name)
    xs = [torch.randn(2, 12, c) for c in proj._input_dims()]
    with pytest.raises(ProjectorError, match="built for 3 scales but got 2"):
        proj(xs[:2], grid=[(3, 4)] * 2)
    with pytest.raises(ProjectorError, match="expects a list of 3 feature maps"):
        proj(xs[0], grid=(3, 4))
    with pytest.raises(
        ProjectorError, match="scale 1 has 12 channels but the projector was built with input_dim=6"
    ):
        proj([xs[0], xs[0], xs[2]], grid=[(3, 4)] * 3)
    with pytest.raises(ProjectorError, match="expects 3 scale grids"):
        proj(xs, grid=[(3, 4)] * 2)
    with pytest.raises(ProjectorError, match="scales disagree on batch"):
        proj([xs[0], xs[1][:1], xs[2]], grid=[(3, 4)] * 3)


def test_packed_errors(tiny):
    proj = tiny("mlp2x_gelu")
    packed = torch.randn(20, 12)
    with pytest.raises(ProjectorError, match="needs both cu_seqlens"):
        proj(packed, cu_seqlens=torch.tensor([0, 20]))
    with pytest.raises(ProjectorError, match="does not match grid_thw"):
        proj(packed, cu_seqlens=torch.tensor([0, 8, 20]), grid_thw=torch.tensor([[1, 2, 3], [1, 3, 4]]))
    with pytest.raises(ProjectorError, match=r"must be \[total=20, C=12\]"):
        proj(
            packed[:, :5], cu_seqlens=torch.tensor([0, 8, 20]), grid_thw=torch.tensor([[1, 2, 4], [1, 3, 4]])
        )


def test_perceiver_rejects_too_many_frames(tiny):
    proj = tiny("perceiver")  # max_frames=4
    with pytest.raises(ProjectorError, match="rebuild with max_frames>=5"):
        proj(torch.randn(1, 5, 6, 12), grid=(2, 3))


def test_foveated_query_shape_error(tiny):
    proj = tiny("foveated-query")
    with pytest.raises(ProjectorError, match=r"query must be the LM hidden state \[B=2, D_lm=16\]"):
        proj(torch.randn(2, 6, 12), grid=(2, 3), query=torch.randn(2, 7))


def test_count_without_grid_for_grid_projectors(tiny):
    with pytest.raises(ProjectorError, match="needs the 2D layout"):
        tiny("c-abstractor").num_output_tokens()
    with pytest.raises(ProjectorError, match="keeps every token"):
        tiny("linear").num_output_tokens()
    assert tiny("perceiver").num_output_tokens() == 5


def test_load_errors_name_the_file(tiny, tmp_path):
    with pytest.raises(ProjectorError, match=r"config\.json does not exist"):
        load_projector(tmp_path)
    proj = tiny("linear")
    proj.save_pretrained(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    cfg["config"]["output_dim"] = 17
    (tmp_path / "a" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        ProjectorError, match=r"model.safetensors: tensor 'proj.(weight|bias)' has shape .*the config expects"
    ):
        load_projector(tmp_path / "a")
    (tmp_path / "a" / "config.json").write_text("{not json")
    with pytest.raises(ProjectorError, match="is not valid JSON"):
        load_projector(tmp_path / "a")
    tiny("mlp2x_gelu").save_pretrained(tmp_path / "b")
    with pytest.raises(ProjectorError, match="holds a 'mlp2x_gelu' projector, not 'linear'"):
        type(proj).from_pretrained(tmp_path / "b")


def test_failed_save_leaves_nothing_half_written(tiny, tmp_path, monkeypatch):
    import tbi_projectors.base as base

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(base, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        tiny("linear").save_pretrained(tmp_path / "p")
    assert list((tmp_path / "p").iterdir()) == []


def test_unexpected_keyword_inputs_are_rejected(tiny):
    x = torch.randn(1, 6, 12)
    with pytest.raises(
        ProjectorError, match=r"mlp2x_gelu got unexpected argument\(s\) \['query'\]; it accepts no extra"
    ):
        tiny("mlp2x_gelu")(x, grid=(2, 3), query=torch.randn(1, 16))
    with pytest.raises(ProjectorError, match="it accepts query="):
        tiny("foveated-query")(x, grid=(2, 3), querry=torch.randn(1, 16))
    wrapped = tiny("spatial-tokens", base="foveated-query", base_options={"query_dim": 8})
    assert wrapped(torch.randn(1, 2, 6, 12), grid=(2, 3), query=torch.randn(1, 16)).tokens.shape == (
        1,
        2 + 2 * 3,
        16,
    )
