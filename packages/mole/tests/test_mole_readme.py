"""The README's first python example runs as-is and does what its comments say."""

import os
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    code = re.search(r"```python\n(.*?)```", README.read_text(), flags=re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    model, restored, ids = namespace["model"], namespace["restored"], namespace["ids"]
    assert namespace["loss"].requires_grad
    model.eval()
    restored.eval()
    assert torch.equal(model(ids).logits, restored(ids).logits)
