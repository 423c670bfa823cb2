"""Vocabulary alignment by token string for tensors indexed by token id (embeddings, LM heads).

When the models' tokenizers differ (a Korean-extended tokenizer merged with the original), row r of the
output belongs to token t_r of the chosen tokenizer. Each model's row for t_r (if it has t_r) is merged
with the base's row for t_r; a model lacking t_r contributes no delta there; tokens the base lacks are
copied verbatim from the model defining the output vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tbi_merging.errors import MergeError


def load_vocab(directory: Path, label: str) -> dict[str, int]:
    """token string → id from ``tokenizer.json`` (BPE/WordPiece/WordLevel dict or Unigram list, plus
    added tokens) or ``vocab.json``."""
    tok = directory / "tokenizer.json"
    vocab: dict[str, int] = {}
    if tok.is_file():
        data = json.loads(tok.read_text())
        model_vocab = (data.get("model") or {}).get("vocab")
        if isinstance(model_vocab, dict):
            vocab.update({str(k): int(v) for k, v in model_vocab.items()})
        elif isinstance(model_vocab, list):
            vocab.update({str(entry[0]): i for i, entry in enumerate(model_vocab)})
        for added in data.get("added_tokens") or []:
            vocab[str(added["content"])] = int(added["id"])
    elif (directory / "vocab.json").is_file():
        vocab = {str(k): int(v) for k, v in json.loads((directory / "vocab.json").read_text()).items()}
    if not vocab:
        raise MergeError(
            f"{label}: no tokenizer.json or vocab.json in {directory}; vocabulary alignment needs "
            "each model's tokenizer files beside its weights"
        )
    return vocab


def row_map(
    target: dict[str, int], source: dict[str, int], target_rows: int, source_rows: int
) -> torch.Tensor:
    """For each target row, the source row of the same token string, or −1 (absent or padding row)."""
    out = torch.full((target_rows,), -1, dtype=torch.int64)
    for token, tid in target.items():
        sid = source.get(token)
        if sid is not None and tid < target_rows and sid < source_rows:
            out[tid] = sid
    return out


def gather_rows(tensor: torch.Tensor, rows: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """``tensor[rows[r]]`` where rows[r] >= 0, else ``fill[r]`` (float32 result)."""
    out = fill.float().clone()
    present = rows >= 0
    out[present] = tensor[rows[present]].float()
    return out
