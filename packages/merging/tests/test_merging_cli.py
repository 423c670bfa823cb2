"""The CLI (`python -m tbi_merging`, reused by `tbi merge`), its YAML form, and a merged tiny Qwen2 in transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tbi_merging import merge_tensors
from tbi_merging.cli import build_parser, main


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.mark.slow
def test_merged_qwen2_loads_and_generates(qwen2, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    argv = [
        "--base",
        str(qwen2["base"]),
        "--model",
        f"en={qwen2['en']}:0.6",
        "--model",
        f"ko={qwen2['ko']}:0.4",
        "--method",
        "dare_ties",
        "--dare",
        "0.9",
        "--ties-sign",
        "mass",
        "--seed",
        "42",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(
        p.name for p in qwen2["base"].glob("*.safetensors")
    )
    assert len(list(out.glob("*.safetensors"))) > 1
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / f).read_bytes() == (qwen2["base"] / f).read_bytes(), f
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    base_t, en_t, ko_t = (_tensors(qwen2[k]) for k in ("base", "en", "ko"))
    name = "model.layers.1.mlp.down_proj.weight"
    expected = merge_tensors(
        base_t[name],
        {"en": en_t[name], "ko": ko_t[name]},
        "dare_ties",
        {"en": 0.6, "ko": 0.4},
        drop_rate=0.9,
        sign="mass",
        normalize=True,
        seed=42,
        tensor_name=name,
    )
    assert torch.equal(model.state_dict()[name], expected)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_tokens_to_ids("w5") == 5
    ids = torch.tensor([[5, 6, 7]])
    gen = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=1)
    assert gen.shape == (1, ids.shape[1] + 4)
    report = json.loads((out / "merge_report.json").read_text())
    kept = report["summary"]["kept_fraction"]
    assert abs(kept["en"] - 0.1) < 0.02 and abs(kept["ko"] - 0.1) < 0.02  # DARE p = 0.9
    assert 0 < report["summary"]["sign_conflict_fraction"] < 0.1  # only where both survive (~1%)


def test_yaml_equals_flags_and_flags_override(toy, tmp_path):
    flags = [
        "--base",
        str(toy["base"]),
        "--model",
        f"en={toy['en']}:0.6",
        "--model",
        f"ko={toy['ko']}:0.4",
        "--method",
        "ties",
        "--density",
        "0.5",
        "--ties-sign",
        "count",
        "--compat",
        "mergekit",
        "--component",
        "layers.1.*:density=0.9,weight.ko=0.1",
        "--out",
        str(tmp_path / "a"),
    ]
    assert main([*flags, "--no-progress"]) == 0
    cfg = {
        "base": str(toy["base"]),
        "out": str(tmp_path / "b"),
        "method": "ties",
        "density": 0.5,
        "sign": "count",
        "compat": "mergekit",
        "models": [{"name": "en", "path": str(toy["en"]), "weight": 0.6}, f"ko={toy['ko']}:0.4"],
        "components": [{"pattern": "layers.1.*", "density": 0.9, "weights": {"ko": 0.1}}],
    }
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(tmp_path / "merge.yaml")]) == 0
    a, b = _tensors(tmp_path / "a"), _tensors(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (
        main(["--config", str(tmp_path / "merge.yaml"), "--out", str(tmp_path / "c"), "--density", "0.2"])
        == 0
    )
    report = json.loads((tmp_path / "c" / "merge_report.json").read_text())
    assert (
        report["tensors"]["layers.0.w"]["density"] == 0.2
        and report["tensors"]["layers.1.w"]["density"] == 0.9
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("en=/x:abc", "weight 'abc' is not a number"),
        ("en", "does not parse"),
        ("en=/x:nan", "must be finite"),
    ],
)
def test_bad_weight_spec(toy, tmp_path, capsys, spec, message):
    argv = ["--base", str(toy["base"]), "--model", spec, "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_errors_exit_nonzero(toy, tmp_path, capsys):
    (tmp_path / "o").mkdir()
    argv = ["--base", str(toy["base"]), "--model", f"en={toy['en']}", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    (tmp_path / "bad.yaml").write_text("base: x\nmodels: [en=y]\nout: z\nlambda_en: 0.6\n")
    assert main(["--config", str(tmp_path / "bad.yaml")]) == 2
    assert "unknown key(s) ['lambda_en']" in capsys.readouterr().err


@pytest.mark.slow
def test_python_dash_m(toy, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    argv = [
        sys.executable,
        "-m",
        "tbi_merging",
        "--base",
        str(toy["base"]),
        "--model",
        f"en={toy['en']}:0.5",
        "--method",
        "linear",
        "--out",
        str(tmp_path / "o"),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o" / "merge_report.json").is_file()
    assert "merged →" in done.stderr


def test_usage_errors_return_codes(capsys):
    assert main(["--method", "slerp"]) == 2
    assert "invalid choice: 'slerp'" in capsys.readouterr().err
    assert main(["--help"]) == 0


def test_parser_reads_naturally():
    args = build_parser().parse_args(["--dare", "0.9", "--no-rescale", "--normalize"])
    assert args.dare == 0.9 and args.rescale is False and args.normalize is True


def test_merging_full_checkpoints_never_imports_torch(toy, tmp_path):
    """`python -m tbi_merging` on full checkpoints reads, merges and writes with numpy alone: torch's import
    (1.4-1.7 s here) would be most of a small merge's time. Same output as the in-process merge."""
    out = tmp_path / "merged"
    argv = ["--base", str(toy["base"]), "--model", f"en={toy['en']}:0.6", "--model", f"ko={toy['ko']}:0.4"]
    argv += ["--method", "ties", "--density", "0.5", "--out", str(out), "--no-progress"]
    script = (
        "import sys; from tbi_merging.cli import main; code = main(sys.argv[1:]); "
        "print('torch imported:', 'torch' in sys.modules); sys.exit(code)"
    )
    run = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "torch imported: False" in run.stdout
    assert main([*argv[:-3], "--out", str(tmp_path / "again"), "--no-progress"]) == 0
    ours, again = _tensors(out), _tensors(tmp_path / "again")
    assert ours.keys() == again.keys() and all(torch.equal(ours[k], again[k]) for k in ours)
