"""Answer a dataset file with a saved VLM and write predictions JSONL beside the scores."""

from __future__ import annotations

import json
from pathlib import Path

from tbi_train.eval.generate import generate
from tbi_train.eval.score import score_predictions

__all__ = ["predict_file"]


def predict_file(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path,
    limit: int | None = None,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    image_root: str | Path | None = None,
) -> dict[str, float]:
    """Generate answers for the samples of `data` with the VLM in `model_dir`; write `out` (JSONL); return scores.

    Each output line: {"id", "prediction", "answers", "language", "task"}. The file is written to a
    temporary name and renamed.
    """
    from tbi_train.data import load_conversations
    from tbi_train.model import load_vlm

    vlm = load_vlm(model_dir)
    dataset = load_conversations(data, image_root=image_root)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    samples = [dataset[i] for i in range(n)]
    predictions = generate(vlm, samples, max_new_tokens=max_new_tokens, batch_size=batch_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for sample, prediction in zip(samples, predictions):
            row = {"id": sample.id, "prediction": prediction, "answers": sample.answers,
                   "language": sample.language, "task": sample.task}  # fmt: skip
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return score_predictions(predictions, [s.answers for s in samples], [s.id for s in samples])
