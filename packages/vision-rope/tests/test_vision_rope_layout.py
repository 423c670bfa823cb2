"""Window layout: permutation, per-token ids, cu_seqlens; Qwen2.5-VL's window index as the reference."""

import itertools

import pytest
import torch
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

from tbi_vision_rope import VisionRopeError, build_layout, default_global_layers


def _raster_tokens(grids, num_prefix=0):
    """Independent description of the input order: per token (image, frame, row, col); prefix row = -1."""
    tokens = []
    for image, (t, h, w) in enumerate(grids):
        tokens += [(image, -1, -1, -1)] * num_prefix
        tokens += [(image, f, r, c) for f in range(t) for r in range(h) for c in range(w)]
    return tokens


@pytest.mark.parametrize("window", [0, 3, 4, 16])
def test_layout_groups_tokens_by_frame_and_window(window):
    grids = [(1, 5, 7), (2, 4, 6), (1, 1, 1)]
    layout = build_layout(grids, window)
    tokens = _raster_tokens(grids)
    assert sorted(layout.perm.tolist()) == list(range(len(tokens)))
    assert torch.equal(layout.perm[layout.inv_perm], torch.arange(len(tokens)))
    ordered = [tokens[i] for i in layout.perm.tolist()]
    assert layout.pos_h.tolist() == [r for _, _, r, _ in ordered]
    assert layout.pos_w.tolist() == [c for _, _, _, c in ordered]
    cu = layout.cu_window_seqlens.tolist()
    assert cu[0] == 0 and cu[-1] == len(tokens)
    seen_windows = set()
    for start, end in itertools.pairwise(cu):
        keys = {(i, f, r // window, c // window) if window else (i, f) for i, f, r, c in ordered[start:end]}
        assert len(keys) == 1, "a window segment mixes frames or windows"
        seen_windows |= keys
        assert len(set(layout.window_seq_id[start:end].tolist())) == 1
    n_windows = {(i, f, r // window, c // window) if window else (i, f) for i, f, r, c in ordered}
    assert seen_windows == n_windows and len(cu) - 1 == len(n_windows)
    # global segments: one per frame
    assert layout.cu_seqlens.tolist() == [0, 35, 59, 83, 84]


def test_prefix_tokens_have_their_own_window_group_and_join_their_image_globally():
    layout = build_layout([(1, 4, 4), (1, 2, 6)], window=2, num_prefix=1)
    assert layout.perm[0] == 0 and layout.perm[17] == 17
    assert layout.pos_h[0] == 0 and layout.pos_w[0] == 0
    assert layout.cu_window_seqlens.tolist()[:3] == [0, 1, 5]
    assert layout.window_seq_id[0] != layout.window_seq_id[1]
    assert layout.cu_seqlens.tolist() == [0, 17, 30]
    assert len(set(layout.global_seq_id[:17].tolist())) == 1


def test_joint_frames_makes_one_global_segment_per_video():
    layout = build_layout([(3, 2, 2)], window=2, joint_frames=True)
    assert layout.cu_seqlens.tolist() == [0, 12]
    assert layout.cu_window_seqlens.tolist() == [0, 4, 8, 12]


@pytest.mark.parametrize("grid_thw", [[(1, 16, 16)], [(1, 12, 20), (2, 8, 4)], [(1, 6, 10), (1, 18, 2)]])
def test_merge_size_2_layout_reproduces_qwen2_5_vl_window_index(grid_thw):
    grid = torch.tensor(grid_thw)
    layout = build_layout(grid, window=8, merge_size=2)
    window_index, cu_window = get_vision_window_index(
        grid, spatial_merge_size=2, window_size=112, patch_size=14
    )
    token_index = (window_index[:, None] * 4 + torch.arange(4)).reshape(-1)
    assert torch.equal(layout.perm, token_index)
    assert layout.cu_window_seqlens.tolist() == cu_window.tolist()
    positions = get_vision_position_ids(grid, 2)[token_index]  # [T, 2] (h, w) in window order
    assert torch.equal(layout.pos_h.long(), positions[:, 0]) and torch.equal(
        layout.pos_w.long(), positions[:, 1]
    )


def test_default_global_layers():
    assert default_global_layers(32, 4) == [7, 15, 23, 31]
    assert default_global_layers(45, 4) == [10, 21, 33, 44]
    assert default_global_layers(3, 4) == [0, 1, 2]
    assert default_global_layers(12, 0) == []


def test_to_window_order_round_trip():
    layout = build_layout([(1, 5, 5)], window=2)
    x = torch.randn(25, 3)
    assert not torch.equal(layout.to_window_order(x), x)
    assert torch.equal(layout.to_input_order(layout.to_window_order(x)), x)
    assert build_layout([(1, 4, 4)], window=0).identity_perm


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"grid_thw": []}, "grid_thw is empty"),
        ({"grid_thw": [(1, 0, 4)]}, r"grid_thw\[0\]=\[1, 0, 4\].*smaller than one patch"),
        ({"grid_thw": [(1, 5, 4)], "merge_size": 2}, r"\(1, 5, 4\) is not divisible by merge_size=2"),
        ({"grid_thw": [(1, 4, 4)], "window": 3, "merge_size": 2}, "window=3 patches is not a multiple"),
        ({"grid_thw": [(2, 4, 4)], "num_prefix": 1}, "pass joint_frames=True"),
        (
            {"grid_thw": [(1, 4, 4)], "cu_seqlens": torch.tensor([0, 15])},
            r"ends at 15 but grid_thw describes 16",
        ),
        (
            {"grid_thw": [(1, 2, 2), (1, 2, 2)], "cu_seqlens": torch.tensor([0, 3, 8])},
            "expected \\[0, 4, 8\\]",
        ),
    ],
)
def test_bad_layouts_raise_clear_errors(kwargs, match):
    with pytest.raises(VisionRopeError, match=match):
        build_layout(**kwargs)
