"""Tokenisation shared by every captioning metric (BLEU, CIDEr-D, METEOR) and token F1.

One rule for all of them, so numbers are comparable across metrics:

| mode | rule |
|---|---|
| ``none`` | split on whitespace, as the COCO scorers do on already tokenised text |
| ``ptb`` | the COCO caption evaluation's Stanford PTBTokenizer (lower-cased, punctuation removed); needs Java and the ``[coco]`` extra |
| ``ko-morph`` | Unicode NFC, then kiwipiepy morphemes (surface forms), lower-cased Latin; whitespace is not a token |
| ``char`` | Unicode NFC, then one token per non-space character (the character-level variant: with ``ko-morph`` the captioning metrics and token F1 also report it as ``extra["char_variant"]``) |

Every mode first applies Unicode NFC so that decomposed Hangul jamo (NFD, as macOS file names and some
OCR engines produce) scores the same as precomposed syllables.
"""

from __future__ import annotations

import unicodedata
import warnings
from collections.abc import Sequence

from tbi_evalbench._errors import EvalbenchError

TOKENIZE_MODES = ("none", "ptb", "ko-morph", "char")


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


class Tokenizer:
    """Turns captions into whitespace-joined token strings, the input form of the COCO-style scorers.

    The kiwipiepy analyser is built on first use and kept on the instance (it takes about a second to load),
    so score many captions with one ``Tokenizer``.

    Args:
        mode: one of ``none``, ``ptb``, ``ko-morph``, ``char`` (see the module table).
    """

    def __init__(self, mode: str = "none"):
        if mode not in TOKENIZE_MODES:
            raise EvalbenchError(f"unknown tokenize mode {mode!r}; use one of {', '.join(TOKENIZE_MODES)}")
        self.mode = mode
        self._kiwi = None

    def tokens(self, text: str) -> list[str]:
        """Tokens of one caption."""
        text = nfc(text)
        if self.mode == "none":
            return text.split()
        if self.mode == "char":
            return [c for c in text if not c.isspace()]
        if self.mode == "ko-morph":
            if self._kiwi is None:
                from kiwipiepy import Kiwi

                # Single thread, no typo/multi-word dictionaries: scoring needs neither, loading is faster.
                # kiwipiepy warns that num_workers=0 changed meaning in 0.21; single-threaded is what we want.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self._kiwi = Kiwi(num_workers=0, load_typo_dict=False, load_multi_dict=False)
            return [t.form.lower() for t in self._kiwi.tokenize(text) if t.form.strip()]
        return self.batch([text])[0].split()

    def batch(self, texts: Sequence[str]) -> list[str]:
        """Whitespace-joined token strings of many captions (PTB runs one Java process for all of them)."""
        if self.mode == "ptb":
            return _ptb_tokenize([nfc(t) for t in texts])
        return [" ".join(self.tokens(t)) for t in texts]


def _ptb_tokenize(texts: list[str]) -> list[str]:
    # The COCO caption evaluation's own tokenizer, so `ptb` numbers equal pycocoevalcap's end to end.
    try:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError as exc:
        raise EvalbenchError(
            "--tokenize ptb needs the COCO caption evaluation: pip install 'tbi-evalbench[coco]' (and Java)"
        ) from exc
    if not texts:
        return []
    captions = {i: [{"caption": t.replace("\n", " ")}] for i, t in enumerate(texts)}
    out = PTBTokenizer().tokenize(captions)
    return [out[i][0] for i in range(len(texts))]
