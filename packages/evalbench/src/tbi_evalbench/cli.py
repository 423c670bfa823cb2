"""``python -m tbi_evalbench score METRIC --predictions P.jsonl --references R.jsonl [--json]``.

Inputs (one JSON object per line):

| file | keys |
|---|---|
| predictions | ``{"id": str|int, "prediction": str}`` |
| references (most metrics) | ``{"id", "answers": [str, ...]}`` (captioning: the reference captions) |
| references (``ocrbench``) | plus optional ``"dataset_name"`` or ``"category"`` (``"HME100k"`` switches to the math rule) |
| references (``mc_accuracy``, ``circular_accuracy``) | ``{"id", "choices": {"A": str, ...}, "answer": "B"}``; circular also ``"index": int`` (else the id must be an integer) |

Every prediction id needs exactly one reference and vice versa; duplicates, missing ids and wrong types stop
the run with the file, line and id, and nothing is scored. Output: a one-line summary, or with ``--json``
``{"metric", "compat", "score", "n", "per_sample": [{"id", "score"}], "scorer", "version", "extra"}``;
``--output FILE`` also writes that JSON atomically.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tbi_evalbench._errors import EvalbenchError
from tbi_evalbench._io import atomic_write_text, read_jsonl
from tbi_evalbench.metrics import METRIC_NAMES, score_metric
from tbi_evalbench.result import COMPAT_MODES
from tbi_evalbench.text import TOKENIZE_MODES

log = logging.getLogger(__name__)

_CHOICE_METRICS = ("mc_accuracy", "circular_accuracy")


def _id(path: Path, lineno: int, obj: dict) -> str:
    if "id" not in obj:
        raise EvalbenchError(f"{path}:{lineno}: missing key 'id'")
    value = obj["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise EvalbenchError(
            f"{path}:{lineno}: 'id' must be a string or an integer, got {type(value).__name__}"
        )
    return str(value)


def _read_keyed(path: Path, check) -> tuple[dict[str, dict], dict[str, int]]:
    rows: dict[str, dict] = {}
    lines: dict[str, int] = {}
    for lineno, obj in read_jsonl(path):
        key = _id(path, lineno, obj)
        if key in rows:
            raise EvalbenchError(
                f"{path}:{lineno}: duplicate id {key!r} (first on line {lines[key]}); ids must be unique"
            )
        check(path, lineno, key, obj)
        rows[key] = obj
        lines[key] = lineno
    if not rows:
        raise EvalbenchError(f"{path}: no records; expected one JSON object per line")
    return rows, lines


def _check_prediction(path, lineno, key, obj):
    if not isinstance(obj.get("prediction"), str):
        got = "missing" if "prediction" not in obj else type(obj["prediction"]).__name__
        raise EvalbenchError(f"{path}:{lineno}: id {key!r}: 'prediction' must be a string ({got})")


def _reference_checker(metric: str):
    def check(path, lineno, key, obj):
        where = f"{path}:{lineno}: id {key!r}"
        if metric in _CHOICE_METRICS:
            choices = obj.get("choices")
            if (
                not isinstance(choices, dict)
                or not choices
                or not all(isinstance(v, str) for v in choices.values())
            ):
                raise EvalbenchError(
                    f'{where}: {metric} needs "choices": {{"A": "...", "B": "..."}} with string values'
                )
            if not isinstance(obj.get("answer"), str) or obj["answer"] not in choices:
                raise EvalbenchError(f"{where}: 'answer' must be one of the choice letters {sorted(choices)}")
            if metric == "circular_accuracy":
                index = obj.get("index", key)
                try:
                    int(index)
                except (TypeError, ValueError):
                    raise EvalbenchError(
                        f"{where}: circular_accuracy needs an integer 'index' (or integer ids)"
                    ) from None
            return
        answers = obj.get("answers")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise EvalbenchError(f"{where}: 'answers' must be a non-empty list of strings")
        for k in ("category", "dataset_name"):
            if k in obj and not isinstance(obj[k], str):
                raise EvalbenchError(f"{where}: {k!r} must be a string")

    return check


def load_pairs(
    metric: str, predictions: Path, references: Path
) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """Ids, predictions and reference records aligned by id (prediction-file order); all-or-nothing."""
    preds, pred_lines = _read_keyed(predictions, _check_prediction)
    refs, ref_lines = _read_keyed(references, _reference_checker(metric))
    missing = [k for k in preds if k not in refs]
    if missing:
        k = missing[0]
        raise EvalbenchError(
            f"{predictions}:{pred_lines[k]}: id {k!r} has no reference in {references} "
            f"({len(missing)} prediction id(s) without reference)"
        )
    extra = [k for k in refs if k not in preds]
    if extra:
        k = extra[0]
        raise EvalbenchError(
            f"{references}:{ref_lines[k]}: id {k!r} has no prediction in {predictions} "
            f"({len(extra)} reference id(s) without prediction); score the full set or trim the references"
        )
    ids = list(preds)
    return ids, [preds[k]["prediction"] for k in ids], [refs[k] for k in ids]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tbi_evalbench", description="Score predictions like the official scripts."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="score one metric")
    score.add_argument("metric", choices=METRIC_NAMES)
    score.add_argument("--predictions", required=True, type=Path, help='JSONL of {"id", "prediction"}')
    score.add_argument(
        "--references", required=True, type=Path, help='JSONL of {"id", "answers": [...]} (see docs)'
    )
    score.add_argument("--json", action="store_true", help="print the full result as JSON")
    score.add_argument(
        "--compat", choices=COMPAT_MODES, default="official", help="reference semantics (default official)"
    )
    score.add_argument(
        "--tokenize", choices=TOKENIZE_MODES, default="none", help="captioning / token_f1 tokenisation"
    )
    score.add_argument(
        "--meteor-variant", choices=("nltk", "coco"), default="nltk", help="METEOR implementation"
    )
    score.add_argument("--model", type=Path, help="local model directory for bertscore")
    score.add_argument("--output", type=Path, help="also write the JSON result to this file (atomically)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        ids, predictions, references = load_pairs(args.metric, args.predictions, args.references)
        result = score_metric(
            args.metric, ids, predictions, references, compat=args.compat, tokenize=args.tokenize,
            meteor_variant=args.meteor_variant, model_path=args.model,
        )  # fmt: skip
    except EvalbenchError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    payload = json.dumps(result.to_dict(), ensure_ascii=False)
    if args.output:
        atomic_write_text(args.output, payload + "\n")
    if args.json:
        sys.stdout.write(payload + "\n")
    else:
        sys.stdout.write(
            f"{result.metric} ({result.compat}): {result.score} over n={result.n} [{result.scorer}, v{result.version}]\n"
        )
    return 0


def main_entry() -> None:
    """Console script ``tbi-evalbench`` (same as ``python -m tbi_evalbench``)."""
    sys.exit(main())
