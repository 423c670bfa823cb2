"""Error-analysis gallery on fake results with real tiny images."""

import base64
import io
import re

import pytest
from PIL import Image

from tbi_evalbench import EvalbenchError, SampleResult, error_gallery, write_error_gallery


def _images(root):
    (root / "img").mkdir(parents=True)
    Image.new("RGB", (300, 150), (255, 0, 0)).save(root / "img" / "red.png")
    Image.new("RGB", (40, 80), (0, 0, 255)).save(root / "img" / "blue.jpg", quality=95)
    Image.new("RGBA", (20, 20), (0, 255, 0, 128)).save(root / "img" / "green.png")
    Image.new("P", (10, 10), 3).save(root / "img" / "palette.gif")
    (root / "img" / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not an image")
    buf = io.BytesIO()
    Image.new("L", (16, 16), 200).save(buf, format="PNG")
    return buf.getvalue()


def _results(gray_png):
    doc = [
        {"id": f"d{i}", "question": f"What is field {i}?", "prediction": f"p{i}", "answers": [f"a{i}"],
         "score": s, "benchmark": "DocVQA", "language": "en", "image": img}
        for i, (s, img) in enumerate(
            [(0.9, "img/red.png"), (0.0, "img/blue.jpg"), (0.3, "img/green.png"), (0.0, "img/palette.gif"), (1.0, None)]
        )
    ]  # fmt: skip
    ko = [
        {"id": "k1", "question": "이 표의 합계는?", "prediction": "<script>alert(1)</script> | 42", "answers": "43",
         "score": 0.2, "benchmark": "K-DTCBench", "language": "ko", "image": gray_png},
        {"id": "k2", "question": "영상에서 무엇이 보이나요?", "prediction": "고양이", "answers": ["개"], "score": 0.0,
         "benchmark": "K-DTCBench", "language": "ko", "image": "img/clip.mp4"},
    ]  # fmt: skip
    baseline = [dict(r, score=1.0 - r["score"]) for r in doc[:3]]
    return {"F4": doc + ko, "A1": [SampleResult(**r) for r in baseline]}


def _thumbs(html_text):
    out = []
    for b64 in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html_text):
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            im.load()
            out.append(im.copy())
    return out


def test_worst_per_experiment_benchmark_language(tmp_path):
    gray = _images(tmp_path)
    g = error_gallery(_results(gray), k=3, image_root=tmp_path, thumb_px=32)
    worst = {key: [r.id for r in recs] for key, recs in g.worst.items()}
    assert worst == {
        ("F4", "DocVQA", "en"): [
            "d1",
            "d3",
            "d2",
        ],  # lowest first, ties by id; k=3 drops d0 (0.9) and d4 (1.0)
        ("F4", "K-DTCBench", "ko"): ["k2", "k1"],
        ("A1", "DocVQA", "en"): ["d0", "d2", "d1"],
    }
    md = g.markdown
    assert md.startswith("# Error analysis\n")
    assert "| F4 | DocVQA | en | 5 | 0.4400 |" in md and "| A1 | DocVQA | en | 3 | 0.6000 |" in md
    assert "### DocVQA · en (n=5, mean 0.4400)" in md and "### K-DTCBench · ko (n=2, mean 0.1000)" in md
    assert md.index("## F4") < md.index("### K-DTCBench") < md.index("## A1")
    d1_row = next(line for line in md.splitlines() if line.startswith("| 1 | d1 |"))
    assert "| 0.0000 | What is field 1? | p1 | a1 | A1 1.00 | `img/blue.jpg` |" in d1_row
    assert "| d4 |" not in md and "| d0 | 0.9000" not in md
    # markdown table cells escape the pipe and keep raw HTML inert
    assert "&lt;script&gt;alert(1)&lt;/script&gt; \\| 42" in md and "<script>" not in md


def test_html_fragment_has_real_thumbnails(tmp_path):
    gray = _images(tmp_path)
    g = error_gallery(_results(gray), k=3, image_root=tmp_path, thumb_px=32)
    page = g.html
    assert page.startswith('<section class="tbi-error-gallery">') and "<body" not in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; | 42" in page
    assert "<em>no preview</em> img/clip.mp4" in page
    thumbs = _thumbs(page)
    # F4 DocVQA shows blue, palette, green; K-DTCBench the gray bytes; A1 red, green, blue (shared thumbnails)
    assert len(thumbs) == 7
    assert all(max(im.size) <= 32 for im in thumbs)
    sizes_and_colours = [
        (im.size, im.convert("RGB").getpixel((im.width // 2, im.height // 2))) for im in thumbs
    ]
    blue, palette, green, gray_t, red = (
        sizes_and_colours[0], sizes_and_colours[1], sizes_and_colours[2], sizes_and_colours[3], sizes_and_colours[4]
    )  # fmt: skip
    assert blue[0] == (16, 32) and blue[1][2] > 200 and blue[1][0] < 40  # 40x80 JPEG, aspect kept
    assert red == ((32, 16), (255, 0, 0))
    assert green[0] == (20, 20) and thumbs[2].mode == "RGBA"  # small images are not enlarged; alpha kept
    assert gray_t == ((16, 16), (200, 200, 200))
    assert palette[0] == (10, 10)


def test_write_error_gallery_atomic(tmp_path):
    gray = _images(tmp_path)
    out = tmp_path / "report"
    md_path, html_path = write_error_gallery(_results(gray), out, image_root=tmp_path, k=2)
    assert (md_path.name, html_path.name) == ("errors.md", "errors.html")
    assert (
        md_path.read_text(encoding="utf-8")
        == error_gallery(_results(gray), image_root=tmp_path, k=2).markdown
    )
    assert sorted(p.name for p in out.iterdir()) == ["errors.html", "errors.md"]
    # a missing image stops the run before anything is written
    bad = {"E": [{"id": "x", "question": "q", "prediction": "p", "answers": ["a"], "score": 0.0,
                  "benchmark": "B", "image": "img/missing.png"}]}  # fmt: skip
    with pytest.raises(EvalbenchError, match=r"experiment 'E' id 'x': image .*missing.png.* does not exist"):
        write_error_gallery(bad, tmp_path / "other", image_root=tmp_path)
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([{"id": "x", "question": "q"}], r"record 0: missing \['prediction', 'answers', 'score', 'benchmark'\]"),
        ([{"id": "x", "question": "q", "prediction": "p", "answers": [], "score": float("nan"), "benchmark": "B"}],
         "score must be a finite number"),
        ([{"id": "x", "question": "q", "prediction": "p", "answers": [], "score": "0.5", "benchmark": "B"}],
         "score must be a finite number"),
        ([{"id": "x", "question": "q", "prediction": "p", "answers": [], "score": 0.5, "benchmark": "B"}] * 2,
         "record 1: duplicate id 'x' in benchmark 'B'"),
        (["not a record"], "expected a SampleResult or a mapping"),
    ],
)  # fmt: skip
def test_bad_records(records, message):
    with pytest.raises(EvalbenchError, match=message):
        error_gallery({"E": records})


def test_bad_options():
    with pytest.raises(EvalbenchError, match="no experiments"):
        error_gallery({})
    with pytest.raises(EvalbenchError, match="need k >= 1"):
        error_gallery({"E": []}, k=0)


def test_long_text_is_clipped():
    rec = SampleResult("x", "word " * 100, "p", ["a"], 0.0, "B")
    g = error_gallery({"E": [rec]}, max_chars=20)
    assert "| word word word word… |" in g.markdown
