"""The README's first python block runs as-is (the root packaging test also runs it in a fresh venv)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "README.md has no python example"
    assert len(blocks[0].strip().splitlines()) <= 12, "keep the first example short"
    exec(compile(blocks[0], str(README), "exec"), {})
    assert "c-abstractor" in capsys.readouterr().out


def test_readme_table_lists_every_projector():
    from tbi_projectors import list_projectors

    text = README.read_text(encoding="utf-8")
    for name in list_projectors():
        assert f"| `{name}`" in text, name
