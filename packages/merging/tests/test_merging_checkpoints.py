"""Streaming merge of whole checkpoints: layout, report, reproducibility, policies, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tbi_merging import (
    ComponentRule,
    MergeConfig,
    MergeError,
    ModelSpec,
    dare_keep_mask,
    merge_checkpoints,
    merge_tensors,
)


def _load_dir(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _config(toy, **kw):
    models = kw.pop("models", [ModelSpec("en", toy["en"], 0.6), ModelSpec("ko", toy["ko"], 0.4)])
    return MergeConfig(base=toy["base"], models=models, out=toy["root"] / "out", **kw)


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".") or p.name == "out")


def test_streaming_merge_equals_core_and_keeps_layout(toy):
    out = merge_checkpoints(_config(toy, method="dare_ties", drop_rate=0.5, density=0.8, seed=42))
    base_index = json.loads((toy["base"] / "model.safetensors.index.json").read_text())
    out_index = json.loads((out / "model.safetensors.index.json").read_text())
    assert out_index["weight_map"] == base_index["weight_map"]
    assert (out / "config.json").read_text() == (toy["base"] / "config.json").read_text()
    assert (out / "tokenizer.json").is_file()
    merged = _load_dir(out)
    t = toy["tensors"]
    for name, b in t["base"].items():
        if not b.is_floating_point():
            assert torch.equal(merged[name], b)
            continue
        expected = merge_tensors(
            b,
            {"en": t["en"][name], "ko": t["ko"][name]},
            "dare_ties",
            {"en": 0.6, "ko": 0.4},
            drop_rate=0.5,
            density=0.8,
            normalize=True,
            seed=42,
            tensor_name=name,
        )
        assert torch.equal(merged[name], expected), name
    report = json.loads((out / "merge_report.json").read_text())
    assert report["summary"]["merged"] == 5 and report["summary"]["copied_from_base"] == 1
    entry = report["tensors"]["layers.0.w"]
    # DARE keeps ~50% of the 35 deltas, then the trim keeps the top int(0.8 * 35) = 28 of the masked deltas
    dare_kept = int(dare_keep_mask(35, 0.5, seed=42, tensor_name="layers.0.w", model_name="en").sum())
    assert entry["kept_fraction"]["en"] == round(min(dare_kept, 28) / 35, 6)
    assert 0.0 <= entry["sign_conflict_fraction"] <= 1.0
    assert _leftovers(toy["root"]) == ["out"]


def test_merge_is_reproducible_and_order_free(toy):
    a = merge_checkpoints(_config(toy, seed=7))
    cfg = _config(toy, seed=7, models=[ModelSpec("ko", toy["ko"], 0.4), ModelSpec("en", toy["en"], 0.6)])
    cfg.out = toy["root"] / "out2"
    b = merge_checkpoints(cfg)
    ta, tb = _load_dir(a), _load_dir(b)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    cfg.out, cfg.seed = toy["root"] / "out3", 8
    assert not torch.equal(_load_dir(merge_checkpoints(cfg))["layers.0.w"], ta["layers.0.w"])


def test_component_rules(toy):
    rules = [
        ComponentRule("layers.1.*", method="base"),
        ComponentRule("layers.0.*", method="task_arithmetic", weights={"ko": 1.0}),
    ]
    out = merge_checkpoints(_config(toy, components=rules, normalize=None))
    merged, t = _load_dir(out), toy["tensors"]
    assert torch.equal(merged["layers.1.w"], t["base"]["layers.1.w"])
    ta = (
        t["base"]["layers.0.w"]
        + 0.6 * (t["en"]["layers.0.w"] - t["base"]["layers.0.w"])
        + (t["ko"]["layers.0.w"] - t["base"]["layers.0.w"])
    )
    torch.testing.assert_close(merged["layers.0.w"], ta)
    report = json.loads((out / "merge_report.json").read_text())
    assert report["tensors"]["layers.0.w"]["method"] == "task_arithmetic"
    assert report["tensors"]["embed_tokens.weight"]["method"] == "dare_ties"


def test_bf16_inputs_write_bf16(tmp_path, write_ckpt, make_tensors):
    base = make_tensors(0, dtype=torch.bfloat16)
    ft = make_tensors(1, base)
    cfg = MergeConfig(
        base=write_ckpt(tmp_path / "b", base),
        out=tmp_path / "o",
        method="ties",
        density=0.5,
        models=[ModelSpec("a", write_ckpt(tmp_path / "a", ft))],
    )
    merged = _load_dir(merge_checkpoints(cfg))
    assert merged["layers.0.w"].dtype == torch.bfloat16
    assert not (tmp_path / "o" / "model.safetensors.index.json").exists()


# ---- unshared tensors -------------------------------------------------------------------------------


def test_shape_mismatch_errors_by_default_and_take_copies(toy, write_ckpt):
    t = dict(toy["tensors"]["ko"])
    t["lm_head.weight"] = torch.randn(9, 4)
    t["extra_head.weight"] = torch.randn(2, 4)
    ko = write_ckpt(toy["root"] / "ko_big", t)
    models = [ModelSpec("en", toy["en"], 0.6), ModelSpec("ko", ko, 0.4)]
    with pytest.raises(
        MergeError, match=r"'lm_head.weight' has shape \(9, 4\) in model 'ko'.*\(6, 4\) in the base"
    ):
        merge_checkpoints(_config(toy, models=models))
    assert _leftovers(toy["root"]) == []
    out = merge_checkpoints(_config(toy, models=models, unshared="take", take_from="ko"))
    merged = _load_dir(out)
    assert torch.equal(merged["lm_head.weight"], t["lm_head.weight"])
    assert torch.equal(merged["extra_head.weight"], t["extra_head.weight"])
    report = json.loads((out / "merge_report.json").read_text())
    assert report["tensors"]["extra_head.weight"] == {"action": "take", "from": "ko"}


def test_missing_tensor_in_model_is_named(toy, write_ckpt):
    t = dict(toy["tensors"]["en"])
    del t["layers.0.b"]
    en = write_ckpt(toy["root"] / "en_missing", t)
    with pytest.raises(MergeError, match=r"'layers.0.b' is in the base.*not in model 'en'.*--unshared take"):
        merge_checkpoints(_config(toy, models=[ModelSpec("en", en), ModelSpec("ko", toy["ko"])]))


def test_vocabulary_alignment_by_token_string(tmp_path, write_ckpt):
    gen = torch.Generator().manual_seed(0)
    base_vocab = ["a", "b", "c", "d"]
    ko_vocab = ["b", "a", "가", "c", "d", "나"]  # reordered and extended
    base = {"embed_tokens.weight": torch.randn(4, 3, generator=gen), "w": torch.randn(2, 2, generator=gen)}
    en = {k: v + 1.0 for k, v in base.items()}  # same tokenizer as the base
    ko_rows = {tok: base["embed_tokens.weight"][base_vocab.index(tok)] + 10.0 for tok in base_vocab}
    ko_emb = torch.stack(
        [ko_rows.get(tok, torch.full((3,), float(i) * 100)) for i, tok in enumerate(ko_vocab)]
    )
    ko = {"embed_tokens.weight": ko_emb, "w": base["w"] + 10.0}
    cfg = MergeConfig(
        base=write_ckpt(tmp_path / "base", base, vocab=base_vocab),
        models=[
            ModelSpec("en", write_ckpt(tmp_path / "en", en, vocab=base_vocab), 0.5),
            ModelSpec("ko", write_ckpt(tmp_path / "ko", ko, vocab=ko_vocab), 0.5),
        ],
        out=tmp_path / "out",
        method="task_arithmetic",
        normalize=False,
        align_vocab="ko",
    )
    out = merge_checkpoints(cfg)
    emb = _load_dir(out)["embed_tokens.weight"]
    assert emb.shape == (6, 3)
    for row, tok in enumerate(ko_vocab):
        if tok in base_vocab:  # shared: base + 0.5 * 1 + 0.5 * 10
            torch.testing.assert_close(emb[row], base["embed_tokens.weight"][base_vocab.index(tok)] + 5.5)
        else:  # new: verbatim from ko
            torch.testing.assert_close(emb[row], ko_emb[row])
    assert json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]["가"] == 2
    assert (
        json.loads((out / "merge_report.json").read_text())["tensors"]["embed_tokens.weight"]["rows_from_ko"]
        == 2
    )


# ---- bad inputs: error naming file and tensor, nothing left behind ------------------------------------


def _expect_error(toy, match, **kw):
    with pytest.raises(MergeError, match=match):
        merge_checkpoints(_config(toy, **kw))
    assert _leftovers(toy["root"]) == []


def test_missing_safetensors(toy):
    for f in toy["en"].glob("*.safetensors*"):
        f.unlink()
    _expect_error(toy, r"model 'en'.*no model.safetensors or model.safetensors.index.json in .*en")


def test_truncated_shard(toy):
    shard = sorted(toy["ko"].glob("*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 9])
    _expect_error(toy, rf"{shard.name} is truncated: tensor '[^']+' ends at byte")


def test_truncated_header(toy):
    shard = sorted(toy["ko"].glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:20])
    _expect_error(toy, rf"{shard.name} is truncated: its header claims")


def test_shard_in_index_but_absent(toy):
    shard = sorted(toy["en"].glob("*.safetensors"))[1]
    shard.unlink()
    _expect_error(toy, rf"model 'en': shard {shard.name} named in .*index.json is missing")


def test_dtype_mismatch(toy, write_ckpt):
    t = {k: (v.half() if k == "layers.0.w" else v) for k, v in toy["tensors"]["ko"].items()}
    ko = write_ckpt(toy["root"] / "ko_half", t)
    models = [ModelSpec("en", toy["en"]), ModelSpec("ko", ko)]
    _expect_error(toy, r"'layers.0.w' is float16 in model 'ko' \(.*ko_half.*\) but float32", models=models)
    merged = _load_dir(merge_checkpoints(_config(toy, models=models, allow_dtype_mismatch=True)))
    assert merged["layers.0.w"].dtype == torch.float32


def test_nan_input(toy, write_ckpt):
    t = dict(toy["tensors"]["ko"])
    t["layers.1.w"] = t["layers.1.w"].clone()
    t["layers.1.w"][0, 1, 2] = float("inf")
    ko = write_ckpt(toy["root"] / "ko_nan", t)
    _expect_error(
        toy,
        r"'layers.1.w' of model 'ko' has a NaN/Inf.*ko: [^;]*ko_nan[^;]*safetensors",
        models=[ModelSpec("en", toy["en"]), ModelSpec("ko", ko)],
    )


def test_existing_output_refused_unless_overwrite(toy):
    out = toy["root"] / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(MergeError, match="already exists; pass --overwrite"):
        merge_checkpoints(_config(toy))
    assert (out / "keep.txt").exists()
    merge_checkpoints(_config(toy, overwrite=True))
    assert not (out / "keep.txt").exists() and (out / "merge_report.json").exists()
    assert _leftovers(toy["root"]) == ["out"]


def test_failure_mid_write_leaves_nothing(toy, write_ckpt):
    # The NaN sits in the last tensor of the last shard: earlier shards are already written to the temp dir.
    t = dict(toy["tensors"]["en"])
    last = list(t)[-2]
    assert t[last].is_floating_point()
    t[last] = torch.full_like(t[last], float("nan"))
    en = write_ckpt(toy["root"] / "en_nan", t, shards=2)
    with pytest.raises(MergeError, match=rf"'{last}' of model 'en'"):
        merge_checkpoints(_config(toy, models=[ModelSpec("en", en), ModelSpec("ko", toy["ko"])]))
    assert _leftovers(toy["root"]) == []


def test_output_is_valid_safetensors_with_metadata(toy):
    out = merge_checkpoints(_config(toy))
    for f in out.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as h:
            assert h.metadata() == {"format": "pt"}


def test_config_validation_messages(toy):
    with pytest.raises(MergeError, match="--take-from ko only applies with --unshared take"):
        _config(toy, take_from="ko")
    with pytest.raises(MergeError, match=r"--unshared take needs --take-from one of \['en', 'ko'\]"):
        _config(toy, unshared="take")
    with pytest.raises(MergeError, match="align_vocab 'zh' is not a model name"):
        _config(toy, align_vocab="zh")
    with pytest.raises(MergeError, match="model names must be unique"):
        _config(toy, models=[ModelSpec("en", toy["en"]), ModelSpec("en", toy["ko"])])


def test_positioned_read_without_preadv_reads_the_same_bytes(tmp_path, monkeypatch):
    """Where os.preadv is missing (e.g. older macOS), reads fall back to os.pread; short reads are reported."""
    import os

    import numpy as np

    from tbi_merging import checkpoint

    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 4)
    fd = os.open(path, os.O_RDONLY)
    try:
        fast = np.empty(100, dtype=np.uint16)
        assert checkpoint._pread_into(fd, fast, 37) == 200
        monkeypatch.delattr(os, "preadv")
        slow = np.empty(100, dtype=np.uint16)
        assert checkpoint._pread_into(fd, slow, 37) == 200
        assert np.array_equal(fast, slow)
        assert checkpoint._pread_into(fd, np.empty(100, dtype=np.uint16), 1000) == 24  # 24 bytes left
    finally:
        os.close(fd)
