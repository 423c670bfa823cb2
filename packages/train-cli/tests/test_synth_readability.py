"""Synthetic data: Hangul renders as glyphs, and every answer can be read back from the pixels."""

import json
import random
import warnings

import numpy as np
import pytest
from fontTools.ttLib import TTFont
from PIL import Image
from scipy import ndimage

from tbi_train.synth import _vocab as vocab
from tbi_train.synth import generate_synthetic
from tbi_train.synth._fonts import FontBook
from tbi_train.synth.chart import BAR_COLOR, make_chart
from tbi_train.synth.config import DEFAULT_FONT


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = generate_synthetic(
        tmp_path_factory.mktemp("synth") / "data", n=90, seed=11, image_size=192, num_frames=5
    )
    out = json.loads((root / "train.json").read_text(encoding="utf-8"))
    out += json.loads((root / "val.json").read_text(encoding="utf-8"))
    return root, out


def _pixels(root, record):
    return np.asarray(Image.open(root / record["image"]).convert("RGB")).astype(int)


def _mask(pixels, rgb, tol=40):
    return np.abs(pixels - np.array(rgb)).sum(-1) <= tol


def test_font_has_every_hangul_glyph_the_generator_draws():
    cmap = TTFont(DEFAULT_FONT, lazy=True).getBestCmap()
    chars = {ch for s in vocab.all_korean_strings() for ch in s if not ch.isspace()}
    assert any("\uac00" <= ch <= "\ud7a3" for ch in chars)
    missing = sorted(ch for ch in chars if ord(ch) not in cmap)
    assert missing == []


def test_hangul_renders_as_distinct_glyphs_not_notdef_boxes():
    font = FontBook(DEFAULT_FONT).pil(32)
    notdef = font.getmask("\ue000")  # a private-use code point the font lacks: drawn as the notdef box
    notdef_bytes = bytes(notdef)
    seen = set()
    for ch in "한국어사과출구":
        mask = font.getmask(ch)
        assert mask.getbbox() is not None
        data = bytes(mask)
        assert data != notdef_bytes, ch
        seen.add(data)
    assert len(seen) == 7


def test_matplotlib_korean_labels_have_no_missing_glyph_warnings():
    fonts = FontBook(DEFAULT_FONT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(4):
            make_chart(random.Random(i), "ko", 160, fonts)
    assert not [w for w in caught if "missing" in str(w.message).lower()]


def test_bar_heights_are_proportional_to_answer_values(records):
    root, recs = records
    bars = [r for r in recs if r["task"] == "chart" and r["truth"]["kind"] == "bar"]
    assert len(bars) >= 3
    for r in bars:
        labels, values = r["truth"]["labels"], r["truth"]["values"]
        blobs, n = ndimage.label(_mask(_pixels(root, r), BAR_COLOR, tol=10))
        assert n == len(values), r["id"]
        slices = sorted(ndimage.find_objects(blobs), key=lambda s: s[1].start)
        heights = np.array([s[0].stop - s[0].start for s in slices], float)
        per_unit = heights / np.array(values, float)
        assert per_unit.max() - per_unit.min() <= 2.0 / min(values) + 0.05 * per_unit.mean(), r["id"]
        answer = r["answers"][0]
        if answer.isdigit():
            asked = [lab for lab in labels if lab in r["conversations"][0]["value"]]
            assert str(values[labels.index(asked[-1])]) == answer
        else:
            tallest = int(np.argmax(heights))
            assert labels[tallest] == answer


def test_count_answers_equal_connected_shapes_of_the_colour(records):
    root, recs = records
    counts = [r for r in recs if r["task"] == "count"]
    assert counts
    for r in counts:
        _, n = ndimage.label(_mask(_pixels(root, r), r["truth"]["color_rgb"]))
        assert str(n) == r["answers"][0], r["id"]


def test_color_answer_is_the_colour_at_the_shape_centre(records):
    root, recs = records
    names = {ko: rgb for ko, _, rgb in vocab.COLORS} | {en: rgb for _, en, rgb in vocab.COLORS}
    colors = [r for r in recs if r["task"] == "color" and "image" in r]
    assert colors
    for r in colors:
        cx, cy = r["truth"]["centre"]
        assert tuple(_pixels(root, r)[cy, cx]) == names[r["answers"][0]], r["id"]


def _ink_size(mask):
    ys, xs = np.nonzero(mask)
    return xs.max() - xs.min() + 1, ys.max() - ys.min() + 1


@pytest.mark.parametrize("task", ["ocr", "doc", "table"])
def test_text_answers_are_drawn_where_the_record_says(records, task):
    root, recs = records
    fonts = FontBook(DEFAULT_FONT)
    chosen = [r for r in recs if r["task"] == task]
    assert chosen
    for r in chosen:
        answer, meta = r["answers"][0], r["truth"]
        if task == "table":
            row, col = meta["asked"]
            assert meta["rows"][row - 1][col] == answer
            x0, y0, x1, y1, size = meta["cells"][f"{row},{col}"]
            text = answer
        else:
            text = next(t for t in meta["boxes"] if answer in t)
            x0, y0, x1, y1 = meta["boxes"][text]
            size = meta.get("font_size")
        crop = _pixels(root, r)[y0:y1, x0:x1]
        ink = crop.sum(-1) < 3 * 150
        assert ink.any(), r["id"]
        if task != "doc":
            reference = np.asarray(fonts.pil(size).getmask(text)).reshape(
                fonts.pil(size).getmask(text).size[::-1]
            )
            ref_w, ref_h = _ink_size(reference > 128)
            w, h = _ink_size(ink)
            assert abs(w - ref_w) <= 2 and abs(h - ref_h) <= 2, (r["id"], (w, h), (ref_w, ref_h))


def test_video_frames_show_the_shape_moving_as_captioned(records):
    root, recs = records
    videos = [r for r in recs if r["source"] == "synth/video"]
    assert videos
    axis = {"right": (0, 1), "left": (0, -1), "down": (1, 1), "up": (1, -1)}
    for r in videos:
        meta = r["truth"]
        frames = sorted((root / r["video"]).glob("*.png"))
        positions = []
        for f, (cx, cy) in zip(frames, meta["centres"]):
            px = np.asarray(Image.open(f).convert("RGB")).astype(int)
            assert tuple(px[cy, cx]) == tuple(meta["color_rgb"])
            ys, xs = np.nonzero(_mask(px, meta["color_rgb"]))
            positions.append((xs.mean(), ys.mean()))
        which, sign = axis[meta["direction"]]
        along = np.array([p[which] for p in positions]) * sign
        assert np.all(np.diff(along) > 0), r["id"]
        if r["task"] == "caption":
            assert r["answers"][0] == r["caption"]
