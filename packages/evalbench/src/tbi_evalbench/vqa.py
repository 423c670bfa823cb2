"""VQA accuracy (VQAv2 / TextVQA), as the official ``vqaEval.py`` of the VQA challenge computes it.

For a prediction p and human answers g_1..g_n (n = 10 in VQAv2/TextVQA):

    acc(p) = (1/n) * sum_i min(1, #{j != i : g_j == p} / 3)

i.e. min(#matches / 3, 1) averaged over the n leave-one-out subsets of the human answers.

Answer normalisation, by compat mode (the differences move scores):

| step | official (GT-Vision-Lab ``vqaEval.py``) | lmms (lmms-eval ``EvalAIAnswerProcessor``) | vlmeval (VLMEvalKit ``process_answer``) |
|---|---|---|---|
| newline/tab to space, strip | always | always | always |
| when normalised | **only when the human answers disagree** (``len(set(answers)) > 1``); else raw, case-sensitive compare | always (prediction and answers) | always (prediction and answers) |
| first | - | lower-case, drop ``,`` and ``?``, ``'s`` -> `` 's`` | - |
| punctuation | ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` removed if next to a space (or the text has a digit,digit comma), else replaced by a space | same rule | same rule |
| periods | ``(?!<=\\d)(\\.)(?!\\d)``: every period not followed by a digit, so ``"5."`` -> ``"5"`` | same | ``(?<!\\d)\\.(?!\\d)``: a period after a digit is kept, so ``"5."`` stays |
| period count | at most 32 (``re.UNICODE`` lands in ``sub``'s count argument) | same | same |
| words | lower-case, number words ``none..ten`` -> digits, articles a/an/the dropped, contractions restored (``dont`` -> ``don't``) | same | same |
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tbi_evalbench._errors import EvalbenchError
from tbi_evalbench.result import ScoreResult, check_compat, check_lengths, default_ids, mean

_PUNCT = (
    ";",
    "/",
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
)
_PUNCT_CHARS = frozenset("".join(_PUNCT) + ".")
_COMMA_OFFICIAL = re.compile(r"(\d)(,)(\d)")
_COMMA_LMMS = re.compile(r"(?<=\d)(\,)+(?=\d)")
# The official lookbehind is mistyped as a lookahead for the text "<=" and a digit; it never matches, so it
# strips every period that is not followed by a digit.  VLMEvalKit's is a real lookbehind.
_PERIOD_OFFICIAL = re.compile(r"(?!<=\d)(\.)(?!\d)")
_PERIOD_VLMEVAL = re.compile(r"(?<!\d)\.(?!\d)")
# The official call is periodStrip.sub("", text, re.UNICODE): the flag lands in the count argument.
_PERIOD_COUNT = int(re.UNICODE)

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})


def _contractions() -> dict[str, str]:
    # The official table, written as "key=value" pairs; keys are the apostrophe-less spellings.
    pairs = (
        "aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've "
        "couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've "
        "hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's "
        "howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd "
        "itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't "
        "mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've "
        "neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at "
        "'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've "
        "shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd "
        "somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's "
        "someoned=someone'd someoned've=someone'd've someone'dve=someone'd've someonell=someone'll "
        "someones=someone's somethingd=something'd somethingd've=something'd've "
        "something'dve=something'd've somethingll=something'll thats=that's thered=there'd "
        "thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd "
        "theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas "
        "wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll whatre=what're "
        "whats=what's whatve=what've whens=when's whered=where'd wheres=where's whereve=where've whod=who'd "
        "whod've=who'd've who'dve=who'd've wholl=who'll whos=who's whove=who've whyll=why'll whyre=why're "
        "whys=why's wont=won't wouldve=would've wouldnt=wouldn't wouldnt've=wouldn't've "
        "wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll yall'd've=y'all'd've "
        "y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've you'dve=you'd've "
        "youll=you'll youre=you're youve=you've"
    )
    return dict(pair.split("=", 1) for pair in pairs.split())


CONTRACTIONS = _contractions()


def process_punctuation(text: str, compat: str = "official") -> str:
    """The reference ``processPunctuation``: the decision per symbol looks at the *input* text."""
    if _PUNCT_CHARS.isdisjoint(text):
        return text
    comma = (_COMMA_LMMS if compat == "lmms" else _COMMA_OFFICIAL).search(text) is not None
    out = text
    for p in _PUNCT:
        if comma or (p + " " in text) or (" " + p in text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    period = _PERIOD_VLMEVAL if compat == "vlmeval" else _PERIOD_OFFICIAL
    return period.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """The reference ``processDigitArticle``: lower-case, number words to digits, no articles, contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(text: str, compat: str = "official") -> str:
    """Full normalisation of one answer as the given harness applies it (official applies it conditionally)."""
    if compat == "lmms":
        text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text, compat))


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_score(prediction: str, answers: Sequence[str], compat: str = "official", _memo=None) -> float:
    """VQA accuracy of one prediction against its human answers (see the module docstring)."""
    if not answers:
        raise EvalbenchError("VQA accuracy needs at least one human answer per question; got an empty list")
    # _memo caches normalised strings within one call of vqa_accuracy (answers repeat a lot across questions).
    memo = {} if _memo is None else _memo

    def norm(text: str) -> str:
        out = memo.get(text)
        if out is None:
            out = memo[text] = normalize_answer(text, compat)
        return out

    if compat == "official":
        gts = [_clean(a) for a in answers]
        pred = _clean(prediction)
        if len(set(gts)) > 1:
            gts = [norm(a) for a in gts]
            pred = norm(pred)
    else:
        gts = [norm(a) for a in answers]
        pred = norm(prediction)
    matches = gts.count(pred)
    # With no match every leave-one-out term is 0; with 4 or more every term is min(1, >=1) = 1: the sums are
    # then exactly 0 and n, so only 1..3 matches need the reference's term-by-term sum.
    if matches == 0:
        return 0.0
    if matches > 3:
        return 1.0
    total = 0.0
    for g in gts:
        total += min(1, float(matches - (g == pred)) / 3)
    return total / len(gts)


def vqa_accuracy(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    compat: str = "official",
    ids: Sequence[str] | None = None,
) -> ScoreResult:
    """VQA accuracy over a set: per-question scores and their mean.

    Args:
        predictions: one model answer per question.
        references: the human answers of each question (10 in VQAv2/TextVQA).
        compat: ``official`` (default), ``lmms`` or ``vlmeval``; see the module table.
        ids: question ids (default ``"0", "1", ...``).
    """
    check_compat(compat)
    check_lengths(predictions, references)
    memo: dict = {}
    scores = [vqa_score(p, a, compat, memo) for p, a in zip(predictions, references)]
    scorer = {
        "official": "VQA official vqaEval.py (GT-Vision-Lab)",
        "lmms": "lmms-eval textvqa/vqav2 EvalAIAnswerProcessor",
        "vlmeval": "VLMEvalKit vqa_eval.process_answer",
    }[compat]
    return ScoreResult("vqa_accuracy", scorer, compat, mean(scores), scores, default_ids(len(scores), ids))
