"""Multiple-choice letter extraction (English and Korean), CircularEval grouping, MathVista extraction."""

import pytest

from tbi_evalbench import (
    EvalbenchError,
    build_mc_prompt,
    circular_accuracy,
    extract_choice,
    mathvista_score,
    mc_accuracy,
)

ABCD = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("(C)", "C"),
        ("D.", "D"),
        ("답: B", "B"),
        ("정답은 (C)입니다.", "C"),
        ("답은 D", "D"),
        ("B번", "B"),
        ("(A)번이 맞습니다", "A"),
        ("3번", "C"),
        ("②", "B"),
        ("The answer is D.", "D"),
        ("Answer: (B)", "B"),
        ("I pick option C because", "C"),
        ("B. dog", "B"),
        ("It is clearly the dog.", "B"),
        ("A cat sits on the mat", "A"),  # no standalone letter; exactly one choice text (cat) appears
        ("", None),
        ("I don't know", None),
        ("cat or dog", None),  # two choice texts: ambiguous
    ],
)
def test_extract_choice(text, letter):
    assert extract_choice(text, ABCD) == letter


def test_extract_choice_article_a_is_not_option_a():
    # "A" followed by a lower-case word is the article; the standalone "C" is the answer.
    assert extract_choice("A good guess is C", {"A": "x", "B": "y", "C": "z"}) == "C"


def test_extract_choice_rejects_bad_choice_keys():
    with pytest.raises(EvalbenchError, match="single capital letters"):
        extract_choice("1", {"1": "a", "2": "b"})


def test_mc_accuracy_and_bad_gold():
    r = mc_accuracy(["답: B", "C", "??"], ["B", "D", "A"], [ABCD] * 3, ids=["1", "2", "3"])
    assert r.per_sample == [1.0, 0.0, 0.0] and r.extra["extracted"] == ["B", "C", None]
    with pytest.raises(EvalbenchError, match="question 1: gold answer 'E'"):
        mc_accuracy(["A"], ["E"], [ABCD], ids=["1"])


def test_circular_eval_groups_by_index_mod_1e6():
    # Question 1 asked in 4 rotations, all right; question 2 in 2 rotations, one wrong -> 1/2.
    preds = ["A", "B", "C", "D", "A", "A"]
    golds = ["A", "B", "C", "D", "A", "B"]
    idx = [1, 1_000_001, 2_000_001, 3_000_001, 2, 1_000_002]
    r = circular_accuracy(preds, golds, [ABCD] * 6, idx)
    assert r.ids == ["1", "2"] and r.per_sample == [1.0, 0.0] and r.score == 0.5
    assert r.extra["single_pass_accuracy"] == pytest.approx(5 / 6)


def test_korean_prompt():
    prompt = build_mc_prompt("표의 합계는?", {"A": "1", "B": "2"}, "ko")
    assert prompt.splitlines() == [
        "표의 합계는?",
        "A. 1",
        "B. 2",
        "주어진 선택지 중 해당 옵션의 문자로 직접 답하세요.",
    ]


def test_mathvista_extraction_and_normalisation():
    choices = ["3.5 cm", "4 cm", "5 cm"]
    assert mathvista_score("(B) 4 cm", "4 cm", "multi_choice", "text", choices) == 1.0
    assert mathvista_score("B", "4 cm", "multi_choice", "text", choices) == 1.0
    assert mathvista_score("5cm", "5 cm", "multi_choice", "text", choices) == 1.0  # closest option
    assert mathvista_score("The answer is 12.", "12", "free_form", "integer") == 1.0
    assert mathvista_score("so 3 apples and then 7 apples", "7", "free_form", "integer") == 1.0  # last number
    assert mathvista_score("답: 1,250", "1250", "free_form", "integer") == 1.0
    assert mathvista_score("1.456", "1.46", "free_form", "float", precision=2) == 1.0
    assert mathvista_score("1.456", "1.5", "free_form", "float", precision=2) == 0.0
    assert mathvista_score('The answer is "[1, 2]".', "[1, 2]", "free_form", "list") == 1.0
    assert mathvista_score("no idea", "3", "free_form", "integer") == 0.0
