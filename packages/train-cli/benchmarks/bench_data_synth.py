"""Speed of the data rooms: synthetic generation and the load -> collate path.

- `test_bench_generate_200`: `generate_synthetic` of 200 records at 224 x 224 (8-frame videos) into
  a fresh folder; the issue's target is "a few seconds on one core".
- `test_bench_collate_batches`: decode + transform + tokenise + batch 64 synthetic samples (batch 8)
  through a DataLoader in the main process; reported as samples per second in the package README.
Run with timing: `OMP_NUM_THREADS=1 .venv/bin/python -m pytest packages/train-cli/benchmarks -q`.
"""

import itertools

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerFast

from tbi_train.data import Collator, load_conversations
from tbi_train.synth import generate_synthetic

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image_pad|>"]


def _tokenizer():
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(["What is the value of apple? 사과의 값은 얼마인가요? 12"] * 10, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=SPECIAL[1:],
    )
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tok


def _transform(img):
    x = np.asarray(img.resize((224, 224)), dtype=np.float32) / 255.0  # [H, W, 3]
    return torch.from_numpy(x).permute(2, 0, 1)  # [3, H, W]


def test_bench_generate_200(benchmark, tmp_path):
    counter = itertools.count()

    def run():
        return generate_synthetic(tmp_path / f"run{next(counter)}", n=200, seed=0)

    out = benchmark.pedantic(run, rounds=3, iterations=1)
    assert (out / "train.json").is_file() and (out / "manifest.json").is_file()


def test_bench_collate_batches(benchmark, tmp_path):
    root = generate_synthetic(tmp_path / "data", n=72, seed=1)
    dataset = load_conversations(root / "train.json")
    collator = Collator(_tokenizer(), _transform, tokens_per_image=64)

    def run():
        return sum(len(b["sample_ids"]) for b in DataLoader(dataset, batch_size=8, collate_fn=collator))

    seen = benchmark.pedantic(run, rounds=3, iterations=1)
    assert seen == len(dataset)
