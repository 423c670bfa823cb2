"""The README's first python example runs as-is and prints what its comments claim."""

import re
from pathlib import Path


def test_readme_example_runs(capsys):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    code = re.findall(r"```python\n(.*?)```", text, flags=re.S)[0]
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[0.0, 1.0] [1.0, 0.0]"
    assert out[1].startswith("VQA official vqaEval.py") and out[1].endswith("official 0.1.0")
    assert float(out[2]) == 1 - 1 / 7
    assert out[3] == "[1.0, 0.0]"
    assert out[4] == "| experiment | DocVQA |"


def _block(containing: str) -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    (code,) = [c for c in re.findall(r"```python\n(.*?)```", text, flags=re.S) if containing in c]
    return code


def test_readme_video_example_runs(capsys):
    exec(compile(_block('load_benchmark("mvbench"'), "README.md", "exec"), {})
    assert capsys.readouterr().out.splitlines() == ["['C'] True", "1.0"]


def test_readme_efficiency_example_runs(capsys):
    scope = {}
    exec(compile(_block("plot_token_frontier("), "README.md", "exec"), scope)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "['F3 coarse_fine', 'B1 16-token']"
    assert out[1].startswith("| run | tokens/frame | score | pareto | Δ score |")
    assert scope["png"].read_bytes()[:4] == b"\x89PNG"
