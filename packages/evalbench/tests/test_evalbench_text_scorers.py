"""ANLS, relaxed accuracy, exact match, token F1 and OCRBench: hand-computed cases from each reference's rules."""

import random

import pytest

from tbi_evalbench import EvalbenchError, anls, anls_score, exact_match, ocrbench, relaxed_accuracy, token_f1
from tbi_evalbench.exact import exact_score, token_f1_score
from tbi_evalbench.ocrbench import ocrbench_score
from tbi_evalbench.relaxed import relaxed_correctness, relaxed_score


def _naive_levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_anls_levenshtein_matches_naive_dp_on_random_unicode():
    from rapidfuzz.distance import Levenshtein

    rng = random.Random(0)
    alphabet = "abcAB 12가나다é\u0301ß"
    for _ in range(300):
        a = "".join(rng.choices(alphabet, k=rng.randint(0, 9)))
        b = "".join(rng.choices(alphabet, k=rng.randint(0, 9)))
        assert Levenshtein.distance(a, b) == _naive_levenshtein(a, b)


def test_anls_hand_cases():
    assert anls_score("Dear dr. Lobo", ["Dear Dr. Lobo", "Dr. Lobo"]) == 1.0
    assert anls_score("12/15/89", ["12/15/88"]) == pytest.approx(1 - 1 / 8)
    assert anls_score("abxy", ["abcd"]) == 0.5  # exactly the threshold is kept
    assert anls_score("axyz", ["abcd"]) == 0.0  # 0.25 < 0.5
    assert anls_score("", ["abc"]) == 0.0
    assert anls_score("", [""]) == 1.0
    assert anls_score("서울 특별시", ["서울특별시"]) == pytest.approx(1 - 1 / 6)
    assert anls_score("x", ["nope", "X "]) == 1.0  # best over gold answers, case and space insensitive


def test_anls_raw_length_denominator_official_vs_vlmeval():
    # distance on normalised "abc" vs "abd" is 1; official divides by the raw length 7 of "  abc  ".
    assert anls_score("abd", ["  abc  "], "official") == pytest.approx(1 - 1 / 7)
    assert anls_score("abd", ["  abc  "], "lmms") == pytest.approx(1 - 1 / 7)
    assert anls_score("abd", ["  abc  "], "vlmeval") == pytest.approx(1 - 1 / 3)
    # str.upper lengthens "ß" to "SS": official denominator 4, distance 2 -> 0.5 kept; vlmeval 1 - 2/2 -> 0.
    assert anls_score("ss", ["ßß"], "official") == 0.5
    assert anls_score("ss", ["ßß"], "vlmeval") == 0.0


def test_anls_result_and_errors():
    r = anls(["abd", "zzz"], [["abc"], ["abc"]], ids=["a", "b"])
    assert r.per_sample == pytest.approx([1 - 1 / 3, 0.0])
    assert r.score == pytest.approx((1 - 1 / 3) / 2)
    assert r.compat == "official" and "RRC" in r.scorer
    with pytest.raises(EvalbenchError, match="2 predictions but 1 references"):
        anls(["a", "b"], [["a"]])


def test_relaxed_accuracy_official_rules():
    assert relaxed_correctness("45%", "0.45")
    assert not relaxed_correctness("45%", "45")
    assert relaxed_correctness("44", "45")  # 2.2% off
    assert not relaxed_correctness("42", "45")  # 6.7% off
    assert relaxed_correctness("105", "100")  # exactly 5% is in
    assert not relaxed_correctness("1,000", "1000")  # a thousands separator makes it a string
    assert relaxed_correctness("1,000", "1,000")
    assert not relaxed_correctness("0.0", "0")  # gold 0 is compared as a string
    assert relaxed_correctness("0", "0")
    assert relaxed_correctness("Yes", "yes")
    assert not relaxed_correctness("45 kg", "45")
    assert relaxed_correctness("1e2", "100")  # Python float syntax, as the reference


def test_relaxed_accuracy_compat_strip_and_multiple_gold():
    assert relaxed_score("45% ", ["0.45"], "official") == 0.0
    assert relaxed_score("45% ", ["0.45"], "vlmeval") == 1.0
    assert relaxed_score("blue", ["red", "Blue"]) == 1.0
    r = relaxed_accuracy(["44", "x", "50%"], [["45"], ["y"], ["0.5"]])
    assert r.per_sample == [1.0, 0.0, 1.0] and r.score == pytest.approx(2 / 3)


def test_exact_match_modes():
    assert exact_score(" Paris ", ["paris"]) == 1.0
    assert exact_score("2", ["2.0"], "official") == 1.0
    assert exact_score("2", ["2.0"], "vlmeval") == 0.0
    assert exact_score("1,000", ["1000"]) == 1.0
    assert exact_score("new  york", ["New York"]) == 1.0
    assert exact_score("new  york", ["New York"], "vlmeval") == 0.0
    assert exact_score("", ["a"]) == 0.0
    assert exact_match(["a", "b"], [["a"], ["c"]]).score == 0.5


def test_token_f1_by_hand_and_korean_morphemes(ko_tokenizer):
    # normalised: [cat, sat] vs [cat, sat, down]: P = 1, R = 2/3 -> F1 = 0.8
    assert token_f1_score("the cat sat", ["a cat sat down"]) == pytest.approx(0.8)
    assert token_f1_score("", ["a cat"]) == 0.0
    assert token_f1_score("cat", ["dog", "the cat"]) == 1.0
    # Whitespace tokens share nothing; morphemes 고양이 + 가 share 고양이: P = 1, R = 1/2 -> 2/3.
    assert token_f1_score("고양이", ["고양이가"]) == 0.0
    assert token_f1_score("고양이", ["고양이가"], ko_tokenizer) == pytest.approx(2 / 3)
    r = token_f1(["고양이"], [["고양이가"]], tokenize=ko_tokenizer)
    assert r.score == pytest.approx(2 / 3) and r.extra["tokenize"] == "ko-morph"


def test_ocrbench_containment_and_hme_rule():
    assert ocrbench_score("The text reads HELLO world", ["hello"]) == 1.0
    assert ocrbench_score("hel lo", ["hello"]) == 0.0
    assert ocrbench_score("x^{2}+1", ["x^{2} + 1"], "HME100k") == 1.0
    assert ocrbench_score("x", ["X"], "HME100k") == 0.0  # case-sensitive
    assert ocrbench_score("x", ["X"], "Handwritten Mathematical Expression Recognition") == 0.0
    assert ocrbench_score(r"\frac{A}{B}", [r"\frac{A}{B}"], "HME100k", "official") == 1.0
    assert (
        ocrbench_score(r"\frac{A}{B}", [r"\frac{A}{B}"], "HME100k", "lmms") == 0.0
    )  # lmms lower-cases first
    assert ocrbench_score("anything", [""]) == 1.0  # empty gold is contained everywhere, as in the reference
    r = ocrbench(["A1", "b"], [["a1"], ["c"]], categories=["IIIT5K", None])
    assert r.per_sample == [1.0, 0.0]
