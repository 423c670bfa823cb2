"""The README's first Python example runs as-is, and its YAML example parses into a valid config."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import yaml

from tbi_merging import MergeConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def test_first_python_example_runs(capsys):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    merged, stats = namespace["merged"], namespace["stats"]
    assert merged.shape == (8,) and merged.dtype == torch.float32
    assert set(stats.kept_fraction) == {"en", "ko"}
    assert "tensor(" in capsys.readouterr().out


def test_yaml_example_parses():
    text = re.search(r"```yaml\n(.*?)```", README.read_text(), re.S).group(1)
    cfg = MergeConfig.from_dict(yaml.safe_load(text))
    assert cfg.drop_rate == 0.9 and [m.weight for m in cfg.models] == [0.6, 0.4]
    assert cfg.rule_for("vision_tower.blocks.0.attn.qkv.weight").method == "base"
    assert cfg.rule_for("mm_projector.0.weight").drop_rate == 0.5
