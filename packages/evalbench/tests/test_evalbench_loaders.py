"""Every loader on a small file written in the benchmark's published format."""

import base64
import csv
import io
import json

import pytest

from tbi_evalbench import BENCHMARKS, EvalbenchError, load_benchmark


def _png_bytes(color=(255, 0, 0)):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return buf.getvalue()


def _json(path, obj):
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


def _tsv(path, header, rows):
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerow(header)
        w.writerows(rows)
    return path


def test_vqav2(tmp_path):
    q = _json(
        tmp_path / "q.json", {"questions": [{"question_id": 7, "image_id": 42, "question": "What color?"}]}
    )
    a = _json(
        tmp_path / "a.json",
        {
            "annotations": [
                {
                    "question_id": 7,
                    "answers": [{"answer": "red"}] * 10,
                    "answer_type": "other",
                    "question_type": "what color",
                }
            ]
        },
    )
    (s,) = load_benchmark("vqav2", q, annotations=a, image_root=tmp_path)
    assert (s.id, s.answers, s.metric, s.category) == ("7", ["red"] * 10, "vqa_accuracy", "other")
    assert s.image == str(tmp_path / "COCO_val2014_000000000042.jpg")
    with pytest.raises(EvalbenchError, match="annotations="):
        load_benchmark("vqav2", q)


def test_textvqa_docvqa_infovqa(tmp_path):
    t = _json(
        tmp_path / "t.json",
        {"data": [{"question_id": 1, "question": "q", "image_id": "abc", "answers": ["x"] * 10}]},
    )
    assert load_benchmark("textvqa", t)[0].image == "abc.jpg"
    d = _json(
        tmp_path / "d.json",
        {
            "data": [
                {
                    "questionId": 9,
                    "question": "date?",
                    "image": "documents/p.png",
                    "docId": 3,
                    "answers": ["1/2/3"],
                    "question_types": ["form"],
                }
            ]
        },
    )
    (s,) = load_benchmark("docvqa", d, image_root="/data")
    assert (s.id, s.metric, s.image, s.category) == ("9", "anls", "/data/documents/p.png", "form")
    i = _json(
        tmp_path / "i.json",
        {"data": [{"questionId": 5, "question": "q", "image_local_name": "5.jpeg", "answers": ["a", "b"]}]},
    )
    assert load_benchmark("infovqa", i)[0].answers == ["a", "b"]
    bad = _json(tmp_path / "bad.json", {"data": [{"question": "q"}]})
    with pytest.raises(EvalbenchError, match=r"bad.json data\[0\]: missing key 'questionId'"):
        load_benchmark("docvqa", bad)


def test_chartqa_ocrbench(tmp_path):
    c = _json(tmp_path / "test_human.json", [{"imgname": "1.png", "query": "max?", "label": "45"}])
    (s,) = load_benchmark("chartqa", c)
    assert (s.id, s.answers, s.metric, s.category) == (
        "test_human-0",
        ["45"],
        "relaxed_accuracy",
        "test_human",
    )
    o = _json(
        tmp_path / "o.json",
        [
            {
                "dataset_name": "HME100k",
                "id": 3,
                "image_path": "x.jpg",
                "question": "q",
                "answers": "x^2",
                "type": "HME",
            }
        ],
    )
    (s,) = load_benchmark("ocrbench", o)
    assert (s.answers, s.category, s.metric) == (["x^2"], "HME100k", "ocrbench")


def test_mmbench_en_ko_with_base64_and_image_reference(tmp_path):
    img = base64.b64encode(_png_bytes()).decode()
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]
    rows = [
        [1, "Which?", "", "cat", "dog", "", "", "B", "attr", "l2", img],
        [1000001, "Which?", "nan", "dog", "cat", "", "", "A", "attr", "l2", "1"],
    ]
    path = _tsv(tmp_path / "MMBench_DEV_KO.tsv", header, rows)
    a, b = load_benchmark("mmbench", path)
    assert a.language == "ko" and a.metric == "circular_accuracy" and a.choices == {"A": "cat", "B": "dog"}
    assert a.question.endswith("주어진 선택지 중 해당 옵션의 문자로 직접 답하세요.")
    assert a.image == b.image == _png_bytes() and b.meta["index"] == 1000001
    en = _tsv(tmp_path / "MMBench_DEV_EN.tsv", header, rows)
    assert load_benchmark("mmbench", en)[0].language == "en"
    bad = _tsv(tmp_path / "bad.tsv", header, [[1, "q", "", "a", "b", "", "", "E", "c", "l", img]])
    with pytest.raises(EvalbenchError, match=r"bad\.tsv:2: answer 'E'"):
        load_benchmark("mmbench", bad)


def test_mmstar_inline_options(tmp_path):
    img = base64.b64encode(_png_bytes()).decode()
    path = _tsv(tmp_path / "MMStar.tsv", ["index", "question", "answer", "category", "l2_category", "image"],
                [[0, "What is shown?\nOptions: A: a cat, B: a dog, C: a car, D: a cup", "C", "coarse", "x", img]])  # fmt: skip
    (s,) = load_benchmark("mmstar", path)
    assert s.choices == {"A": "a cat", "B": "a dog", "C": "a car", "D": "a cup"} and s.answers == ["C"]
    assert s.question.startswith("What is shown?\nA. a cat")


def test_seedbench_mathvista(tmp_path):
    p = _json(
        tmp_path / "SEED-Bench.json",
        {
            "questions": [
                {
                    "question_id": "101",
                    "question": "q?",
                    "choice_a": "1",
                    "choice_b": "2",
                    "choice_c": "3",
                    "choice_d": "4",
                    "answer": "D",
                    "data_id": "img/1.png",
                    "question_type_id": 3,
                    "data_type": "image",
                }
            ]
        },
    )
    (s,) = load_benchmark("seedbench", p)
    assert (s.answers, s.choices["D"], s.image, s.category) == (["D"], "4", "img/1.png", "3")
    m = _json(
        tmp_path / "testmini.json",
        {
            "1": {
                "question": "How many?",
                "query": "Hint: ...\nHow many?",
                "image": "images/1.jpg",
                "choices": None,
                "precision": None,
                "answer": "3",
                "question_type": "free_form",
                "answer_type": "integer",
                "metadata": {"language": "english", "category": "math-targeted-vqa"},
            }
        },
    )
    (s,) = load_benchmark("mathvista", m)
    assert (s.metric, s.question, s.answers, s.language) == ("mathvista", "Hint: ...\nHow many?", ["3"], "en")
    assert s.meta["answer_type"] == "integer"


def test_wtq_tabfact_charxiv(tmp_path):
    w = _tsv(
        tmp_path / "pristine-unseen-tables.tsv",
        ["id", "utterance", "context", "targetValue"],
        [["nt-0", "which?", "csv/1.csv", "a|b"]],
    )
    (s,) = load_benchmark("wtq", w)
    assert (s.id, s.answers[0], s.meta["targets"], s.image) == ("nt-0", "a|b", ["a", "b"], "csv/1.csv")
    t = _json(tmp_path / "r1.json", {"1-1.html.csv": [["s one", "s two"], [1, 0], "caption"]})
    a, b = load_benchmark("tabfact", t)
    assert (a.id, a.answers, b.answers) == ("1-1.html.csv-0", ["yes", "true"], ["no", "false"])
    bad = _json(tmp_path / "r2.json", {"t": [["s"], [1, 0], "c"]})
    with pytest.raises(EvalbenchError, match="one label per statement"):
        load_benchmark("tabfact", bad)
    c = _json(
        tmp_path / "reasoning_val.json",
        {"0": {"figure_id": 12, "reasoning_q": "max?", "reasoning_a": "7", "inst_category": 1}},
    )
    (s,) = load_benchmark("charxiv", c)
    assert (s.image, s.answers, s.metric) == ("12.jpg", ["7"], "exact_match")


@pytest.mark.parametrize("suffix", [".jsonl", ".tsv", ".parquet"])
def test_kdtcbench_formats(tmp_path, suffix):
    img = base64.b64encode(_png_bytes((0, 0, 255))).decode()
    row = {"index": 0, "question": "표에서 가장 큰 값은?", "choice_a": "1", "choice_b": "2", "choice_c": "3", "choice_d": "4",
           "answer": "C", "category": "table", "image": img}  # fmt: skip
    path = tmp_path / f"kdtc{suffix}"
    if suffix == ".jsonl":
        path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    elif suffix == ".tsv":
        _tsv(path, list(row), [list(row.values())])
    else:
        import pandas as pd

        pd.DataFrame([{**row, "image": {"bytes": _png_bytes((0, 0, 255))}}]).to_parquet(path)
    (s,) = load_benchmark("kdtcbench", path)
    assert (s.language, s.metric, s.answers, s.category) == ("ko", "mc_accuracy", ["C"], "table")
    assert s.image == _png_bytes((0, 0, 255))
    assert "C. 3" in s.question and s.question.endswith("직접 답하세요.")


def test_coco_captions_and_unknown(tmp_path):
    p = _json(
        tmp_path / "captions_val.json",
        {
            "images": [{"id": 1, "file_name": "a.jpg"}],
            "annotations": [
                {"image_id": 1, "caption": "고양이가 앉았다"},
                {"image_id": 1, "caption": "a cat"},
            ],
        },
    )
    (s,) = load_benchmark("coco_captions", p, language="ko")
    assert (s.answers, s.metric, s.language) == (["고양이가 앉았다", "a cat"], "cider", "ko")
    with pytest.raises(EvalbenchError, match="unknown benchmark"):
        load_benchmark("nope", p)
    with pytest.raises(EvalbenchError, match="no such file"):
        load_benchmark("docvqa", tmp_path / "missing.json")
    assert len(BENCHMARKS) == 18  # 15 image benchmarks + Video-MME, MVBench, MLVU
