"""Loaders for the benchmarks' published file formats, from local paths (nothing is downloaded).

Every loader yields :class:`Sample` records with the benchmark's metric:

| name | file (``path``) | metric | notes |
|---|---|---|---|
| ``vqav2`` | ``v2_OpenEnded_mscoco_*_questions.json`` + ``annotations=`` ``v2_mscoco_*_annotations.json`` | vqa_accuracy | image ``COCO_<split>_<image_id:012d>.jpg`` (``image_prefix=``) |
| ``textvqa`` | ``TextVQA_0.5.1_val.json`` (``{"data": [...]}``) | vqa_accuracy | image ``<image_id>.jpg`` |
| ``docvqa`` | ``val_v1.0.json`` (``{"data": [...]}``) | anls | ``questionId``, ``image``; test files have no answers |
| ``infovqa`` | ``infographicsVQA_val_v1.0_withQT.json`` | anls | image ``image_local_name`` |
| ``chartqa`` | ``test_human.json`` / ``test_augmented.json`` (list of ``imgname, query, label``) | relaxed_accuracy | |
| ``ocrbench`` | ``OCRBench.json`` (list of ``dataset_name, id, image_path, question, answers, type``) | ocrbench | category = ``dataset_name`` (HME100k rule) |
| ``mmbench`` | VLMEvalKit TSV (``index, question, hint, A..D, answer, category, image`` base64) | circular_accuracy | EN and KO files; a short numeric ``image`` refers to another row's image |
| ``mmstar`` | VLMEvalKit ``MMStar.tsv`` | mc_accuracy | options as columns A..D or inline ``Options: A: .., B: ..`` |
| ``seedbench`` | ``SEED-Bench.json`` (``{"questions": [...]}``, ``choice_a..choice_d``) | mc_accuracy | image ``data_id`` |
| ``mathvista`` | ``testmini.json`` (``{pid: {...}}``) | mathvista | ``question_type``, ``answer_type``, ``precision`` kept in ``meta`` |
| ``wtq`` | WikiTableQuestions TSV (``id, utterance, context, targetValue``) | exact_match | several targets are joined by ``|``; image = table file |
| ``tabfact`` | ``collected_data/*.json`` (``{table_id: [statements, labels, caption]}``) | exact_match | answers ``yes/true`` or ``no/false`` |
| ``charxiv`` | ``reasoning_val.json`` (``{idx: {figure_id, reasoning_q, reasoning_a, ...}}``) | exact_match | CharXiv's own grading uses an LLM judge; here rule-based |
| ``kdtcbench`` | K-DTCBench as JSONL, TSV or Parquet (``index, question, choice_a..choice_d, answer, category, image``) | mc_accuracy | question carries the Korean MC prompt |
| ``coco_captions`` | COCO-style ``captions_*.json`` (``images``, ``annotations``) | cider | one sample per image, answers = its captions |

``image`` is a path (``image_root`` joined) or the decoded bytes for formats that embed images.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tbi_evalbench._errors import EvalbenchError
from tbi_evalbench.choice import build_mc_prompt


@dataclass
class Sample:
    """One benchmark question, uniform across benchmarks.

    Attributes:
        id: the benchmark's question id, as a string.
        question: the text to ask (for multiple choice: with the options and the answer instruction).
        answers: gold answers (for multiple choice: the gold letter).
        metric: the metric name of :mod:`tbi_evalbench.metrics` this benchmark is scored with.
        language: ``en`` or ``ko``.
        category: benchmark category (OCRBench ``dataset_name``, MMBench ``category``, ...), or None.
        image: a path, the image bytes (TSV/Parquet formats embed them), or None.
        frames: video frame paths, empty for images.
        choices: multiple-choice options ``{"A": text, ...}``, empty otherwise.
        benchmark: the loader name.
        meta: anything else the scorer needs (MMBench ``index``, MathVista ``answer_type``, ...).
    """

    id: str
    question: str
    answers: list[str]
    metric: str
    language: str = "en"
    category: str | None = None
    image: str | bytes | None = None
    frames: list[str] = field(default_factory=list)
    choices: dict[str, str] = field(default_factory=dict)
    benchmark: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalbenchError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise EvalbenchError(f"{path}: not valid JSON at line {exc.lineno} ({exc.msg})") from None


def _need(record: dict, key: str, where: str) -> Any:
    if key not in record:
        raise EvalbenchError(f"{where}: missing key {key!r} (found {sorted(record)[:12]})")
    return record[key]


def _img(root: Path | None, name: str | None) -> str | None:
    if name is None:
        return None
    return str(root / name) if root is not None else str(name)


def _read_table(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise EvalbenchError(f"{path}: no such file")
    if path.suffix == ".parquet":
        try:
            import pandas as pd
        except ImportError as exc:
            raise EvalbenchError(
                f"{path}: reading Parquet needs pandas and pyarrow (pip install pandas pyarrow)"
            ) from exc
        return pd.read_parquet(path).to_dict(orient="records")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t" if path.suffix in (".tsv", ".txt") else ","))


def _decode_image(value: Any, where: str) -> bytes | None:
    if value is None or value == "" or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise EvalbenchError(f"{where}: 'image' is neither base64 nor image bytes") from None


def _vqav2(
    path: Path,
    image_root: Path | None,
    annotations: str | Path | None = None,
    image_prefix: str = "COCO_val2014_",
    **_,
):
    if annotations is None:
        raise EvalbenchError(
            "vqav2 needs annotations=<v2_mscoco_*_annotations.json> besides the questions file"
        )
    questions = _need(_load_json(path), "questions", str(path))
    anns = {
        a["question_id"]: a for a in _need(_load_json(Path(annotations)), "annotations", str(annotations))
    }
    for q in questions:
        qid = q["question_id"]
        if qid not in anns:
            raise EvalbenchError(f"{annotations}: no annotation for question_id {qid}")
        a = anns[qid]
        yield Sample(
            str(qid), q["question"], [x["answer"] for x in a["answers"]], "vqa_accuracy",
            category=a.get("answer_type"), image=_img(image_root, f"{image_prefix}{int(q['image_id']):012d}.jpg"),
            meta={"question_type": a.get("question_type"), "image_id": q["image_id"]},
        )  # fmt: skip


def _textvqa(path: Path, image_root: Path | None, **_):
    for i, r in enumerate(_need(_load_json(path), "data", str(path))):
        where = f"{path} data[{i}]"
        yield Sample(
            str(_need(r, "question_id", where)), r["question"], list(r.get("answers", [])), "vqa_accuracy",
            image=_img(image_root, f"{_need(r, 'image_id', where)}.jpg"), meta={"image_id": r["image_id"]},
        )  # fmt: skip


def _docvqa(path: Path, image_root: Path | None, **_):
    for i, r in enumerate(_need(_load_json(path), "data", str(path))):
        where = f"{path} data[{i}]"
        yield Sample(
            str(_need(r, "questionId", where)), r["question"], list(r.get("answers", [])), "anls",
            category=",".join(r.get("question_types", [])) or None, image=_img(image_root, _need(r, "image", where)),
            meta={"docId": r.get("docId")},
        )  # fmt: skip


def _infovqa(path: Path, image_root: Path | None, **_):
    for i, r in enumerate(_need(_load_json(path), "data", str(path))):
        where = f"{path} data[{i}]"
        yield Sample(
            str(_need(r, "questionId", where)), r["question"], list(r.get("answers", [])), "anls",
            image=_img(image_root, _need(r, "image_local_name", where)), meta={"answer_type": r.get("answer_type")},
        )  # fmt: skip


def _chartqa(path: Path, image_root: Path | None, **_):
    data = _load_json(path)
    if not isinstance(data, list):
        raise EvalbenchError(f"{path}: ChartQA test files are a JSON list of {{imgname, query, label}}")
    for i, r in enumerate(data):
        where = f"{path}[{i}]"
        yield Sample(
            f"{path.stem}-{i}", _need(r, "query", where), [str(_need(r, "label", where))], "relaxed_accuracy",
            category=path.stem, image=_img(image_root, r.get("imgname")),
        )  # fmt: skip


def _ocrbench(path: Path, image_root: Path | None, **_):
    for i, r in enumerate(_load_json(path)):
        where = f"{path}[{i}]"
        answers = _need(r, "answers", where)
        yield Sample(
            str(r.get("id", i)), _need(r, "question", where), answers if isinstance(answers, list) else [answers],
            "ocrbench", category=_need(r, "dataset_name", where), image=_img(image_root, r.get("image_path")),
            meta={"type": r.get("type")},
        )  # fmt: skip


def _letters(row: dict) -> dict[str, str]:
    out = {}
    for k in "ABCDEFGH":
        v = row.get(k)
        if v is not None and str(v) != "" and str(v).lower() != "nan":
            out[k] = str(v)
    return out


def _mc_table(path: Path, benchmark: str, metric: str, language: str, **_):
    rows = _read_table(path)
    images = {str(r.get("index")): r.get("image") for r in rows}
    for line, r in enumerate(rows, start=2):
        where = f"{path}:{line}"
        index = str(_need(r, "index", where))
        question = str(_need(r, "question", where))
        choices = _letters(r)
        if not choices:
            m = re.search(r"Options:\s*(.*)$", question, flags=re.S)
            if m:
                choices = dict(
                    re.findall(r"([A-H]):\s*(.*?)(?=,\s*[A-H]:|$)", m.group(1).strip(), flags=re.S)
                )
                question = question[: m.start()].strip()
        if not choices:
            raise EvalbenchError(f"{where}: no options (columns A..D or 'Options: A: ...' in the question)")
        hint = r.get("hint")
        if hint is not None and str(hint).strip() and str(hint).lower() != "nan":
            question = f"{hint}\n{question}"
        raw = r.get("image")
        if isinstance(raw, str) and raw.isdigit() and len(raw) <= 64:
            raw = images.get(raw)
        answer = str(_need(r, "answer", where)).strip()
        if answer not in choices:
            raise EvalbenchError(f"{where}: answer {answer!r} is not one of the options {sorted(choices)}")
        yield Sample(
            index, build_mc_prompt(question, choices, language), [answer], metric, language=language,
            category=r.get("category"), image=_decode_image(raw, where), choices=choices,
            meta={"index": int(index) if index.isdigit() else index, "l2_category": r.get("l2-category", r.get("l2_category"))},
        )  # fmt: skip


def _mmbench(path: Path, image_root: Path | None, language: str | None = None, **kw):
    lang = language or ("ko" if re.search(r"(?i)(^|[_-])(ko|kr|korean)([_.-]|$)", path.name) else "en")
    return _mc_table(path, "mmbench", "circular_accuracy", lang)


def _mmstar(path: Path, image_root: Path | None, **_):
    return _mc_table(path, "mmstar", "mc_accuracy", "en")


def _seedbench(path: Path, image_root: Path | None, **_):
    for i, q in enumerate(_need(_load_json(path), "questions", str(path))):
        where = f"{path} questions[{i}]"
        choices = {k: str(q[f"choice_{k.lower()}"]) for k in "ABCD" if f"choice_{k.lower()}" in q}
        answer = str(_need(q, "answer", where))
        if answer not in choices:
            raise EvalbenchError(f"{where}: answer {answer!r} is not one of {sorted(choices)}")
        data_id = q.get("data_id")
        frames = [] if q.get("data_type", "image") == "image" else [_img(image_root, data_id)]
        yield Sample(
            str(_need(q, "question_id", where)), build_mc_prompt(q["question"], choices), [answer], "mc_accuracy",
            category=str(q.get("question_type_id")), image=_img(image_root, data_id) if not frames else None,
            frames=frames, choices=choices,
        )  # fmt: skip


def _mathvista(path: Path, image_root: Path | None, **_):
    data = _load_json(path)
    items = (
        data.items() if isinstance(data, dict) else ((str(r.get("pid", i)), r) for i, r in enumerate(data))
    )
    for pid, r in items:
        where = f"{path} [{pid}]"
        meta = r.get("metadata", {})
        yield Sample(
            str(pid), r.get("query") or _need(r, "question", where), [str(_need(r, "answer", where))], "mathvista",
            language=meta.get("language", "en")[:2] if isinstance(meta.get("language"), str) else "en",
            category=meta.get("category"), image=_img(image_root, r.get("image")),
            meta={"question_type": _need(r, "question_type", where), "answer_type": _need(r, "answer_type", where),
                  "precision": r.get("precision"), "choices": r.get("choices") or [], "unit": r.get("unit")},
        )  # fmt: skip


def _wtq(path: Path, image_root: Path | None, **_):
    for line, r in enumerate(_read_table(path), start=2):
        where = f"{path}:{line}"
        target = str(_need(r, "targetValue", where))
        yield Sample(
            str(_need(r, "id", where)), str(_need(r, "utterance", where)), [target, *target.split("|")] if "|" in target else [target],
            "exact_match", image=_img(image_root, r.get("context")), meta={"targets": target.split("|")},
        )  # fmt: skip


def _tabfact(path: Path, image_root: Path | None, **_):
    data = _load_json(path)
    for table_id, entry in data.items():
        if not (isinstance(entry, list) and len(entry) >= 2 and len(entry[0]) == len(entry[1])):
            raise EvalbenchError(
                f"{path} [{table_id}]: expected [statements, labels, caption] with one label per statement"
            )
        for k, (statement, label) in enumerate(zip(entry[0], entry[1])):
            yield Sample(
                f"{table_id}-{k}", statement, ["yes", "true"] if int(label) == 1 else ["no", "false"], "exact_match",
                image=_img(image_root, table_id), meta={"caption": entry[2] if len(entry) > 2 else None},
            )  # fmt: skip


def _charxiv(path: Path, image_root: Path | None, **_):
    for key, r in _load_json(path).items():
        where = f"{path} [{key}]"
        yield Sample(
            str(key), _need(r, "reasoning_q", where), [str(_need(r, "reasoning_a", where))], "exact_match",
            category=r.get("inst_category") and str(r["inst_category"]),
            image=_img(image_root, f"{_need(r, 'figure_id', where)}.jpg"), meta={"answer_type": r.get("reasoning_a_type")},
        )  # fmt: skip


def _kdtcbench(path: Path, image_root: Path | None, **_):
    for line, r in enumerate(_read_table(path), start=1):
        where = f"{path} row {line}"
        choices = {k: str(_need(r, f"choice_{k.lower()}", where)) for k in "ABCD"}
        answer = str(_need(r, "answer", where)).strip()
        if answer not in choices:
            raise EvalbenchError(f"{where}: answer {answer!r} is not one of A, B, C, D")
        image = r.get("image")
        yield Sample(
            str(_need(r, "index", where)), build_mc_prompt(str(_need(r, "question", where)), choices, "ko"), [answer],
            "mc_accuracy", language="ko", category=r.get("category"),
            image=_img(image_root, image) if isinstance(image, str) and image_root else _decode_image(image, where),
            choices=choices,
        )  # fmt: skip


def _coco_captions(path: Path, image_root: Path | None, language: str = "en", **_):
    data = _load_json(path)
    images = {im["id"]: im for im in _need(data, "images", str(path))}
    caps: dict[Any, list[str]] = {}
    for a in _need(data, "annotations", str(path)):
        caps.setdefault(a["image_id"], []).append(a["caption"])
    for image_id, im in images.items():
        if image_id not in caps:
            raise EvalbenchError(f"{path}: image {image_id} has no caption annotation")
        yield Sample(
            str(image_id), "", caps[image_id], "cider", language=language, image=_img(image_root, im.get("file_name")),
        )  # fmt: skip


BENCHMARKS: dict[str, Callable[..., Iterator[Sample]]] = {
    "vqav2": _vqav2, "textvqa": _textvqa, "docvqa": _docvqa, "infovqa": _infovqa, "chartqa": _chartqa,
    "ocrbench": _ocrbench, "mmbench": _mmbench, "mmstar": _mmstar, "seedbench": _seedbench,
    "mathvista": _mathvista, "wtq": _wtq, "tabfact": _tabfact, "charxiv": _charxiv, "kdtcbench": _kdtcbench,
    "coco_captions": _coco_captions,
}  # fmt: skip


def load_benchmark(
    name: str, path: str | Path, *, image_root: str | Path | None = None, **options
) -> list[Sample]:
    """All samples of one benchmark file (see the module table for ``name`` and the expected files).

    Args:
        name: loader name, e.g. ``"docvqa"``.
        path: the benchmark's published file.
        image_root: directory the image names are relative to (not used by formats that embed images).
        options: loader-specific (``annotations=`` for vqav2, ``language=`` for mmbench/coco_captions).
    """
    if name not in BENCHMARKS:
        raise EvalbenchError(f"unknown benchmark {name!r}; loaders: {', '.join(BENCHMARKS)}")
    root = Path(image_root) if image_root is not None else None
    samples = []
    for s in BENCHMARKS[name](Path(path), root, **options):
        s.benchmark = name
        samples.append(s)
    return samples
