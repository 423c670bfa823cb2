"""CIDEr-D, BLEU and METEOR: hand-computed cases from the COCO scorers' rules, and equality with pycocoevalcap
itself (the ``[coco]`` extra, installed with the test extra) on random corpora including empty and one-word
captions."""

import random
import unicodedata

import pytest

from tbi_evalbench import EvalbenchError, Tokenizer, bleu, cider, meteor
from tbi_evalbench.cider import cider_d_scores

WORDS = [
    "a",
    "man",
    "riding",
    "horse",
    "on",
    "the",
    "beach",
    "with",
    "dog",
    "near",
    "water",
    "at",
    "sunset",
    "small",
    "group",
    "people",
]


def _corpus(rng, n_img, n_ref=5):
    def cap():
        return " ".join(rng.choices(WORDS, k=rng.choice([0, 1, 2, 5, 8, 11])))

    hyps = [cap() for _ in range(n_img)]
    refs = [[cap() or "a" for _ in range(rng.randint(1, n_ref))] for _ in range(n_img)]
    return hyps, refs


def test_cider_hand_computed_two_images():
    # N = 2 images, every reference n-gram has df 1 -> weight log 2. Image 1: hypothesis = reference, cosine 1
    # for unigrams and bigrams, no 3/4-grams (0), equal lengths -> 10 * (1 + 1 + 0 + 0) / 4 = 5. Image 2: no
    # shared n-gram -> 0. Corpus 2.5.
    assert cider_d_scores(["a b", "c d"], [["a b"], ["e f"]]) == pytest.approx([5.0, 0.0], abs=1e-12)
    r = cider(["a b", "c d"], [["a b"], ["e f"]], ids=["i1", "i2"])
    assert r.score == pytest.approx(2.5) and r.ids == ["i1", "i2"] and r.extra["sigma"] == 6.0


def test_cider_single_image_is_zero_and_df_depends_on_the_set():
    assert cider_d_scores(["a b c"], [["a b c"]]) == [0.0]  # log(N) = log(1) = 0
    hyps, refs = ["a man on a horse", "a dog"], [["a man riding a horse"], ["a small dog"]]
    alone = cider_d_scores(hyps, refs)
    more = cider_d_scores([*hyps, "a man"], [*refs, ["a man on the beach"]])
    assert alone[0] != pytest.approx(more[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cider_equals_pycocoevalcap(seed):
    import pycocoevalcap.cider.cider as pycoco_cider  # the [coco] extra, part of [test]

    hyps, refs = _corpus(random.Random(seed), 40)
    gts = {i: r for i, r in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    ref_score, ref_scores = pycoco_cider.Cider().compute_score(gts, res)
    ours = cider(hyps, refs)
    assert ours.per_sample == pytest.approx(list(ref_scores), rel=1e-12, abs=1e-12)
    assert ours.score == pytest.approx(float(ref_score), rel=1e-12)


def test_bleu_hand_computed():
    # p1 = 3/4, p2 = 2/3, p3 = 1/2, p4 = 0/1 (the scorer's 1e-15 floor), equal lengths so no brevity penalty.
    r = bleu(["a b c d"], [["a b c e"]])
    assert r.extra["bleu_1"] == pytest.approx(0.75, rel=1e-9)
    assert r.extra["bleu_2"] == pytest.approx(0.5**0.5, rel=1e-9)
    assert r.extra["bleu_3"] == pytest.approx(0.25 ** (1 / 3), rel=1e-9)
    assert r.score == pytest.approx((0.25 * 1e-15) ** 0.25, rel=1e-6)
    # brevity: 2 words against a 4-word reference -> exp(1 - 4/2) on BLEU-1 = 1.
    assert bleu(["a b"], [["a b c d"]]).extra["bleu_1"] == pytest.approx(
        2.718281828459045 ** (1 - 2), rel=1e-6
    )


@pytest.mark.parametrize("seed", [3, 4])
def test_bleu_equals_pycocoevalcap(seed):
    import pycocoevalcap.bleu.bleu as pycoco_bleu

    hyps, refs = _corpus(random.Random(seed), 30)
    gts = {i: r for i, r in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    ref_corpus, ref_per = pycoco_bleu.Bleu(4).compute_score(gts, res, verbose=0)
    ours = bleu(hyps, refs)
    assert [ours.extra[f"bleu_{k}"] for k in range(1, 5)] == pytest.approx(ref_corpus, rel=1e-12)
    assert ours.per_sample == pytest.approx(ref_per[3], rel=1e-12)


def test_meteor_nltk_hand_computed():
    # the, sat exact; cats~cat by stem: m = 3, P = 1, R = 3/5, Fmean = PR / (0.9P + 0.1R) = 0.625, one chunk:
    # penalty = 0.5 * (1/3)^3 -> 0.625 * (1 - 1/54).
    r = meteor(["the cats sat"], [["the cat sat on mat"]])
    assert r.per_sample[0] == pytest.approx(0.625 * (1 - 1 / 54), rel=1e-12)
    assert r.extra["variant"] == "nltk" and r.extra["synonyms"] in (True, False)
    assert meteor(["zzz"], [["a b"]]).score == 0.0
    assert meteor([""], [["a b"]]).score == 0.0


def test_korean_tokenisation_rule_is_shared_and_nfc(ko_tokenizer):
    nfd = unicodedata.normalize("NFD", "고양이가 앉았다")
    assert ko_tokenizer.tokens(nfd) == ["고양이", "가", "앉", "었", "다"]
    assert Tokenizer("char").tokens(nfd) == list("고양이가앉았다")
    # Morphemes let "고양이" match the reference's "고양이가" for every captioning metric.
    hyp, ref = ["고양이 가 앉 었 다"], [["고양이가 앉았다"]]
    assert bleu(hyp, ref, tokenize=ko_tokenizer).extra["bleu_1"] == pytest.approx(1.0, rel=1e-6)
    assert bleu(hyp, ref).extra["bleu_1"] < 0.01
    assert meteor(hyp, ref, tokenize=ko_tokenizer).score > meteor(hyp, ref).score


def test_captioning_input_errors():
    with pytest.raises(EvalbenchError, match="image x: captioning needs a non-empty list"):
        cider(["a"], [[]], ids=["x"])
    with pytest.raises(EvalbenchError, match="unknown tokenize mode"):
        bleu(["a"], [["a"]], tokenize="spaces")
    with pytest.raises(EvalbenchError, match="unknown METEOR variant"):
        meteor(["a"], [["a"]], variant="java")


@pytest.mark.slow
def test_meteor_coco_equals_pycocoevalcap_jar():
    from pycocoevalcap.meteor.meteor import Meteor

    hyps = [
        "a man riding a horse on the beach",
        "a dog near water",
        "people at sunset",
        "a cat on a mat",
        "zebra",
    ]
    refs = [
        ["a man rides a horse at the beach", "a rider on a beach"],
        ["a small dog near the water"],
        ["a group of people"],
        ["a cat on a mat"],
        ["the dog"],
    ]
    scorer = Meteor()  # starts its JVM in the background: both jars load their tables at the same time
    try:
        ours = meteor(hyps, refs, variant="coco")
        ref_score, ref_scores = scorer.compute_score(
            {i: r for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)}
        )
    finally:
        scorer.meteor_p.stdin.close()
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()
    assert ours.per_sample == pytest.approx(ref_scores, abs=1e-12)
    assert ours.score == pytest.approx(ref_score, abs=1e-12)
    assert ours.extra["variant"] == "coco" and 0 < ours.score < 1
    # METEOR 1.5: an identical caption has no fragmentation penalty (1.0); no shared word scores 0.
    assert ours.per_sample[3:] == [1.0, 0.0]
    assert ours.extra["mean_per_sample"] == pytest.approx(sum(ours.per_sample) / 5)


def test_ptb_tokenize_is_cocos_tokenizer():
    # COCO's pipeline: lower-case, PTB splitting ('s), punctuation tokens dropped.
    tok = Tokenizer("ptb")
    assert tok.batch(["A man, riding a horse!", "It's the dog's ball."]) == [
        "a man riding a horse",
        "it 's the dog 's ball",
    ]
    r = cider(["A dog.", "A cat!"], [["a dog"], ["the cat ."]], tokenize=tok)
    assert r.extra["tokenize"] == "ptb" and r.per_sample == pytest.approx(
        cider(["a dog", "a cat"], [["a dog"], ["the cat"]]).per_sample
    )


def test_ko_morph_reports_the_character_level_variant_beside_it(ko_tokenizer):
    hyp, ref = ["고양이가 매트 위에 앉았다"], [["고양이 한 마리가 매트에 앉아 있다"]]
    for fn in (cider, bleu, meteor):
        morph = fn(hyp, ref, tokenize=ko_tokenizer)
        assert morph.extra["char_variant"] == fn(hyp, ref, tokenize="char").score
        assert "char_variant" not in fn(hyp, ref).extra
