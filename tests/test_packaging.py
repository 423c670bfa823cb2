"""Every package builds a wheel and an sdist; one component installs alone and runs its README example."""

import re
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())


def _build(package: str, out: Path, *kinds: str) -> list[Path]:
    # --no-isolation: build with the hatchling already installed (no network, seconds not minutes).
    cmd = [sys.executable, "-m", "build", "--no-isolation", *(f"--{k}" for k in kinds), "--outdir", str(out)]
    result = subprocess.run([*cmd, str(ROOT / "packages" / package)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return sorted(out.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("package", PACKAGES)
def test_package_builds_wheel_and_sdist(package, tmp_path):
    built = _build(package, tmp_path, "wheel", "sdist")
    wheel, sdist = [p for p in built if p.suffix == ".whl"], [p for p in built if p.name.endswith(".tar.gz")]
    assert len(wheel) == len(sdist) == 1, built
    import_name = wheel[0].name.split("-")[0]
    with zipfile.ZipFile(wheel[0]) as zf:
        names = zf.namelist()
    assert f"{import_name}/__init__.py" in names, names
    assert not any("/tests/" in n or n.startswith("tests/") for n in names), (
        "tests must not ship in the wheel"
    )


def _readme_example(package: str) -> str:
    text = (ROOT / "packages" / package / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, f"packages/{package}/README.md has no ```python example"
    return blocks[0]


@pytest.mark.slow
def test_projectors_wheel_installs_alone_and_runs_readme_example(tmp_path):
    wheel = _build("projectors", tmp_path / "dist", "wheel")[0]
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # Reuse the installed torch/safetensors without their editable tbi packages: a plain path entry in a
    # .pth adds site-packages to sys.path but does not run the editable-install hooks that live there.
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "parent_site.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    script = tmp_path / "example.py"
    script.write_text(
        "import tbi_projectors, sys\n"
        f"assert tbi_projectors.__file__.startswith({str(env_dir)!r}), tbi_projectors.__file__\n"
        "assert not any(m.startswith(('tbi_merging', 'tbi_train')) for m in sys.modules)\n"
        + _readme_example("projectors")
    )
    run = subprocess.run([python, str(script)], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
