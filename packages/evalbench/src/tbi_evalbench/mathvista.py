"""MathVista answer extraction and scoring, rule-based (no LLM judge).

Extraction (:func:`extract_answer`), first rule that fires:

1. multi_choice and the response is one of the choices verbatim -> it;
2. integer: ``int(response)`` parses -> it; float: ``float(response)`` parses -> ``str(float(response))``
   (MathVista ``extract_answer``'s own shortcuts);
3. ``The answer is "X".`` -> X (MathVista's ``quick_extract``);
4. an explicit final answer: ``answer is X`` / ``answer: X`` / ``답: X`` / ``정답은 X`` (up to the end of the line,
   trailing period dropped);
5. numeric answer types: the last number in the response (thousands separators removed);
6. otherwise the stripped response.

Normalisation and comparison follow MathVista's ``normalize_extracted_answer`` + ``safe_equal``: for
multi_choice a ``"(B)"`` or a bare letter selects that option, anything else picks the option with the smallest
Levenshtein distance; integer -> ``str(int(float(x)))``; float -> ``str(round(float(x), precision))``;
list -> ``str(x)``; the result must equal the gold answer string exactly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rapidfuzz.distance import Levenshtein

from tbi_evalbench._errors import EvalbenchError

_FINAL = re.compile(r"(?:(?i:answer)\s*(?:is|:|：)|(?:정답|답)\s*(?:은|는|:|：))\s*(.+)")
_NUM = re.compile(r"-?\d+(?:\.\d+)?")


def extract_answer(response: str, question_type: str, answer_type: str, choices: Sequence[str] = ()) -> str:
    """The answer a free-form response gives (rules in the module docstring)."""
    text = response.strip()
    if question_type == "multi_choice" and text in choices:
        return text
    if answer_type == "integer":
        try:
            return str(int(text))
        except ValueError:
            pass
    if answer_type == "float":
        try:
            return str(float(text))
        except ValueError:
            pass
    m = re.search(r'The answer is "(.*)"\.', text)
    if m:
        return m.group(1)
    m = _FINAL.search(text)
    if m:
        text = m.group(1).splitlines()[0].strip().rstrip(".").strip()
    if answer_type in ("integer", "float"):
        nums = _NUM.findall(text.replace(",", ""))
        if nums:
            return nums[-1]
    return text


def normalize_extracted_answer(
    extraction: str, choices: Sequence[str], question_type: str, answer_type: str, precision: int | None
) -> str | None:
    """MathVista ``normalize_extracted_answer``."""
    if question_type == "multi_choice":
        extraction = extraction.strip()
        letter = re.findall(r"\(([a-zA-Z])\)", extraction)
        if letter:
            extraction = letter[0].upper()
        letters = [chr(ord("A") + i) for i in range(len(choices))]
        if extraction in letters:
            return choices[letters.index(extraction)]
        if not choices:
            raise EvalbenchError("a multi_choice MathVista question needs its choices")
        distances = [Levenshtein.distance(extraction, c) for c in choices]
        return choices[distances.index(min(distances))]
    try:
        if answer_type == "integer":
            return str(int(float(extraction)))
        if answer_type == "float":
            return str(round(float(extraction), int(precision or 0)))
    except ValueError:
        return None
    return str(extraction)


def mathvista_score(
    response: str,
    answer: str,
    question_type: str,
    answer_type: str,
    choices: Sequence[str] = (),
    precision: int | None = None,
) -> float:
    """1.0 if the extracted, normalised answer equals the gold answer string, else 0.0."""
    extraction = extract_answer(response, question_type, answer_type, choices)
    normalized = normalize_extracted_answer(extraction, list(choices), question_type, answer_type, precision)
    return 1.0 if normalized == str(answer) else 0.0
