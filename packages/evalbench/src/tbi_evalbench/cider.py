"""CIDEr-D, as the COCO caption evaluation (pycocoevalcap ``cider_scorer.py``) computes it.

For image i with hypothesis c and references S_i = {s_i1..s_im}, n-gram orders n = 1..4:

    g^n(x)      = tf(w, x) * (log(N) - log(max(1, df(w))))       for every n-gram w of x   (tf-idf vector)
    df(w)       = number of images of the *evaluated set* whose references contain w;  N = number of images
    sim^n(c, s) = sum_w min(g^n_w(c), g^n_w(s)) * g^n_w(s) / (||g^n(c)|| ||g^n(s)||)   (clipped; the division is
                  skipped when a norm is 0)
                  * exp(-(l(c) - l(s))^2 / (2 sigma^2)),  sigma = 6                  (length penalty)
    CIDEr-D(i)  = 10 * mean_n (1/m) sum_j sim^n(c, s_ij)
    corpus      = mean_i CIDEr-D(i)

Quirks kept from the reference: the "length" l(x) is the number of *bigrams* of x (= words - 1 for two or more
words, 0 for one word); with a single image log(N) = 0, so every score is 0; document frequencies, hence every
score, change when images are added to or removed from the evaluated set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tbi_evalbench._captions import reports_char_variant, tokenised_pairs
from tbi_evalbench.result import ScoreResult, check_compat, default_ids
from tbi_evalbench.text import Tokenizer

CIDER_SIGMA = 6.0
CIDER_N = 4


def _gram_entries(captions: Sequence[str], n: int):
    """Every (caption, n-gram) pair with its term frequency, n-grams as integer ids.

    Returns (lens [C], entry_caption [E], entry_gram [E], entry_tf [E], gram_order [G]): entries sorted by
    (caption, gram); gram ids are shared by all captions; gram_order[g] = n-gram length - 1.
    """
    vocab: dict[str, int] = {}
    ids: list[int] = []
    lens = []
    for c in captions:
        words = c.split()
        lens.append(len(words))
        ids.extend([vocab.setdefault(w, len(vocab)) for w in words])
    lens_a = np.asarray(lens, dtype=np.int64)  # [C]
    tok = np.asarray(ids, dtype=np.int64)  # [M]
    cap_of_tok = np.repeat(np.arange(len(captions), dtype=np.int64), lens_a)  # [M]
    starts = np.cumsum(lens_a) - lens_a
    room = lens_a[cap_of_tok] - (
        np.arange(tok.size, dtype=np.int64) - starts[cap_of_tok]
    )  # words left from here
    v = max(len(vocab), 1)
    prev = tok  # compact id of the (k-1)-gram starting at each position (valid where room >= k-1)
    caps, grams, orders = [], [], []
    offset = 0
    for k in range(1, n + 1):
        valid = np.nonzero(room >= k)[0]
        if k == 1:
            key = tok[valid]
        else:
            # A k-gram is its (k-1)-gram prefix id and its last word: one int64 key, no tuples.
            key = prev[valid] * v + tok[valid + k - 1]
        uniq, inverse = np.unique(key, return_inverse=True)
        cur = np.full(tok.size, -1, dtype=np.int64)
        cur[valid] = inverse
        caps.append(cap_of_tok[valid])
        grams.append(inverse + offset)
        orders.append(np.full(uniq.size, k - 1, dtype=np.int64))
        offset += uniq.size
        prev = cur
    gram_order = np.concatenate(orders) if orders else np.zeros(0, dtype=np.int64)
    g_total = max(offset, 1)
    pair = np.concatenate(caps) * g_total + np.concatenate(grams)
    upair, tf = np.unique(pair, return_counts=True)
    return lens_a, upair // g_total, upair % g_total, tf.astype(np.float64), gram_order


def cider_d_scores(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    n: int = CIDER_N,
    sigma: float = CIDER_SIGMA,
) -> list[float]:
    """Per-image CIDEr-D of tokenised captions (whitespace-separated tokens), document frequencies over this set.

    Vectorised over all (caption, n-gram) pairs; the arithmetic is the reference's, term by term.
    """
    n_img = len(hypotheses)
    if n_img == 0:
        return []
    n_refs = np.asarray([len(r) for r in references], dtype=np.int64)  # [I]
    captions = [*hypotheses, *(r for refs in references for r in refs)]  # hypothesis of image i is caption i
    cap_img = np.concatenate([np.arange(n_img), np.repeat(np.arange(n_img), n_refs)])  # [C]
    lens, e_cap, e_gram, tf, gram_order = _gram_entries(captions, n)
    g_total = max(gram_order.size, 1)
    is_ref = e_cap >= n_img
    # df(w): images whose references contain w.
    img_gram = np.sort(cap_img[e_cap[is_ref]] * g_total + e_gram[is_ref])
    # distinct (image, gram) pairs by sort + neighbour compare (numpy's hash-based unique is far slower here)
    img_gram = (
        img_gram[np.concatenate(([True], img_gram[1:] != img_gram[:-1]))] if img_gram.size else img_gram
    )
    df = np.bincount(img_gram % g_total, minlength=g_total).astype(np.float64)  # [G]
    ref_len = np.log(float(n_img))
    w = tf * (ref_len - np.log(np.maximum(1.0, df[e_gram])))  # [E] tf-idf weights
    e_order = gram_order[e_gram]
    n_caps = len(captions)
    norm = np.sqrt(np.bincount(e_cap * n + e_order, weights=w * w, minlength=n_caps * n)).reshape(n_caps, n)
    # Join every reference entry with the hypothesis entry of the same image and n-gram (weights are >= 0, so
    # n-grams missing from either side add nothing to sum_w min(h, r) * r).
    hyp_key = e_cap[~is_ref] * g_total + e_gram[~is_ref]  # sorted: entries are sorted by (caption, gram)
    hyp_w = w[~is_ref]
    r_cap, r_w, r_order = e_cap[is_ref], w[is_ref], e_order[is_ref]
    r_key = cap_img[r_cap] * g_total + e_gram[is_ref]
    at = np.minimum(np.searchsorted(hyp_key, r_key), max(hyp_key.size - 1, 0))
    found = hyp_key[at] == r_key if hyp_key.size else np.zeros(r_key.size, dtype=bool)
    contrib = np.minimum(hyp_w[at[found]], r_w[found]) * r_w[found]
    val = np.bincount(r_cap[found] * n + r_order[found], weights=contrib, minlength=n_caps * n).reshape(
        n_caps, n
    )
    val = val[n_img:]  # [R, n] per reference caption
    ref_img = cap_img[n_img:]
    nh, nr = norm[ref_img], norm[n_img:]
    ok = (nh != 0) & (nr != 0)
    val = np.where(ok, val / np.where(ok, nh * nr, 1.0), val)
    # The reference's "length" counts bigrams (its n == 1 is the second order): words - 1, or 0.
    length = np.maximum(lens - 1, 0) if n > 1 else np.zeros_like(lens)
    delta = (length[ref_img] - length[n_img:]).astype(np.float64)
    val = val * (np.e ** (-(delta**2) / (2 * sigma**2)))[:, None]
    per_img = np.zeros((n_img, n))
    np.add.at(per_img, ref_img, val)
    return [float(x) for x in per_img.mean(axis=1) / n_refs * 10.0]


@reports_char_variant
def cider(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    compat: str = "official",
    ids: Sequence[str] | None = None,
    tokenize: str | Tokenizer = "none",
    sigma: float = CIDER_SIGMA,
) -> ScoreResult:
    """CIDEr-D over an evaluated set of images (one hypothesis, >= 1 references each); corpus = mean per image."""
    check_compat(compat)
    id_list = default_ids(len(predictions), ids)
    hyps, refs = tokenised_pairs(predictions, references, tokenize, id_list)
    scores = cider_d_scores(hyps, refs, sigma=sigma)
    mode = tokenize.mode if isinstance(tokenize, Tokenizer) else tokenize
    return ScoreResult(
        "cider", "pycocoevalcap CiderD (COCO caption evaluation)", compat, sum(scores) / len(scores) if scores else 0.0,
        scores, id_list, extra={"tokenize": mode, "sigma": sigma},
    )  # fmt: skip
