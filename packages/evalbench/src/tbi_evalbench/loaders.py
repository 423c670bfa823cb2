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
| ``videomme`` | ``videomme/test-00000-of-00001.parquet`` (or JSON/JSONL rows, or the official nested JSON) | mc_accuracy | ``videoID``, ``options`` ``["A. ..", ..]``, letter ``answer``; video ``<video_dir>/<videoID>.mp4`` |
| ``mvbench`` | ``json/`` folder or one task file (``action_sequence.json``, ...) | mc_accuracy | ``video``, ``candidates``, ``answer`` = option text; task -> video folder table below |
| ``mlvu`` | ``json/`` folder or one task file (``1_plotQA.json``, ...) | mc_accuracy | ``video``, ``candidates``, ``answer`` = option text; video ``<task file stem>/<video>`` |

``image`` is a path (``image_root`` joined) or the decoded bytes for formats that embed images.

Video benchmarks put the video in ``frames`` (one entry: a video file, or a folder of frames when
``meta["data_type"] == "frame"``) and ``image_root`` is the video root (``Video-MME/``, ``MVBench/video``,
``MLVU/video``). A video name from a benchmark file must stay inside that root: an absolute path or a ``..``
component is refused (symlinks inside the root are followed, so a root may link to another disk). The gold answer
is always a letter: MVBench and MLVU give the option text, which is mapped to its letter (MVBench's script keeps
the *last* equal candidate, MLVU's ``candidates.index`` the *first*; each loader follows its own). Questions are
scored with :func:`tbi_evalbench.mc_accuracy` (rule-based letter extraction, so ``"(B) text"`` answers count).
MLVU's generation tasks (``8_sub_scene``, ``9_summary``) have no options and are graded by an LLM judge; loading a
folder skips them, naming one is an error.

MVBench task -> video folder (under ``MVBench/video``), as the MVBench evaluation notebook reads them
(``bound``: the record's ``start``/``end`` seconds are kept in ``meta``):

| task file | task | folder | kind | bound |
|---|---|---|---|---|
| ``action_sequence.json`` | Action Sequence | ``star/Charades_v1_480`` | video | yes |
| ``action_prediction.json`` | Action Prediction | ``star/Charades_v1_480`` | video | yes |
| ``action_antonym.json`` | Action Antonym | ``ssv2_video`` | video |  |
| ``fine_grained_action.json`` | Fine-grained Action | ``Moments_in_Time_Raw/videos`` | video |  |
| ``unexpected_action.json`` | Unexpected Action | ``FunQA_test/test`` | video |  |
| ``object_existence.json`` | Object Existence | ``clevrer/video_validation`` | video |  |
| ``object_interaction.json`` | Object Interaction | ``star/Charades_v1_480`` | video | yes |
| ``object_shuffle.json`` | Object Shuffle | ``perception/videos`` | video |  |
| ``moving_direction.json`` | Moving Direction | ``clevrer/video_validation`` | video |  |
| ``action_localization.json`` | Action Localization | ``sta/sta_video`` | video | yes |
| ``scene_transition.json`` | Scene Transition | ``scene_qa/video`` | video |  |
| ``action_count.json`` | Action Count | ``perception/videos`` | video |  |
| ``moving_count.json`` | Moving Count | ``clevrer/video_validation`` | video |  |
| ``moving_attribute.json`` | Moving Attribute | ``clevrer/video_validation`` | video |  |
| ``state_change.json`` | State Change | ``perception/videos`` | video |  |
| ``fine_grained_pose.json`` | Fine-grained Pose | ``nturgbd`` | video |  |
| ``character_order.json`` | Character Order | ``perception/videos`` | video |  |
| ``egocentric_navigation.json`` | Egocentric Navigation | ``vlnqa`` | video |  |
| ``episodic_reasoning.json`` | Episodic Reasoning | ``tvqa/frames_fps3_hq`` | frame | yes |
| ``counterfactual_inference.json`` | Counterfactual Inference | ``clevrer/video_validation`` | video |  |
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
from pathlib import Path, PurePosixPath, PureWindowsPath
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


# file stem -> (task, folder under MVBench/video, "video" file or "frame" folder, has start/end bound);
# the table of the MVBench evaluation notebook (OpenGVLab Ask-Anything, video_chat2/mvbench.ipynb).
MVBENCH_TASKS: dict[str, tuple[str, str, str, bool]] = {
    "action_sequence": ("Action Sequence", "star/Charades_v1_480", "video", True),
    "action_prediction": ("Action Prediction", "star/Charades_v1_480", "video", True),
    "action_antonym": ("Action Antonym", "ssv2_video", "video", False),
    "fine_grained_action": ("Fine-grained Action", "Moments_in_Time_Raw/videos", "video", False),
    "unexpected_action": ("Unexpected Action", "FunQA_test/test", "video", False),
    "object_existence": ("Object Existence", "clevrer/video_validation", "video", False),
    "object_interaction": ("Object Interaction", "star/Charades_v1_480", "video", True),
    "object_shuffle": ("Object Shuffle", "perception/videos", "video", False),
    "moving_direction": ("Moving Direction", "clevrer/video_validation", "video", False),
    "action_localization": ("Action Localization", "sta/sta_video", "video", True),
    "scene_transition": ("Scene Transition", "scene_qa/video", "video", False),
    "action_count": ("Action Count", "perception/videos", "video", False),
    "moving_count": ("Moving Count", "clevrer/video_validation", "video", False),
    "moving_attribute": ("Moving Attribute", "clevrer/video_validation", "video", False),
    "state_change": ("State Change", "perception/videos", "video", False),
    "fine_grained_pose": ("Fine-grained Pose", "nturgbd", "video", False),
    "character_order": ("Character Order", "perception/videos", "video", False),
    "egocentric_navigation": ("Egocentric Navigation", "vlnqa", "video", False),
    "episodic_reasoning": ("Episodic Reasoning", "tvqa/frames_fps3_hq", "frame", True),
    "counterfactual_inference": ("Counterfactual Inference", "clevrer/video_validation", "video", False),
}

# MLVU's open-ended tasks: no candidates, graded by an LLM judge in the official evaluation.
_MLVU_GENERATION = ("8_sub_scene", "9_summary")


def _is_mlvu_choice_task(stem: str) -> bool:
    """MLVU task files are numbered (``1_plotQA``); the generation tasks are left out of a folder load."""
    return re.match(r"\d+_", stem) is not None and stem not in _MLVU_GENERATION


def _contained(root: Path | None, folder: str, rel: Any, where: str) -> str:
    """``root/folder/rel`` (``folder/rel`` without a root); refuses a ``rel`` that would leave the root.

    ``rel`` is checked on its own, before joining: ``os.path.join(folder, "/abs")`` (what the official scripts
    do) would discard ``folder`` and read outside the data root.
    """
    if not isinstance(rel, str) or not rel.strip():
        raise EvalbenchError(f"{where}: video name must be a non-empty string, got {rel!r}")
    posix = PurePosixPath(rel.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(rel).is_absolute() or ".." in posix.parts:
        raise EvalbenchError(
            f"{where}: video path {rel!r} leaves the data root (absolute or '..'); benchmark files must name "
            "videos relative to their folder: fix the file, or pass the folder that holds them as image_root"
        )
    joined = PurePosixPath(folder) / posix
    return str(root / joined) if root is not None else str(joined)


def _json_files(path: Path, known: Callable[[str], bool], kind: str) -> list[Path]:
    """One task file, or every known task file of a ``json/`` folder (sorted, so ids are stable)."""
    if path.is_dir():
        files = sorted(p for p in path.glob("*.json") if known(p.stem))
        if not files:
            raise EvalbenchError(
                f"{path}: no {kind} task files (*.json) in this folder; pass the benchmark's json/ folder"
            )
        return files
    if not path.is_file():
        raise EvalbenchError(f"{path}: no such file or folder")
    return [path]


def _records(path: Path) -> list[dict]:
    data = _load_json(path)
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise EvalbenchError(f"{path}: expected a JSON list of question objects")
    return data


def _candidates(record: dict, where: str, last: bool) -> tuple[dict[str, str], str]:
    """``candidates`` as ``{"A": text, ...}`` and the gold letter of the option text ``answer``."""
    cands = _need(record, "candidates", where)
    if not isinstance(cands, list) or not 2 <= len(cands) <= 8:
        raise EvalbenchError(f"{where}: 'candidates' must be a list of 2 to 8 options, got {cands!r}")
    choices = {chr(ord("A") + i): str(c) for i, c in enumerate(cands)}
    answer = str(_need(record, "answer", where))
    hits = [k for k, v in choices.items() if v == answer]
    if not hits:
        raise EvalbenchError(f"{where}: answer {answer!r} is not one of the candidates {cands}")
    return choices, hits[-1] if last else hits[0]


def _videomme_rows(path: Path) -> list[dict]:
    if path.suffix != ".json":
        return _read_table(path)
    data = _load_json(path)
    if not isinstance(data, list):
        raise EvalbenchError(f"{path}: expected a JSON list (rows, or videos with 'questions')")
    rows = []
    for video in data:
        if isinstance(video, dict) and isinstance(video.get("questions"), list):
            # the official evaluation's nested form: video fields shared by the video's questions
            shared = {k: v for k, v in video.items() if k != "questions"}
            rows += [{**shared, **q} for q in video["questions"]]
        else:
            rows.append(video)
    return rows


def _videomme(path: Path, image_root: Path | None, video_dir: str = "data", video_ext: str = ".mp4", **_):
    for line, r in enumerate(_videomme_rows(path), start=1):
        where = f"{path} row {line}"
        if not isinstance(r, dict):
            raise EvalbenchError(f"{where}: expected a question object, got {type(r).__name__}")
        options = _need(r, "options", where)
        if isinstance(options, str) or not hasattr(options, "__iter__"):
            raise EvalbenchError(
                f"{where}: 'options' must be a list like ['A. ...', 'B. ...'], got {options!r}"
            )
        choices = {}
        for opt in options:
            m = re.match(r"\s*\(?([A-H])[.)．:]\s*(.*)", str(opt), flags=re.S)
            if not m:
                raise EvalbenchError(f"{where}: option {opt!r} does not start with its letter ('A. text')")
            choices[m.group(1)] = m.group(2).strip()
        answer = str(_need(r, "answer", where)).strip()
        if answer not in choices:
            raise EvalbenchError(f"{where}: answer {answer!r} is not one of the options {sorted(choices)}")
        video_id = _need(r, "videoID", where)
        if not isinstance(video_id, str) or not video_id.strip():
            raise EvalbenchError(
                f"{where}: 'videoID' must be a non-empty string (the YouTube id), got {video_id!r}"
            )
        video = _contained(image_root, video_dir, f"{video_id}{video_ext}", where)
        yield Sample(
            str(_need(r, "question_id", where)), build_mc_prompt(str(_need(r, "question", where)), choices), [answer],
            "mc_accuracy", category=r.get("task_type"), frames=[video], choices=choices,
            meta={"duration": r.get("duration"), "domain": r.get("domain"), "sub_category": r.get("sub_category"),
                  "video_id": r.get("video_id"), "videoID": video_id, "data_type": "video",
                  "subtitle": _contained(image_root, "subtitle", f"{video_id}.srt", where)},
        )  # fmt: skip


def _mvbench(path: Path, image_root: Path | None, **_):
    for file in _json_files(path, lambda stem: stem in MVBENCH_TASKS, "MVBench"):
        if file.stem not in MVBENCH_TASKS:
            raise EvalbenchError(f"{file}: not an MVBench task file; known tasks: {', '.join(MVBENCH_TASKS)}")
        task, folder, data_type, bound = MVBENCH_TASKS[file.stem]
        for i, r in enumerate(_records(file)):
            where = f"{file}[{i}]"
            choices, answer = _candidates(r, where, last=True)
            meta = {"task": task, "data_type": data_type}
            if bound:
                start, end = _need(r, "start", where), _need(r, "end", where)
                try:
                    meta.update(start=float(start), end=float(end))
                except (TypeError, ValueError):
                    raise EvalbenchError(f"{where}: 'start' and 'end' must be seconds (numbers)") from None
            yield Sample(
                f"{file.stem}-{i}", build_mc_prompt(str(_need(r, "question", where)), choices), [answer],
                "mc_accuracy", category=task,
                frames=[_contained(image_root, folder, _need(r, "video", where), where)], choices=choices,
                meta=meta,
            )  # fmt: skip


def _mlvu(path: Path, image_root: Path | None, **_):
    for file in _json_files(path, _is_mlvu_choice_task, "MLVU"):
        if file.stem in _MLVU_GENERATION:
            raise EvalbenchError(
                f"{file}: MLVU {file.stem} is an open-ended generation task (no candidates, graded by an LLM "
                "judge); load the multiple-choice tasks 1_plotQA .. 7_topic_reasoning"
            )
        for i, r in enumerate(_records(file)):
            where = f"{file}[{i}]"
            choices, answer = _candidates(r, where, last=False)
            yield Sample(
                f"{file.stem}-{i}", build_mc_prompt(str(_need(r, "question", where)), choices), [answer],
                "mc_accuracy", category=r.get("question_type") or file.stem.split("_", 1)[-1],
                frames=[_contained(image_root, file.stem, _need(r, "video", where), where)], choices=choices,
                meta={"duration": r.get("duration"), "task": file.stem, "data_type": "video"},
            )  # fmt: skip


BENCHMARKS: dict[str, Callable[..., Iterator[Sample]]] = {
    "vqav2": _vqav2, "textvqa": _textvqa, "docvqa": _docvqa, "infovqa": _infovqa, "chartqa": _chartqa,
    "ocrbench": _ocrbench, "mmbench": _mmbench, "mmstar": _mmstar, "seedbench": _seedbench,
    "mathvista": _mathvista, "wtq": _wtq, "tabfact": _tabfact, "charxiv": _charxiv, "kdtcbench": _kdtcbench,
    "coco_captions": _coco_captions, "videomme": _videomme, "mvbench": _mvbench, "mlvu": _mlvu,
}  # fmt: skip


def load_benchmark(
    name: str, path: str | Path, *, image_root: str | Path | None = None, **options
) -> list[Sample]:
    """All samples of one benchmark file (see the module table for ``name`` and the expected files).

    Args:
        name: loader name, e.g. ``"docvqa"``.
        path: the benchmark's published file (MVBench, MLVU: one task file or the ``json/`` folder).
        image_root: directory the image (or video) names are relative to (not used by formats that embed images).
        options: loader-specific (``annotations=`` for vqav2, ``language=`` for mmbench/coco_captions,
            ``video_dir=`` (default ``"data"``) and ``video_ext=`` (``".mp4"``) for videomme).
    """
    if name not in BENCHMARKS:
        raise EvalbenchError(f"unknown benchmark {name!r}; loaders: {', '.join(BENCHMARKS)}")
    root = Path(image_root) if image_root is not None else None
    samples = []
    for s in BENCHMARKS[name](Path(path), root, **options):
        s.benchmark = name
        samples.append(s)
    return samples
