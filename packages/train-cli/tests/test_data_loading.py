"""LLaVA JSON/JSONL loading: good records load, every kind of bad record is skipped, counted and reported."""

import json

import pytest
from PIL import Image

from tbi_train.data import DataError, check_dataset, load_conversations


def _image(path, color=(200, 10, 10), size=(32, 24)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _rec(rid, image="images/a.png", q="<image>\nWhat color?", a="red", **extra):
    rec = {"id": rid, "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}], **extra}
    if image is not None:
        rec["image"] = image
    return rec


@pytest.fixture()
def root(tmp_path):
    _image(tmp_path / "images" / "a.png")
    _image(tmp_path / "images" / "b.png", (10, 200, 10))
    (tmp_path / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    _image(tmp_path.parent / "outside.png")
    return tmp_path


def test_good_records_load_with_images_languages_and_answers(root):
    records = [
        _rec("img", language="en", task="color", answers=["red", "Red"]),
        {
            "id": "two",
            "images": ["images/a.png", "images/b.png"],
            "conversations": [
                {"from": "human", "value": "<image> and <image>: 두 색은?"},
                {"from": "gpt", "value": "빨강, 초록"},
            ],
        },
        {
            "id": "chat",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Color?"}]},
                {"role": "assistant", "content": "red"},
            ],
            "image": "images/a.png",
        },
        _rec("text", image=None, q="Say hi", a="hi"),
    ]
    (root / "d.json").write_text(json.dumps(records, ensure_ascii=False))
    ds = load_conversations(root / "d.json")
    assert len(ds) == 4 and ds.bad_report.bad == 0
    s = ds[0]
    assert s.id == "img" and len(s.images) == 1 and s.images[0].getpixel((0, 0)) == (200, 10, 10)
    assert s.answers == ["red", "Red"] and s.task == "color" and s.language == "en"
    two = ds[1]
    assert [im.getpixel((1, 1)) for im in two.images] == [(200, 10, 10), (10, 200, 10)]
    assert two.language == "ko" and two.answers == ["빨강, 초록"] and two.meta["media_frames"] == [1, 1]
    chat = ds[2]
    assert [t["from"] for t in chat.conversations] == ["system", "human", "gpt"]
    assert chat.conversations[1]["value"] == "<image>Color?"
    assert ds[3].images == [] and ds.describe(3).modality == "text" and ds.describe(0).modality == "image"


def test_every_kind_of_bad_record_is_skipped_counted_and_named(root):
    good = [_rec(f"ok{i}") for i in range(10)]
    bad = [
        _rec("missing", image="images/nope.png"),
        _rec("corrupt", image="images/corrupt.png"),
        _rec("noanswer", a="  "),
        _rec("mismatch", q="What color?"),
        _rec("escape", image="../outside.png"),
        _rec("absolute", image=str(root.parent / "outside.png")),
        _rec("ok0"),
        {"id": "noconv", "image": "images/a.png"},
        ["not", "a", "record"],
    ]
    lines = [json.dumps(r) for r in good + bad] + ["{broken json"]
    (root / "d.jsonl").write_text("\n".join(lines) + "\n")
    ds = load_conversations(root / "d.jsonl", max_bad_fraction=0.5)
    assert len(ds) == 10
    report = ds.bad_report
    assert report.total == 20 and report.bad == 10
    assert report.counts == {
        "missing_media": 1,
        "corrupt_media": 1,
        "no_answer": 1,
        "placeholder_mismatch": 1,
        "path_outside_root": 2,
        "duplicate_id": 1,
        "bad_conversation": 1,
        "not_a_record": 1,
        "bad_json": 1,
    }
    assert report.examples["path_outside_root"][0].startswith("escape")
    assert report.examples["bad_json"][0].startswith("d.jsonl:20")
    text = report.summary()
    assert "10 of 20" in text and "missing" in text and "mismatch" in text


def test_too_many_bad_samples_stop_with_the_ids(root):
    records = [_rec("good"), _rec("gone1", image="images/x.png"), _rec("gone2", image="images/y.png")]
    (root / "d.json").write_text(json.dumps(records))
    with pytest.raises(DataError, match="gone1") as info:
        load_conversations(root / "d.json", max_bad_fraction=0.5)
    assert "max_bad_fraction=0.5" in str(info.value)
    assert len(load_conversations(root / "d.json", max_bad_fraction=0.7)) == 1


def test_an_image_broken_after_loading_is_replaced_not_fatal(root):
    _image(root / "images" / "late.png")
    records = [_rec("first", image="images/late.png"), _rec("second")]
    (root / "d.json").write_text(json.dumps(records))
    ds = load_conversations(root / "d.json")
    (root / "images" / "late.png").write_bytes(b"garbage")
    sample = ds[0]
    assert sample.id == "second"
    assert ds.bad_report.counts == {"corrupt_media": 1}
    assert [ds[i].id for i in range(2)] == ["second", "second"]
    (root / "images" / "a.png").unlink()
    with pytest.raises(DataError, match="no sample"):
        ds[1]


def test_image_root_and_replicated_frames(root, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere")
    (other / "d.json").write_text(json.dumps([_rec("img")]))
    ds = load_conversations(other / "d.json", image_root=root, replicate_image_frames=4)
    s = ds[0]
    assert len(s.images) == 4 and s.meta["media_frames"] == [4]
    with pytest.raises(DataError, match="unusable"):
        load_conversations(other / "d.json")  # images are not under the JSON's folder


def test_unreadable_files_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_conversations(tmp_path / "nope.json")
    with pytest.raises(DataError, match=r"train\.json"):
        load_conversations(tmp_path)
    (tmp_path / "d.json").write_text('{"id": 1}')
    with pytest.raises(DataError, match="expected a list"):
        load_conversations(tmp_path / "d.json")
    (tmp_path / "e.json").write_text("[{")
    with pytest.raises(DataError, match="not valid JSON"):
        load_conversations(tmp_path / "e.json")


def test_check_dataset_reports_without_raising(root):
    records = [_rec("good"), _rec("gone", image="images/x.png"), _rec("ko", q="<image>\n무슨 색?", a="빨강")]
    (root / "d.json").write_text(json.dumps(records, ensure_ascii=False))
    report = check_dataset(root / "d.json")
    assert not report.ok
    assert report.files["d.json"].counts == {"missing_media": 1}
    assert report.counts["d.json"]["language"] == {"en": 1, "ko": 1}
    assert "gone" in report.summary()
    assert report.to_dict()["files"]["d.json"]["bad"] == 1
