"""The whole data path of the tiny preset: synth -> load -> 40/60 mixture -> pre-flight -> DataLoader batches."""

from collections import Counter

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerFast

from tbi_train.data import (
    IGNORE_INDEX,
    Collator,
    MixtureDataset,
    load_conversations,
    preflight_check,
    split_by,
)
from tbi_train.synth import generate_synthetic

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image_pad|>"]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tokenizer(corpus):
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=SPECIAL[1:],
    )
    tok.chat_template = CHATML
    return tok


def _transform(img):
    x = np.asarray(img.resize((16, 16)), dtype=np.float32) / 255.0  # [H, W, 3]
    return torch.from_numpy(x).permute(2, 0, 1)  # [3, H, W]


def test_synthetic_data_flows_into_training_batches(tmp_path):
    root = generate_synthetic(tmp_path / "synth", n=60, seed=5, image_size=96, num_frames=3)
    train = load_conversations(root / "train.json", num_frames=3)
    val = load_conversations(root / "val.json", num_frames=3)
    assert len(train) + len(val) == 60 and len(val) == 6
    corpus = [t["value"] for i in range(len(train)) for t in train.describe(i).conversations]
    tok = _tokenizer(corpus)
    mix = MixtureDataset(split_by(train, "language"), {"ko": 0.4, "en": 0.6}, num_samples=40, seed=0)
    assert Counter(mix.describe(i).language for i in range(len(mix))) == {"ko": 16, "en": 24}
    collator = Collator(tok, _transform, tokens_per_image=4, loss_on="answers")
    report = preflight_check(mix, collator)
    assert report.checked == 40
    loader = DataLoader(mix, batch_size=8, shuffle=False, collate_fn=collator)
    seen = 0
    for batch in loader:
        seen += len(batch["sample_ids"])
        assert batch["pixel_values"].shape[0] == int(batch["media_frames"].sum())
        assert int(batch["image_token_mask"].sum()) == 4 * int(batch["media_frames"].sum())
        assert ((batch["labels"] != IGNORE_INDEX).sum(1) > 0).all()
        for b, sid in enumerate(batch["sample_ids"]):
            info = next(mix.describe(i) for i in range(len(mix)) if mix.describe(i).id == sid)
            ids = batch["input_ids"][b][batch["labels"][b] != IGNORE_INDEX].tolist()
            assert tok.decode(ids) == info.conversations[-1]["value"] + "<|im_end|>\n"
    assert seen == 40
