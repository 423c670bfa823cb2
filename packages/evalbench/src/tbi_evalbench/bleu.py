"""BLEU-1..4, as the COCO caption evaluation (pycocoevalcap ``bleu_scorer.py``, option ``closest``) computes it.

Per image, with clipped n-gram matches m_n (counts clipped by the max count over the references), candidate
n-grams g_n, candidate length c and the reference length r closest to c (ties -> the shorter):

    BLEU-N(image) = prod_{n<=N} ((m_n + 1e-15) / (g_n + 1e-9)) ^ (1/N) * BP,   BP = exp(1 - r/c) if c < r else 1

The corpus BLEU-N uses the same formula on m_n, g_n, c, r summed over all images (it is **not** the mean of the
per-image scores: that is what the COCO evaluation prints, and what ``score`` holds; the per-image mean is in
``extra["mean_per_sample"]``). ``score`` is BLEU-4; ``extra`` holds BLEU-1..4.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tbi_evalbench._captions import reports_char_variant, tokenised_pairs
from tbi_evalbench.result import ScoreResult, check_compat, default_ids, mean
from tbi_evalbench.text import Tokenizer

_TINY = 1e-15
_SMALL = 1e-9


def _counts(words: list[str], n: int) -> dict[tuple[str, ...], int]:
    counts: dict[tuple[str, ...], int] = {}
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            gram = tuple(words[i : i + k])
            counts[gram] = counts.get(gram, 0) + 1
    return counts


def _bleu(correct: list[float], guess: list[float], testlen: float, reflen: float, n: int) -> list[float]:
    out, acc = [], 1.0
    for k in range(n):
        acc *= (float(correct[k]) + _TINY) / (float(guess[k]) + _SMALL)
        out.append(acc ** (1.0 / (k + 1)))
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    if ratio < 1:
        out = [b * math.exp(1 - 1 / ratio) for b in out]
    return out


def bleu_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]], n: int = 4):
    """(corpus BLEU-1..n, per-image [BLEU-1..n]) of tokenised captions."""
    per_image = []
    tot_correct, tot_guess = [0] * n, [0] * n
    tot_test = tot_ref = 0
    for hyp, refs in zip(hypotheses, references):
        maxcounts: dict[tuple[str, ...], int] = {}
        reflens = []
        for ref in refs:
            words = ref.split()
            reflens.append(len(words))
            for gram, c in _counts(words, n).items():
                if c > maxcounts.get(gram, 0):
                    maxcounts[gram] = c
        words = hyp.split()
        testlen = len(words)
        reflen = min((abs(rl - testlen), rl) for rl in reflens)[1]
        guess = [max(0, testlen - k + 1) for k in range(1, n + 1)]
        correct = [0] * n
        for gram, c in _counts(words, n).items():
            correct[len(gram) - 1] += min(maxcounts.get(gram, 0), c)
        per_image.append(_bleu(correct, guess, testlen, reflen, n))
        tot_test += testlen
        tot_ref += reflen
        for k in range(n):
            tot_correct[k] += correct[k]
            tot_guess[k] += guess[k]
    corpus = _bleu(tot_correct, tot_guess, tot_test, tot_ref, n)
    return corpus, per_image


@reports_char_variant
def bleu(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    compat: str = "official",
    ids: Sequence[str] | None = None,
    tokenize: str | Tokenizer = "none",
) -> ScoreResult:
    """COCO BLEU over a set: ``score`` = corpus BLEU-4, per-sample = per-image BLEU-4, extras BLEU-1..4."""
    check_compat(compat)
    id_list = default_ids(len(predictions), ids)
    hyps, refs = tokenised_pairs(predictions, references, tokenize, id_list)
    corpus, per_image = bleu_scores(hyps, refs)
    per4 = [b[3] for b in per_image]
    extra = {f"bleu_{k + 1}": corpus[k] for k in range(4)}
    extra.update(
        mean_per_sample=mean(per4), tokenize=tokenize.mode if isinstance(tokenize, Tokenizer) else tokenize
    )
    return ScoreResult(
        "bleu",
        "pycocoevalcap Bleu (closest ref length, corpus BLEU-4)",
        compat,
        corpus[3],
        per4,
        id_list,
        extra=extra,
    )
