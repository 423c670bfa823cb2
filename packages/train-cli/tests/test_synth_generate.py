"""Synthetic generator: determinism, layout, split, atomic writes, option errors."""

import json
from pathlib import Path

import pytest
from PIL import Image

from tbi_train.synth import SynthError, generate_synthetic
from tbi_train.synth import generate as gen_module
from tbi_train.synth.config import TASKS


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    """60 synthetic records (every scene kind, both languages), 160 px, 4-frame videos."""
    return generate_synthetic(
        tmp_path_factory.mktemp("synth") / "data", n=60, seed=3, image_size=160, num_frames=4
    )


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    a = generate_synthetic(tmp_path / "a", n=16, seed=7, image_size=128, num_frames=3)
    b = generate_synthetic(tmp_path / "b", n=16, seed=7, image_size=128, num_frames=3)
    c = generate_synthetic(tmp_path / "c", n=16, seed=8, image_size=128, num_frames=3)
    tree_a, tree_b, tree_c = _tree(a), _tree(b), _tree(c)
    assert tree_a == tree_b
    assert len(tree_a) > 16
    png_a = {k: v for k, v in tree_a.items() if k.endswith(".png")}
    png_c = {k: v for k, v in tree_c.items() if k.endswith(".png")}
    assert png_a != png_c


def test_layout_split_and_manifest(synth_dir):
    train = json.loads((synth_dir / "train.json").read_text(encoding="utf-8"))
    val = json.loads((synth_dir / "val.json").read_text(encoding="utf-8"))
    manifest = json.loads((synth_dir / "manifest.json").read_text(encoding="utf-8"))
    assert len(train) + len(val) == 60
    assert len(val) == 6  # round(60 * 0.1), spread evenly
    assert not {r["id"] for r in train} & {r["id"] for r in val}
    assert manifest["counts"]["train"]["total"] == len(train)
    for rel, digest in manifest["files"].items():
        assert (synth_dir / rel).is_file(), rel
        assert len(digest) == 64
    records = train + val
    assert {r["language"] for r in records} == {"ko", "en"}
    assert {r["task"] for r in records} == {"ocr", "chart", "table", "doc", "count", "color", "caption"}
    kinds = {r["source"] for r in records}
    for kind in kinds:
        langs = [r["language"] for r in records if r["source"] == kind]
        assert langs.count("ko") == round(len(langs) * 0.5), kind  # ko_fraction holds inside every scene kind
    for r in records:
        human, gpt = r["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\n")
        assert human["value"].count("<image>") == 1
        assert gpt == {"from": "gpt", "value": r["answers"][0]}
        assert len(r["answers"][0]) <= 60
        if "image" in r:
            assert Image.open(synth_dir / r["image"]).size == (160, 160)
        else:
            frames = sorted((synth_dir / r["video"]).glob("*.png"))
            assert len(frames) == 4
            assert r["source"] == "synth/video"


def test_korean_records_ask_in_korean_and_english_in_english(synth_dir):
    records = json.loads((synth_dir / "train.json").read_text(encoding="utf-8"))

    def has_hangul(s):
        return any("\uac00" <= ch <= "\ud7a3" for ch in s)

    for r in records:
        question = r["conversations"][0]["value"]
        assert has_hangul(question) == (r["language"] == "ko"), r["id"]


def test_existing_output_is_refused_then_replaced_with_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(SynthError, match="overwrite"):
        generate_synthetic(out, n=4, image_size=96)
    assert (out / "keep.txt").exists()
    generate_synthetic(out, n=4, image_size=96, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert (out / "train.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def boom(kind, lang, index, config, fonts):
        calls.append(index)
        if index == 3:
            raise RuntimeError("disk full")
        return real(kind, lang, index, config, fonts)

    real = gen_module.build_scene
    monkeypatch.setattr(gen_module, "build_scene", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_synthetic(tmp_path / "out", n=6, image_size=96)
    assert calls == [0, 1, 2, 3]
    assert list(tmp_path.iterdir()) == []


def test_bad_options_name_the_fix(tmp_path):
    with pytest.raises(SynthError, match="image_size"):
        generate_synthetic(tmp_path / "o", n=2, imag_size=64)
    with pytest.raises(SynthError, match="fonts-nanum"):
        generate_synthetic(tmp_path / "o", n=2, font_path=str(tmp_path / "none.ttf"))
    with pytest.raises(SynthError, match="did you mean 'chart'"):
        generate_synthetic(tmp_path / "o", n=2, task_weights={"charts": 1.0})
    with pytest.raises(SynthError, match="at least 96"):
        generate_synthetic(tmp_path / "o", n=2, image_size=32)
    assert not (tmp_path / "o").exists()


def test_task_weights_select_kinds_and_plan_covers_counts():
    cfg = gen_module.SynthConfig(n=10, task_weights={"video": 1.0, "chart": 1.0}, ko_fraction=0.2)
    plan = gen_module.plan_records(cfg)
    assert sorted(plan) == sorted(
        [("chart", "ko")] + [("chart", "en")] * 4 + [("video", "ko")] + [("video", "en")] * 4
    )
    full = gen_module.plan_records(gen_module.SynthConfig(n=len(TASKS)))
    assert {kind for kind, _ in full} == set(TASKS)


@pytest.mark.parametrize(
    ("n", "fraction", "expected"), [(10, 0.1, 1), (80, 0.1, 8), (7, 0.5, 4), (1, 0.5, 0), (5, 0.0, 0)]
)
def test_validation_indices_count_and_range(n, fraction, expected):
    idx = gen_module.validation_indices(n, fraction)
    assert len(idx) == expected
    assert all(0 <= i < n for i in idx)
