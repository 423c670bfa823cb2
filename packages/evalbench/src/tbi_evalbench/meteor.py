"""METEOR in two documented variants.

| variant | implementation | parameters | matching stages | corpus score |
|---|---|---|---|---|
| ``nltk`` (default) | ``nltk.translate.meteor_score`` | alpha 0.9, beta 3, gamma 0.5 | exact, Porter stem, WordNet synonyms *only when a WordNet corpus is installed locally* (no PyPI package ships one; ``extra["synonyms"]`` says which) | mean of per-caption scores (best over references) |
| ``coco`` | the METEOR 1.5 jar shipped by pycocoevalcap (``[coco]`` extra), run with Java as the COCO caption evaluation does (``-l en -norm``) | METEOR 1.5 English defaults | exact, stem, synonym, paraphrase (tables bundled in the jar) | the jar's aggregate over all segments, as pycocoevalcap reports it |

nltk variant, for hypothesis h and one reference r with m aligned unigrams and ch chunks:

    P = m/|h|,  R = m/|r|,  Fmean = P R / (alpha P + (1 - alpha) R),  penalty = gamma (ch/m)^beta
    METEOR = Fmean (1 - penalty)     (0 when m = 0), best over the references

Both variants see the same tokens (:mod:`tbi_evalbench.text`); captions are lower-cased by the scorer.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tbi_evalbench._captions import reports_char_variant, tokenised_pairs
from tbi_evalbench._errors import EvalbenchError
from tbi_evalbench.result import ScoreResult, check_compat, default_ids, mean
from tbi_evalbench.text import Tokenizer

METEOR_VARIANTS = ("nltk", "coco")


class _NoSynonyms:
    """Stands in for WordNet when no corpus is installed: the synonym stage then matches nothing."""

    def synsets(self, word):
        return []


def _wordnet():
    import nltk

    try:
        nltk.data.find("corpora/wordnet.zip")
    except LookupError:
        try:
            nltk.data.find("corpora/wordnet")
        except LookupError:
            return _NoSynonyms(), False
    from nltk.corpus import wordnet

    return wordnet, True


def meteor_nltk_scores(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[list[float], bool]:
    """Per-caption nltk METEOR of tokenised captions, and whether the WordNet synonym stage was active."""
    from nltk.stem.porter import PorterStemmer
    from nltk.translate.meteor_score import meteor_score

    wordnet, has_synonyms = _wordnet()
    stemmer = PorterStemmer()
    scores = [
        meteor_score(
            [r.split() for r in refs],
            h.split(),
            stemmer=stemmer,
            wordnet=wordnet,
            alpha=0.9,
            beta=3.0,
            gamma=0.5,
        )
        for h, refs in zip(hypotheses, references)
    ]
    return scores, has_synonyms


def meteor_jar_path() -> Path:
    """Where pycocoevalcap keeps ``meteor-1.5.jar``; raises with the fix when it or Java is missing."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise EvalbenchError(
            "METEOR variant 'coco' needs the METEOR 1.5 jar: pip install 'tbi-evalbench[coco]'"
        )
    # pycocoevalcap's subfolders are namespace packages (no __init__): locate the jar from the top package.
    jar = Path(next(iter(spec.submodule_search_locations))) / "meteor" / "meteor-1.5.jar"
    if not jar.exists():
        raise EvalbenchError(
            f"{jar} is missing; reinstall pycocoevalcap (pip install --force-reinstall pycocoevalcap)"
        )
    if shutil.which("java") is None:
        raise EvalbenchError(
            "METEOR variant 'coco' runs the METEOR 1.5 jar and needs Java on PATH (e.g. apt-get install default-jre)"
        )
    return jar


def meteor_coco_scores(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[list[float], float]:
    """(per-caption scores, aggregate) from the METEOR 1.5 jar, using pycocoevalcap's stdio protocol."""
    jar = meteor_jar_path()
    if not hypotheses:
        return [], 0.0
    lines = []
    for h, refs in zip(hypotheses, references):
        # pycocoevalcap cleans the hypothesis only; a "|||" inside a reference would split it, so refuse it.
        for r in refs:
            if "|||" in r:
                raise EvalbenchError(
                    f"reference caption {r!r} contains '|||', the METEOR jar's field separator"
                )
        h = h.replace("|||", "").replace("  ", " ")
        lines.append(" ||| ".join(("SCORE", " ||| ".join(refs), h)))
    cmd = ["java", "-jar", "-Xmx2G", jar.name, "-", "-", "-stdio", "-l", "en", "-norm"]
    with subprocess.Popen(
        cmd, cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        encoding="utf-8",
    ) as proc:  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        stats = []
        for line in lines:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            stats.append(proc.stdout.readline().strip())
        proc.stdin.write("EVAL ||| " + " ||| ".join(stats) + "\n")
        proc.stdin.flush()
        try:
            scores = [float(proc.stdout.readline().strip()) for _ in stats]
            total = float(proc.stdout.readline().strip())
        except ValueError as exc:
            proc.kill()
            err = proc.stderr.read() if proc.stderr else ""
            raise EvalbenchError(
                f"the METEOR jar did not answer with scores; its stderr: {err[-500:]}"
            ) from exc
        proc.stdin.close()
        proc.wait(timeout=30)
    return scores, total


@reports_char_variant
def meteor(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    compat: str = "official",
    ids: Sequence[str] | None = None,
    tokenize: str | Tokenizer = "none",
    variant: str = "nltk",
) -> ScoreResult:
    """METEOR over a set of captions (variant ``nltk`` or ``coco``; see the module table)."""
    check_compat(compat)
    if variant not in METEOR_VARIANTS:
        raise EvalbenchError(f"unknown METEOR variant {variant!r}; use one of {', '.join(METEOR_VARIANTS)}")
    id_list = default_ids(len(predictions), ids)
    hyps, refs = tokenised_pairs(predictions, references, tokenize, id_list)
    mode = tokenize.mode if isinstance(tokenize, Tokenizer) else tokenize
    if variant == "nltk":
        scores, synonyms = meteor_nltk_scores(hyps, refs)
        return ScoreResult(
            "meteor", "nltk meteor_score (alpha 0.9, beta 3, gamma 0.5)", compat, mean(scores), scores, id_list,
            extra={"variant": "nltk", "synonyms": synonyms, "tokenize": mode},
        )  # fmt: skip
    scores, total = meteor_coco_scores(hyps, refs)
    return ScoreResult(
        "meteor", "METEOR 1.5 jar (pycocoevalcap, -l en -norm)", compat, total, scores, id_list,
        extra={"variant": "coco", "mean_per_sample": mean(scores), "tokenize": mode},
    )  # fmt: skip
