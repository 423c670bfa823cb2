"""Multiple-choice accuracy with answer-letter extraction (English and Korean), and MMBench CircularEval.

Letter extraction from free text, first rule that fires wins (letters are the keys of ``choices``):

1. the whole answer is a letter, optionally bracketed or followed by ``.``/``)``/``:`` (``"B"``, ``"(B)"``, ``"B."``);
2. an explicit statement: ``"답: B"``, ``"정답은 (C)"``, ``"답은 C입니다"``, ``"B번"``, ``"answer is B"``,
   ``"Answer: (B)"``, ``"option B"``; circled digits ``①..⑧`` and ``"2번"`` mean the 1st..8th letter;
3. the answer starts with a letter and a delimiter (``"B. 42"``, ``"(C) the dog"``);
4. exactly one distinct valid letter stands alone in the text (an ``"A"`` followed by a lower-case word is the
   English article, not option A);
5. exactly one choice's text appears in the answer (case-insensitive), or the answer equals a choice's text.

Otherwise nothing is extracted and the question counts as wrong. No LLM judge is used, in any compat mode
(VLMEvalKit falls back to a judge model; this is its rule-based stage).

CircularEval (MMBench, VLMEvalKit): every question is asked once per rotation of its options; the rotations
share ``index % 1_000_000``; a question counts as right only if every rotation is answered right. The score is
the fraction of questions (groups) right.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from tbi_evalbench._errors import EvalbenchError
from tbi_evalbench.result import ScoreResult, check_compat, check_lengths, default_ids, mean
from tbi_evalbench.text import nfc

CIRCULAR_MODULUS = 1_000_000
_CIRCLED = "①②③④⑤⑥⑦⑧"

# K-DTCBench / Korean MMBench prompt: "Answer directly with the letter of the option among the given choices."
KOREAN_MC_PROMPT = "주어진 선택지 중 해당 옵션의 문자로 직접 답하세요."
ENGLISH_MC_PROMPT = "Answer with the option's letter from the given choices directly."


def build_mc_prompt(question: str, choices: Mapping[str, str], language: str = "en") -> str:
    """Question, one ``"A. text"`` line per option, then the answer instruction (Korean for ``language="ko"``)."""
    lines = [question.strip(), *(f"{k}. {v}" for k, v in choices.items())]
    lines.append(KOREAN_MC_PROMPT if language == "ko" else ENGLISH_MC_PROMPT)
    return "\n".join(lines)


def _explicit_patterns(letters: str) -> list[re.Pattern]:
    L = f"[{letters}]"
    return [
        re.compile(rf"(?:정답|답)\s*(?:은|는|이|:|：|=)?\s*[(\[（]?\s*({L})(?![A-Za-z])"),
        re.compile(rf"[(\[]?({L})[)\]]?\s*번(?![가-힣])"),
        re.compile(rf"(?i:answer)\s*(?:is|:|：)?\s*(?i:option)?\s*[(\[]?({L})(?![A-Za-z])"),
        re.compile(rf"(?i:option|choice)\s*[(\[]?({L})(?![A-Za-z])"),
    ]


def extract_choice(text: str, choices: Mapping[str, str] | Sequence[str]) -> str | None:
    """The option letter a free-text answer gives, or ``None`` (rules in the module docstring)."""
    keys = list(choices.keys()) if isinstance(choices, Mapping) else list(choices)
    if not keys or not all(len(k) == 1 and k.isupper() for k in keys):
        raise EvalbenchError(f"choices must be keyed by single capital letters (A, B, ...); got {keys}")
    letters = "".join(keys)
    t = nfc(text).strip()
    if not t:
        return None
    whole = re.fullmatch(rf"[(\[]?\s*([{letters}])\s*[)\].:]?", t)
    if whole:
        return whole.group(1)
    for pattern in _explicit_patterns(letters):
        m = pattern.search(t)
        if m:
            return m.group(1)
    for i, ch in enumerate(_CIRCLED[: len(keys)]):
        if ch in t:
            return keys[i]
    m = re.search(r"(?<!\d)([1-8])\s*번", t)
    if m and int(m.group(1)) <= len(keys):
        return keys[int(m.group(1)) - 1]
    m = re.match(rf"[(\[]?([{letters}])[)\].:]\s", t)
    if m:
        return m.group(1)
    alone = {
        m.group(1)
        for m in re.finditer(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z'])", t)
        if not (m.group(1) == "A" and re.match(r" [a-z]", t[m.end() : m.end() + 2]))
    }
    if len(alone) == 1:
        return alone.pop()
    if isinstance(choices, Mapping):
        low = t.lower()
        hits = [k for k, v in choices.items() if str(v).strip() and str(v).strip().lower() in low]
        if len(hits) == 1:
            return hits[0]
        exact = [k for k, v in choices.items() if str(v).strip().lower() == low]
        if len(exact) == 1:
            return exact[0]
    return None


def _check_answer(answer: str, keys: Sequence[str], where: str) -> str:
    if answer not in keys:
        raise EvalbenchError(f"{where}: gold answer {answer!r} is not one of the choice letters {list(keys)}")
    return answer


def mc_accuracy(
    predictions: Sequence[str],
    answers: Sequence[str],
    choices: Sequence[Mapping[str, str]],
    *,
    compat: str = "official",
    ids: Sequence[str] | None = None,
) -> ScoreResult:
    """Plain multiple-choice accuracy (MMStar, SEED-Bench, K-DTCBench, single-pass MMBench).

    Args:
        predictions: free-text model answers.
        answers: the gold letter of each question.
        choices: each question's options, ``{"A": text, "B": text, ...}``.
    """
    check_compat(compat)
    check_lengths(predictions, answers)
    check_lengths(predictions, choices)
    id_list = default_ids(len(predictions), ids)
    scores, extracted = [], []
    for i, (p, a, c) in enumerate(zip(predictions, answers, choices)):
        _check_answer(a, list(c), f"question {id_list[i]}")
        letter = extract_choice(p, c)
        extracted.append(letter)
        scores.append(1.0 if letter == a else 0.0)
    return ScoreResult(
        "mc_accuracy", "rule-based letter extraction (VLMEvalKit stage 1 + Korean forms)", compat,
        mean(scores), scores, id_list, extra={"extracted": extracted},
    )  # fmt: skip


def circular_accuracy(
    predictions: Sequence[str],
    answers: Sequence[str],
    choices: Sequence[Mapping[str, str]],
    indices: Sequence[int],
    *,
    compat: str = "official",
) -> ScoreResult:
    """MMBench CircularEval: per-question (group) 0/1 over all its rotations, and their mean.

    Args:
        indices: MMBench ``index`` of each row; rows with equal ``index % 1_000_000`` are rotations of one question.

    Returns:
        per-sample scores are per *question*, ids are the group keys (``index % 1_000_000``), in first-seen order.
    """
    check_compat(compat)
    single = mc_accuracy(predictions, answers, choices, compat=compat, ids=[str(i) for i in indices])
    groups: dict[int, list[float]] = {}
    for idx, s in zip(indices, single.per_sample):
        groups.setdefault(int(idx) % CIRCULAR_MODULUS, []).append(s)
    scores = [1.0 if all(v == 1.0 for v in vals) else 0.0 for vals in groups.values()]
    return ScoreResult(
        "circular_accuracy", "MMBench CircularEval (VLMEvalKit, index % 1e6)", compat, mean(scores), scores,
        [str(k) for k in groups], extra={"rows": len(single.per_sample), "single_pass_accuracy": single.score},
    )  # fmt: skip
