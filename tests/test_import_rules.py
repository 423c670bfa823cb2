"""The package boundaries of DESIGN.md, enforced by reading every import of every source file.

- the five component packages never import one another (only tbi-train composes them);
- tbi-evalbench never imports torch (it must install light), checked statically and at import time.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ["tbi_vision_rope", "tbi_projectors", "tbi_merging", "tbi_mole", "tbi_evalbench"]
HEAVY_FOR_EVALBENCH = {"torch", "transformers", "triton"}


def _source_dir(import_name: str) -> Path:
    matches = list(ROOT.glob(f"packages/*/src/{import_name}"))
    assert len(matches) == 1, f"expected one source dir for {import_name}, found {matches}"
    return matches[0]


def _imported_top_levels(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def violations(import_name: str, forbidden: set[str]) -> list[str]:
    out = []
    for path in sorted(_source_dir(import_name).rglob("*.py")):
        for lineno, name in _imported_top_levels(path):
            if name in forbidden:
                out.append(f"{path.relative_to(ROOT)}:{lineno} imports {name}")
    return out


@pytest.mark.parametrize("package", COMPONENTS)
def test_components_do_not_import_each_other(package):
    others = set(COMPONENTS) - {package} | {"tbi_train"}
    bad = violations(package, others)
    assert not bad, (
        "component packages must not import one another (only tbi-train composes them):\n" + "\n".join(bad)
    )


def test_evalbench_source_does_not_import_torch():
    bad = violations("tbi_evalbench", HEAVY_FOR_EVALBENCH)
    # BERTScore needs a model; it is the one optional extra allowed to import torch, lazily, in its own module.
    bad = [line for line in bad if "bertscore" not in line.split(":")[0]]
    assert not bad, (
        "tbi-evalbench must not import torch (move it behind the [bertscore] extra):\n" + "\n".join(bad)
    )


def test_evalbench_import_pulls_no_torch():
    code = (
        "import sys, tbi_evalbench, pkgutil, importlib\n"
        "for m in pkgutil.walk_packages(tbi_evalbench.__path__, 'tbi_evalbench.'):\n"
        "    if 'bertscore' not in m.name: importlib.import_module(m.name)\n"
        "heavy = sorted({'torch', 'transformers', 'triton'} & set(sys.modules))\n"
        "assert not heavy, f'importing tbi_evalbench loaded {heavy}'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_rule_checker_catches_a_violation(tmp_path, monkeypatch):
    # The checker itself must be able to fail: plant a forbidden import in a copy of a package layout.
    src = tmp_path / "packages" / "projectors" / "src" / "tbi_projectors"
    src.mkdir(parents=True)
    (src / "bad.py").write_text("import os\nfrom tbi_merging.core import merge_tensors\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert violations("tbi_projectors", {"tbi_merging"}) == [
        "packages/projectors/src/tbi_projectors/bad.py:2 imports tbi_merging"
    ]
