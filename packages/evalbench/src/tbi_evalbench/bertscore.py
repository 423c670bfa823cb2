"""BERTScore F1 from a local model directory (optional extra ``[bertscore]``: torch + transformers).

The only module of tbi-evalbench that touches torch; it imports it when called, never at package import.

For hypothesis tokens x_1..x_k and reference tokens y_1..y_l (special tokens removed), with e(.) the hidden
states of layer ``layer`` L2-normalised:

    P = (1/k) sum_i max_j e(x_i).e(y_j),   R = (1/l) sum_j max_i e(x_i).e(y_j),   F1 = 2 P R / (P + R)

no idf weighting, no baseline rescaling (bert-score's defaults); the best F1 over the references is kept; an
empty hypothesis or reference scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tbi_evalbench._errors import EvalbenchError
from tbi_evalbench.result import ScoreResult, check_compat, check_lengths, default_ids, mean
from tbi_evalbench.text import nfc


class _Embedder:
    def __init__(self, model_path: Path, layer: int | None, device: str):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(model_path), local_files_only=True).to(device).eval()
        self.layer = layer
        self.device = device

    def __call__(self, text: str):
        torch = self.torch
        enc = self.tokenizer(text, return_tensors="pt", return_special_tokens_mask=True, truncation=True)
        special = enc.pop("special_tokens_mask")[0].bool()  # [T]
        enc = {k: v.to(self.device) for k, v in enc.items()}
        with torch.no_grad():
            out = self.model(**enc, output_hidden_states=True)
        layer = len(out.hidden_states) - 1 if self.layer is None else self.layer
        hidden = out.hidden_states[layer][0].float()  # [T, D]
        hidden = hidden[~special.to(hidden.device)]  # [T', D]
        return torch.nn.functional.normalize(hidden, dim=-1)


def _f1(hyp, ref) -> float:
    if hyp.shape[0] == 0 or ref.shape[0] == 0:
        return 0.0
    sim = hyp @ ref.T  # [k, l]
    p = sim.max(dim=1).values.mean().item()
    r = sim.max(dim=0).values.mean().item()
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def bertscore(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    model_path: str | Path,
    compat: str = "official",
    ids: Sequence[str] | None = None,
    layer: int | None = None,
    device: str = "cpu",
) -> ScoreResult:
    """BERTScore F1 per caption (best over references) and their mean.

    Args:
        model_path: a local Hugging Face model directory (config, weights, tokenizer); nothing is downloaded.
        layer: hidden-state index to use (0 = embeddings); default the last layer.
    """
    check_compat(compat)
    check_lengths(predictions, references)
    path = Path(model_path)
    if not (path / "config.json").exists():
        raise EvalbenchError(
            f"BERTScore model directory {path} has no config.json; pass a local HF model directory"
        )
    try:
        embed = _Embedder(path, layer, device)
    except ImportError as exc:
        raise EvalbenchError(
            "BERTScore needs torch and transformers: pip install 'tbi-evalbench[bertscore]'"
        ) from exc
    id_list = default_ids(len(predictions), ids)
    scores = []
    for i, hyp, refs in zip(id_list, predictions, references):
        if isinstance(refs, str) or not refs:
            raise EvalbenchError(f"sample {i}: BERTScore needs a non-empty list of references")
        h = embed(nfc(hyp))
        scores.append(max(_f1(h, embed(nfc(r))) for r in refs))
    return ScoreResult(
        "bertscore", "BERTScore F1 (greedy cosine matching, no idf, no rescale)", compat, mean(scores), scores,
        id_list, extra={"model_path": str(path), "layer": layer},
    )  # fmt: skip
