"""The tokenizer: a checkpoint's own, or a small byte-level BPE trained offline for the random tiny LM.

Byte-level BPE never meets an unknown character, so Hangul (3 UTF-8 bytes per syllable) always encodes;
training on a fixed bilingual text plus the run's own corpus merges frequent syllables and words.
Every tokenizer leaves here with the image-pad special token and a ChatML chat template.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from tbi_train.config import TokenizerConfig
from tbi_train.errors import TrainError

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "build_tokenizer", "train_bpe_tokenizer"]

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image_pad|>")
"""Padding / end of text, turn start, turn end (also EOS for generation), image placeholder."""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML, as Qwen2 uses: `<|im_start|>role\\ncontent<|im_end|>\\n` per turn."""

_BILINGUAL_TEXT = (
    "What is written in the image? 이미지에 쓰여 있는 글자는 무엇입니까?",
    "Answer with a single word. 한 단어로 답하세요.",
    "What colour is the shape? 도형은 무슨 색입니까? red green blue yellow purple black",
    "빨간색 초록색 파란색 노란색 보라색 검은색 원 사각형 삼각형",
    "How many objects are there? 물체는 몇 개입니까? one two three four five six seven",
    "하나 둘 셋 넷 다섯 여섯 일곱 0 1 2 3 4 5 6 7 8 9 10 100 1000",
    "Read the value of the bar for Seoul in the chart. 차트에서 서울의 값을 읽으세요.",
    "서울 부산 대구 인천 광주 대전 Seoul Busan Daegu Incheon Gwangju Daejeon",
    "Which cell of the table shows the price? 표에서 가격은 어느 칸에 있습니까?",
    "가격 수량 이름 날짜 합계 price quantity name date total",
    "Describe the image. 이미지를 설명하세요. A document with a title and three lines of text.",
    "영수증 공지 초대장 receipt notice invitation 사과 바나나 포도 딸기 apple banana grape strawberry",
    "The quick brown fox jumps over the lazy dog. 다람쥐 헌 쳇바퀴에 타고파.",
)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path):
    """Train a byte-level BPE on a fixed bilingual text plus `texts`; save to `out_dir`; return it.

    Returns a `transformers.PreTrainedTokenizerFast` with SPECIAL_TOKENS and CHAT_TEMPLATE.
    Deterministic: the same texts and vocab_size give the same merges.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    min_size = 256 + len(SPECIAL_TOKENS)
    if vocab_size <= min_size:
        raise TrainError(f"model.tokenizer.vocab_size={vocab_size} is too small; use more than {min_size}.")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator([*_BILINGUAL_TEXT, *texts], trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|image_pad|>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    tok.save_pretrained(tmp)
    tmp.replace(out_dir)
    return tok


def build_tokenizer(cfg: TokenizerConfig, lm_path: str | None, cache_dir: str | Path | None, corpus=()):
    """The run's tokenizer: `cfg.path`, else the LM checkpoint's, else a BPE trained on `corpus` (cached).

    A cached BPE under `cache_dir/tokenizer` is reused as is, so a resumed run tokenises identically.
    The image-pad token is added when missing; a ChatML template is set when the tokenizer has none.
    """
    from transformers import AutoTokenizer

    path = cfg.path or lm_path
    if path is not None:
        if not Path(path).is_dir():
            key = "model.tokenizer.path" if cfg.path else "model.lm.path"
            raise TrainError(
                f"{key}={path} is not a folder; point it at a local checkpoint with a tokenizer."
            )
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    else:
        cached = Path(cache_dir) / "tokenizer" if cache_dir is not None else None
        if cached is not None and (cached / "tokenizer.json").is_file():
            tok = AutoTokenizer.from_pretrained(cached, local_files_only=True)
        else:
            if cached is None:
                raise TrainError("a random-init LM needs a cache_dir to hold its trained tokenizer.")
            cached.parent.mkdir(parents=True, exist_ok=True)
            tok = train_bpe_tokenizer(corpus, cfg.vocab_size, cached)
            logger.info("trained a %d-token byte-level BPE into %s", len(tok), cached)
    if cfg.image_pad_token not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [cfg.image_pad_token]})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok
