"""BERTScore F1 with a tiny random BERT built offline (WordPiece vocab written here), checked against a
float64 numpy re-computation of the greedy-matching formula from the same hidden states."""

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
import transformers

from tbi_evalbench import EvalbenchError

WORDS = ["a", "cat", "dog", "sits", "on", "the", "mat", "runs", "고양이", "가", "앉", "았다"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-bert")
    (path / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n", encoding="utf-8"
    )
    tok = transformers.BertTokenizer(
        str(path / "vocab.txt"), do_lower_case=True, tokenize_chinese_chars=False
    )
    tok.save_pretrained(path)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=len(WORDS) + 5,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
    )
    transformers.BertModel(cfg).eval().save_pretrained(path)
    return path


def _oracle(path, hyp, refs):
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    model = transformers.AutoModel.from_pretrained(str(path)).eval()

    def emb(text):
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc, output_hidden_states=True).hidden_states[-1][0].double().numpy()
        h = h[1:-1]  # drop [CLS] and [SEP]
        return h / np.linalg.norm(h, axis=1, keepdims=True)

    best = 0.0
    x = emb(hyp)
    for r in refs:
        y = emb(r)
        sim = x @ y.T
        p, rec = sim.max(axis=1).mean(), sim.max(axis=0).mean()
        best = max(best, 2 * p * rec / (p + rec))
    return best


def test_bertscore_matches_float64_oracle(tiny_bert):
    from tbi_evalbench.bertscore import bertscore

    hyps = ["a cat sits on the mat", "the dog runs", "고양이 가 앉 았다"]
    refs = [["the cat sits on a mat", "a dog"], ["a cat runs"], ["고양이 가 앉 았다"]]
    r = bertscore(hyps, refs, model_path=tiny_bert)
    expected = [_oracle(tiny_bert, h, rs) for h, rs in zip(hyps, refs)]
    assert r.per_sample == pytest.approx(expected, abs=1e-5)
    assert r.per_sample[2] == pytest.approx(1.0, abs=1e-6)  # identical text: every token matches itself
    assert r.score == pytest.approx(sum(expected) / 3, abs=1e-5) and r.metric == "bertscore"


def test_bertscore_errors(tiny_bert, tmp_path):
    from tbi_evalbench.bertscore import bertscore

    with pytest.raises(EvalbenchError, match=r"no config\.json"):
        bertscore(["a"], [["a"]], model_path=tmp_path)
    with pytest.raises(EvalbenchError, match="non-empty list of references"):
        bertscore(["a"], [[]], model_path=tiny_bert)


def test_bertscore_from_the_cli(tiny_bert, tmp_path, capsys):
    import json

    from tbi_evalbench.cli import main

    (tmp_path / "p.jsonl").write_text(json.dumps({"id": "1", "prediction": "a cat"}) + "\n")
    (tmp_path / "r.jsonl").write_text(json.dumps({"id": "1", "answers": ["a cat"]}) + "\n")
    args = [
        "score",
        "bertscore",
        "--predictions",
        str(tmp_path / "p.jsonl"),
        "--references",
        str(tmp_path / "r.jsonl"),
        "--json",
    ]
    assert main([*args, "--model", str(tiny_bert)]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(1.0, abs=1e-6)
    assert main(args) == 2 and "needs --model" in capsys.readouterr().err
