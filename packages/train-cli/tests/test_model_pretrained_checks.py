"""Loading an existing VLM: clear errors on bad paths/configs, InternVL tiling, the Qwen2.5-VL merger projector."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tbi_train.errors import TrainError
from tbi_train.model.pretrained import detect_family, load_pretrained_vlm
from tbi_train.model.pretrained_image import PretrainedImageTransform
from tbi_train.model.pretrained_qwen import PatchMergerConfig, PatchMergerProjector

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _config(tmp_path, **values):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(values))
    return tmp_path


def test_a_missing_folder_fails_at_once_and_is_never_a_hub_id(tmp_path, monkeypatch):
    import transformers

    def no_hub(*args, **kwargs):
        raise AssertionError("transformers must not be asked about a missing path")

    monkeypatch.setattr(transformers.LlavaForConditionalGeneration, "from_pretrained", no_hub)
    with pytest.raises(TrainError, match="not a local folder"):
        load_pretrained_vlm("llava-hf/llava-1.5-7b-hf")
    with pytest.raises(TrainError, match="not a local folder"):
        load_pretrained_vlm(tmp_path / "absent")


@pytest.mark.parametrize(
    ("values", "family"),
    [
        ({"model_type": "internvl"}, "internvl"),
        ({"model_type": "llava"}, "llava"),
        ({"architectures": ["Qwen2_5_VLForConditionalGeneration"]}, "qwen2_5_vl"),
    ],
)
def test_family_is_detected_from_model_type_or_architectures(tmp_path, values, family):
    assert detect_family(_config(tmp_path, **values)) == family


def test_unsupported_and_remote_code_layouts_are_named(tmp_path):
    with pytest.raises(TrainError, match="'-hf' conversion"):
        detect_family(
            _config(tmp_path / "a", model_type="internvl_chat", architectures=["InternVLChatModel"])
        )
    with pytest.raises(TrainError, match=r"model_type='bert'.*supported model_type values"):
        detect_family(_config(tmp_path / "b", model_type="bert"))
    with pytest.raises(TrainError, match=r"config.json does not exist"):
        detect_family(tmp_path)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text("{not json")
    with pytest.raises(TrainError, match="not valid JSON"):
        detect_family(tmp_path / "c")


def test_a_family_that_contradicts_the_config_is_an_error(tmp_path):
    folder = _config(tmp_path, model_type="llava")
    with pytest.raises(TrainError, match=r"family='internvl' but .* 'llava' checkpoint"):
        load_pretrained_vlm(folder, family="internvl")
    with pytest.raises(TrainError, match="family='gpt' is unknown"):
        load_pretrained_vlm(folder, family="gpt")


def test_missing_preprocessor_config_is_named(tmp_path):
    with pytest.raises(TrainError, match=r"preprocessor_config.json does not exist"):
        PretrainedImageTransform.from_pretrained(tmp_path, "llava")


def _internvl_tiles_reference(image, size, mean, std, min_tiles=1, max_tiles=12):
    """InternVL's dynamic_preprocess written out: closest aspect ratio (ties: the larger grid if the image
    has more than half its pixels), resize to the grid, cut row-major, thumbnail last when n > 1."""
    w, h = image.size
    aspect = w / h
    ratios = sorted(
        {
            (i, j)
            for n in range(min_tiles, max_tiles + 1)
            for i in range(1, n + 1)
            for j in range(1, n + 1)
            if min_tiles <= i * j <= max_tiles
        },
        key=lambda r: r[0] * r[1],
    )
    best, best_diff = (1, 1), float("inf")
    for cols, rows in ratios:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and w * h > 0.5 * size * size * cols * rows:
            best = (cols, rows)
    cols, rows = best
    resized = image.resize((cols * size, rows * size), Image.Resampling.BICUBIC)
    tiles = [
        resized.crop((c * size, r * size, (c + 1) * size, (r + 1) * size))
        for r in range(rows)
        for c in range(cols)
    ]
    if len(tiles) > 1:
        tiles.append(image.resize((size, size), Image.Resampling.BICUBIC))
    arr = np.stack([np.asarray(t, dtype=np.float64) / 255.0 for t in tiles])  # [n, S, S, 3]
    arr = (arr - np.array(mean)) / np.array(std)
    return torch.from_numpy(arr).permute(0, 3, 1, 2)  # [n, 3, S, S]


@pytest.mark.parametrize("shape", [(32, 32), (96, 30), (30, 70), (200, 41), (57, 57)])
def test_internvl_tiling_matches_the_published_algorithm(shape):
    from transformers import GotOcr2ImageProcessorPil

    processor = GotOcr2ImageProcessorPil(size={"height": 16, "width": 16}, min_patches=1, max_patches=12)
    transform = PretrainedImageTransform(processor, "internvl")
    gen = np.random.default_rng(shape[0] * 1000 + shape[1])
    image = Image.fromarray(gen.integers(0, 256, (shape[1], shape[0], 3), dtype=np.uint8))
    got = transform.tiles(image)  # [n, 3, 16, 16]
    expected = _internvl_tiles_reference(image, 16, transform.mean, transform.std)
    assert got.shape == expected.shape
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)
    assert transform(image).shape == (3, 16, 16)
    with pytest.raises(TrainError, match="InternVL's preprocessing"):
        PretrainedImageTransform(processor, "llava").tiles(image)


def test_patch_merger_projector_matches_a_float64_reference_on_odd_grids():
    cfg = PatchMergerConfig(input_dim=6, output_dim=5, merge_size=2, seed=1)
    proj = PatchMergerProjector(cfg).double()
    with torch.no_grad():
        proj.ln_q.weight.normal_()
    grids = [(2, 4), (4, 6)]
    feats = [torch.randn(h * w, 6, dtype=torch.float64) for h, w in grids]
    thw = torch.tensor([[1, h, w] for h, w in grids])
    cu = torch.tensor([0, 8, 32])
    out = proj(torch.cat(feats), cu_seqlens=cu, grid_thw=thw)
    assert out.lengths.tolist() == [2, 6]
    w1, b1, w2, b2 = proj.mlp[0].weight, proj.mlp[0].bias, proj.mlp[2].weight, proj.mlp[2].bias
    for i, ((h, w), x) in enumerate(zip(grids, feats)):
        x = x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.eps) * proj.ln_q.weight
        grid = x.reshape(h, w, 6)
        for r in range(h // 2):
            for c in range(w // 2):
                block = torch.cat([grid[2 * r + dy, 2 * c + dx] for dy in (0, 1) for dx in (0, 1)])
                hidden = torch.nn.functional.gelu(w1 @ block + b1)
                torch.testing.assert_close(out.tokens[i, r * (w // 2) + c], w2 @ hidden + b2)
    assert proj.num_parameters() == sum(p.numel() for p in proj.parameters())
    assert proj.num_output_tokens(grid=(6, 10)) == 15
