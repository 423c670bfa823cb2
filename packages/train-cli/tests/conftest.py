"""Shared test data of tbi-train's tests."""

import json
from pathlib import Path

import pytest
from PIL import Image


def _write_colour_data(root: Path, id_prefix: str, n: int = 8, n_val: int = 2) -> Path:
    """n one-colour 24x24 images with a bilingual colour question each, as LLaVA JSON under `root`.

    Writes root/train.json (all n records) and root/val.json (the first n_val); returns root.
    """
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        Image.new("RGB", (24, 24), (30 * i, 90, 200 - 20 * i)).save(root / "images" / f"{i}.png")
        answer = "빨간색" if i % 2 else "blue"
        records.append(
            {
                "id": f"{id_prefix}{i}",
                "image": f"images/{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nColour?"},
                    {"from": "gpt", "value": answer},
                ],
                "answers": [answer],
            }
        )
    (root / "train.json").write_text(json.dumps(records, ensure_ascii=False))
    (root / "val.json").write_text(json.dumps(records[:n_val], ensure_ascii=False))
    return root


@pytest.fixture(scope="session")
def write_colour_data():
    """`write_colour_data(root, id_prefix)`: the tiny colour dataset (train.json + val.json) in `root`."""
    return _write_colour_data


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a test module: the tests compare runs (and subprocesses) bitwise, and two
    workers share the 2 cores. Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
