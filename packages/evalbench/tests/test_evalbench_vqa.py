"""VQA accuracy: hand-computed cases from vqaEval.py's rules, each documented quirk, and a literal re-reading
of the official algorithm (no fast paths, identity-based leave-one-out) on random inputs."""

import random
import re

import pytest

from tbi_evalbench import EvalbenchError, vqa_accuracy, vqa_score
from tbi_evalbench.vqa import normalize_answer, process_digit_article, process_punctuation


def test_leave_one_out_average_by_hand():
    # 2 of 10 humans said "red": the 2 subsets without a "red" voter give 1/3, the 8 others 2/3 -> 6/10.
    assert vqa_score("red", ["red"] * 2 + ["blue"] * 8) == pytest.approx(0.6, abs=1e-12)
    # 3 "red": those 3 subsets keep 2 matches (2/3), the 7 others 3 matches (1) -> (2 + 7) / 10.
    assert vqa_score("red", ["red"] * 3 + ["blue"] * 7) == pytest.approx(0.9, abs=1e-12)
    assert vqa_score("red", ["red"] * 4 + ["blue"] * 6) == 1.0
    assert vqa_score("green", ["red"] * 4 + ["blue"] * 6) == 0.0


def test_official_normalises_only_when_humans_disagree():
    agree = ["Yes"] * 10
    assert vqa_score("yes", agree, "official") == 0.0  # raw, case-sensitive compare
    assert vqa_score("yes", agree, "lmms") == 1.0
    assert vqa_score("yes", agree, "vlmeval") == 1.0
    disagree = ["Yes"] * 9 + ["No"]
    assert vqa_score("yes", disagree, "official") == 1.0


def test_trailing_period_after_digit_official_strips_vlmeval_keeps():
    answers = ["5"] * 9 + ["6"]
    assert vqa_score("5.", answers, "official") == 1.0
    assert vqa_score("5.", answers, "lmms") == 1.0
    assert vqa_score("5.", answers, "vlmeval") == 0.0
    # Unanimous humans: the official script does not normalise at all, so "5." != "5".
    assert vqa_score("5.", ["5"] * 10, "official") == 0.0


def test_punctuation_rules():
    assert process_punctuation("x-y") == "x y"  # no space next to it: replaced by a space
    assert process_punctuation("x - y") == "x  y"  # next to a space: removed
    assert process_punctuation("1,000 cars") == "1000 cars"  # digit,digit comma: every symbol removed
    assert process_punctuation("3.5") == "3.5"
    assert process_punctuation("end.") == "end"
    # re.UNICODE lands in sub()'s count argument: only the first 32 periods go.
    assert process_punctuation("." * 40) == "." * 8
    assert process_punctuation("5.", "vlmeval") == "5."


def test_digit_article_contractions():
    assert process_digit_article("The Two dogs") == "2 dogs"
    assert process_digit_article("dont know") == "don't know"
    assert process_digit_article("none") == "0"
    assert normalize_answer("An apple, please!", "official") == "apple please"
    assert normalize_answer("dog's bone?", "lmms") == "dog 's bone"


def test_edge_cases_empty_unicode_korean_units():
    assert vqa_score("", ["a"] * 10) == 0.0
    assert vqa_score("서울", ["서울"] * 10) == 1.0
    assert vqa_score("10 kg", ["10 kg"] * 5 + ["10kg"] * 5) == pytest.approx(1.0)
    assert vqa_score("two", ["2"] * 9 + ["3"]) == 1.0
    with pytest.raises(EvalbenchError, match="at least one human answer"):
        vqa_score("x", [])


def test_result_records_scorer_mode_version_and_mean():
    r = vqa_accuracy(
        ["red", "blue"], [["red"] * 3 + ["blue"] * 7, ["red"] * 10], compat="lmms", ids=["q1", "q2"]
    )
    assert r.per_sample == pytest.approx([0.9, 0.0])
    assert r.score == pytest.approx(0.45)
    assert (r.metric, r.compat, r.n, r.ids) == ("vqa_accuracy", "lmms", 2, ["q1", "q2"])
    assert "lmms-eval" in r.scorer and r.version == "0.1.0"
    with pytest.raises(EvalbenchError, match="compat"):
        vqa_accuracy(["a"], [["a"]], compat="nope")


# --- literal re-reading of GT-Vision-Lab vqaEval.py (official mode), as the oracle ---------------------------
_P = [
    ";",
    r"/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]
_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
        "seven": "7", "eight": "8", "nine": "9", "ten": "10"}  # fmt: skip


def _oracle_punct(in_text):
    out = in_text
    for p in _P:
        if (p + " " in in_text or " " + p in in_text) or (re.search(r"(\d)(\,)(\d)", in_text) is not None):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return re.compile(r"(?!<=\d)(\.)(?!\d)").sub("", out, re.UNICODE)


def _oracle_digit(in_text):
    out = [_MAP.get(w, w) for w in in_text.lower().split() if _MAP.get(w, w) not in ("a", "an", "the")]
    return " ".join({"dont": "don't", "isnt": "isn't"}.get(w, w) for w in out)


def _oracle(pred, answers):
    gts = [
        {"answer": a.replace("\n", " ").replace("\t", " ").strip(), "answer_id": i}
        for i, a in enumerate(answers)
    ]
    res = pred.replace("\n", " ").replace("\t", " ").strip()
    if len({g["answer"] for g in gts}) > 1:
        for g in gts:
            g["answer"] = _oracle_digit(_oracle_punct(g["answer"]))
        res = _oracle_digit(_oracle_punct(res))
    acc = []
    for g in gts:
        others = [item for item in gts if item != g]
        acc.append(min(1, float(len([o for o in others if o["answer"] == res])) / 3))
    return float(sum(acc)) / len(acc)


def test_matches_literal_official_algorithm_on_random_inputs():
    rng = random.Random(7)
    pieces = ["the", "a", "Two", "two", "2", "5.", "3.5", "1,000", "dont", "dog's", "x-y", "x - y", "Yes", "yes",
              "(c)", "end.", "서울", "none", "!", "\tred\n"]  # fmt: skip
    for _ in range(400):
        pool = [" ".join(rng.choices(pieces, k=rng.randint(1, 3))) for _ in range(3)]
        answers = [rng.choice(pool) for _ in range(rng.choice([1, 3, 10]))]
        pred = rng.choice([*pool, " ".join(rng.choices(pieces, k=2))])
        assert vqa_score(pred, answers, "official") == _oracle(pred, answers), (pred, answers)
