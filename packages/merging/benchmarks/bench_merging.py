"""Merge speed and peak memory on three Qwen2-style bf16 checkpoints, against the plain read-3-write-1 time
and, when installed, mergekit on the same inputs.

Size: ``TBI_MERGE_BENCH_SIZE=full`` builds the issue's anchor (16 layers, hidden 1024, vocab 32000,
235M parameters, 0.47 GB per model in 3 shards); the default ``tiny`` keeps CI's ``--benchmark-disable``
run to seconds. Every job runs in a child process so its peak RSS (``ru_maxrss`` from ``wait4``) and wall
time include interpreter start-up, as a user would see them.

    TBI_MERGE_BENCH_SIZE=full .venv/bin/python -m pytest packages/merging/benchmarks -q -s
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

SIZES = {
    "tiny": {"hidden": 64, "layers": 2, "vocab": 512, "intermediate": 128, "heads": 4},
    "full": {"hidden": 1024, "layers": 16, "vocab": 32000, "intermediate": 2048, "heads": 16},
}
SHARDS = 3


def _qwen2_config(s: dict) -> dict:
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": s["hidden"],
        "intermediate_size": s["intermediate"], "num_hidden_layers": s["layers"], "num_attention_heads": s["heads"],
        "num_key_value_heads": s["heads"], "vocab_size": s["vocab"], "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "hidden_act": "silu", "bos_token_id": 0, "eos_token_id": 1,
    }  # fmt: skip


def _shapes(s: dict) -> dict[str, tuple[int, ...]]:
    h, i, v = s["hidden"], s["intermediate"], s["vocab"]
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for layer in range(s["layers"]):
        p = f"model.layers.{layer}."
        out.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h), p + "self_attn.q_proj.bias": (h,),
            p + "self_attn.k_proj.weight": (h, h), p + "self_attn.k_proj.bias": (h,),
            p + "self_attn.v_proj.weight": (h, h), p + "self_attn.v_proj.bias": (h,),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h), p + "mlp.down_proj.weight": (h, i),
        })  # fmt: skip
    out["model.norm.weight"] = (h,)
    out["lm_head.weight"] = (v, h)
    return out


def build_checkpoints(root: Path, size: str) -> dict[str, Path]:
    """base, en, ko: deterministic bf16 checkpoints in 3 shards (fine-tunes = base + small noise)."""
    spec = SIZES[size]
    shapes = _shapes(spec)
    total = sum(torch.Size(s).numel() * 2 for s in shapes.values())
    groups: list[list[str]] = [[]]
    acc = 0
    for name, shape in shapes.items():
        if acc >= total / SHARDS * len(groups) and len(groups) < SHARDS:
            groups.append([])
        groups[-1].append(name)
        acc += torch.Size(shape).numel() * 2
    paths = {}
    for seed, model in enumerate(("base", "en", "ko")):
        d = root / model
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps(_qwen2_config(spec)))
        gen = torch.Generator().manual_seed(1234)
        noise = torch.Generator().manual_seed(seed)
        weight_map = {}
        for k, names in enumerate(groups):
            shard = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
            tensors = {}
            for name in names:
                t = torch.randn(shapes[name], generator=gen) * 0.02  # the same base in every model
                if seed:
                    t += torch.randn(shapes[name], generator=noise) * 0.002
                tensors[name] = t.to(torch.bfloat16)
            save_file(tensors, str(d / shard), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(names, shard))
            del tensors
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (d / "model.safetensors.index.json").write_text(json.dumps(index))
        paths[model] = d
    return paths


_BASELINE = r"""
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
from safetensors import safe_open
from safetensors.torch import save_file
t1 = time.perf_counter()
base, en, ko, out = map(Path, sys.argv[1:5])
out.mkdir()
for shard in sorted(base.glob("*.safetensors")):
    tensors = {}
    for d in (base, en, ko):
        with safe_open(str(d / shard.name), framework="pt") as f:
            for k in f.keys():
                # get_tensor maps the file lazily; clone() reads the bytes, as a merge must
                tensors[k] = f.get_tensor(k).clone()
    save_file(tensors, str(out / shard.name))
    del tensors
print(json.dumps({"work_seconds": time.perf_counter() - t1}))
"""


# Linux carries a process's peak RSS across fork + exec, so a job forked straight from this (large) pytest
# process would report at least this process's RSS. A small launcher process forks the job instead and
# reports the job's own rusage.
_LAUNCHER = """
import json, os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"status": os.waitstatus_to_exitcode(status), "cpu": usage.ru_utime + usage.ru_stime,
               "maxrss_kb": usage.ru_maxrss}, f)
"""


def run_child(argv: list[str], cwd: Path) -> dict:
    """Run a job in a child process: wall and CPU seconds, peak RSS (MB) and its JSON stdout (if any)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    with (
        tempfile.TemporaryDirectory() as tmp,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        usage_file = Path(tmp) / "usage.json"
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(usage_file), *argv],
            stdout=out,
            stderr=err,
            cwd=cwd,
            env=env,
        )
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
        usage = json.loads(usage_file.read_text()) if usage_file.is_file() else {"status": -1}
    assert usage["status"] == 0, f"{argv[:3]} failed:\n{stderr[-3000:]}"
    # cpu is less sensitive than wall time to other jobs on a shared machine; wall includes the launcher's
    # start-up (about 20 ms)
    result = {"wall_seconds": wall, "cpu_seconds": usage["cpu"], "peak_rss_mb": usage["maxrss_kb"] / 1024}
    if stdout.strip().startswith("{"):
        result.update(json.loads(stdout.strip().splitlines()[-1]))
    return result


def _ours(paths, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tbi_merging",
        "--base",
        str(paths["base"]),
        "--model",
        f"en={paths['en']}:0.6",
        "--model",
        f"ko={paths['ko']}:0.4",
        "--out",
        str(out),
        "--overwrite",
        "--no-progress",
        *extra,
    ]


def _mergekit_wanted() -> bool:
    """mergekit (optional extra ``bench``) runs at full size, or at tiny size with TBI_MERGE_BENCH_MERGEKIT=1
    (its start-up alone takes ~10 s, too long for CI's quick pass)."""
    installed = shutil.which("mergekit-yaml", path=str(Path(sys.executable).parent)) is not None
    size = os.environ.get("TBI_MERGE_BENCH_SIZE", "tiny")
    return installed and (size == "full" or os.environ.get("TBI_MERGE_BENCH_MERGEKIT") == "1")


def _mergekit(paths, out: Path, method: str, density: float) -> list[str]:
    cfg = {
        "merge_method": method, "base_model": str(paths["base"]), "dtype": "bfloat16",
        "models": [{"model": str(paths[m]), "parameters": {"weight": w, "density": density}}
                   for m, w in (("en", 0.6), ("ko", 0.4))],
    }  # fmt: skip
    cfg_path = out.parent / f"{out.name}.yml"
    cfg_path.write_text(json.dumps(cfg))
    exe = str(Path(sys.executable).parent / "mergekit-yaml")
    return [exe, str(cfg_path), str(out)]


@pytest.fixture(scope="module")
def bench_env(tmp_path_factory):
    size = os.environ.get("TBI_MERGE_BENCH_SIZE", "tiny")
    if size not in SIZES:
        raise ValueError(f"TBI_MERGE_BENCH_SIZE={size!r}; use one of {sorted(SIZES)}")
    root = tmp_path_factory.mktemp("merge_bench")
    t0 = time.perf_counter()
    reuse = os.environ.get("TBI_MERGE_BENCH_INPUTS")  # a folder from an earlier run with the same size
    if reuse and all((Path(reuse) / m / "config.json").is_file() for m in ("base", "en", "ko")):
        paths = {m: Path(reuse) / m for m in ("base", "en", "ko")}
    else:
        paths = build_checkpoints(root, size)
    results: dict = {
        "size": {"name": size, "build_seconds": time.perf_counter() - t0},
        "paths_base": str(paths["base"]),
    }
    env = {"root": root, "paths": paths, "results": results}
    yield env
    print("\n" + json.dumps(_summary(results), indent=1))
    _save(results)


def _save(results: dict) -> None:
    """Write the results so far to $TBI_MERGE_BENCH_JSON (after every job, so a long run keeps them)."""
    target = os.environ.get("TBI_MERGE_BENCH_JSON")
    if target:
        Path(target).write_text(json.dumps({"results": results, "summary": _summary(results)}, indent=1))


def _summary(r: dict) -> dict:
    out: dict[str, float] = {}
    base = r.get("baseline", {})
    for method in ("ties", "dare_ties"):
        ours = r.get(f"ours_{method}")
        if not ours:
            continue
        if base:  # the merge's own time against the copy's, and the whole processes (same imports)
            out[f"{method}_merge_over_read_write"] = ours["seconds"] / base["work_seconds"]
            out[f"{method}_merge_over_read_write_process_wall"] = ours["wall_seconds"] / base["wall_seconds"]
        mk = r.get(f"mergekit_{method}")
        if mk:
            out[f"{method}_mergekit_over_ours_wall"] = mk["wall_seconds"] / ours["wall_seconds"]
    shard_mb = max(f.stat().st_size for f in Path(r["paths_base"]).glob("*.safetensors")) / 2**20
    for key in ("ours_ties", "ours_dare_ties"):
        if key in r:
            out[f"{key}_rss_over_budget"] = r[key]["peak_rss_mb"] / (2 * shard_mb + 300)
    out["largest_shard_mb"] = shard_mb
    out["rss_budget_mb"] = 2 * shard_mb + 300
    return out


def _check_output(out: Path, base: Path) -> None:
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(
        p.name for p in base.glob("*.safetensors")
    )
    assert json.loads((out / "merge_report.json").read_text())["summary"]["merged"] > 0


@pytest.mark.parametrize(
    ("method", "extra"), [("ties", ["--density", "0.5"]), ("dare_ties", ["--dare", "0.9"])]
)
def test_bench_ours(benchmark, bench_env, method, extra):
    paths, root = bench_env["paths"], bench_env["root"]
    out = root / f"ours_{method}"
    result = benchmark.pedantic(
        run_child, args=(_ours(paths, out, "--method", method, *extra), root), rounds=1, iterations=1
    )
    _check_output(out, paths["base"])
    result["seconds"] = json.loads((out / "merge_report.json").read_text())["seconds"]
    bench_env["results"][f"ours_{method}"] = result
    _save(bench_env["results"])


def test_bench_startup(benchmark, bench_env):
    argv = [sys.executable, "-c", "import tbi_merging.cli"]
    bench_env["results"]["ours_startup"] = benchmark.pedantic(
        run_child, args=(argv, bench_env["root"]), rounds=1
    )


def test_bench_read_write_baseline(benchmark, bench_env):
    paths, root = bench_env["paths"], bench_env["root"]
    out = root / "baseline"
    shutil.rmtree(out, ignore_errors=True)
    argv = [sys.executable, "-c", _BASELINE, str(paths["base"]), str(paths["en"]), str(paths["ko"]), str(out)]
    result = benchmark.pedantic(run_child, args=(argv, root), rounds=1, iterations=1)
    assert len(list(out.glob("*.safetensors"))) == SHARDS
    bench_env["results"]["baseline"] = result
    _save(bench_env["results"])


@pytest.mark.skipif(
    not _mergekit_wanted(), reason="mergekit comparison: optional, full size or TBI_MERGE_BENCH_MERGEKIT=1"
)
@pytest.mark.parametrize(("method", "density"), [("dare_ties", 0.1), ("ties", 0.5)])
def test_bench_mergekit(benchmark, bench_env, method, density):
    paths, root = bench_env["paths"], bench_env["root"]
    out = root / f"mergekit_{method}"
    shutil.rmtree(out, ignore_errors=True)
    result = benchmark.pedantic(run_child, args=(_mergekit(paths, out, method, density), root), rounds=1)
    bench_env["results"][f"mergekit_{method}"] = result
    _save(bench_env["results"])
    if method == "ties":
        # Same semantics in our mergekit mode: compare the outputs (mergekit computes in bf16, we in float32).
        ours = root / "ours_ties_mergekit_mode"
        run_child(_ours(paths, ours, "--method", "ties", "--density", "0.5", "--compat", "mergekit"), root)
        diffs, equal, numel = 0.0, 0, 0
        for shard in sorted(ours.glob("*.safetensors")):
            a = load_file(str(shard))
            b = {}
            for f in out.glob("*.safetensors"):
                b.update({k: v for k, v in load_file(str(f)).items() if k in a})
            for k, v in a.items():
                d = (v.float() - b[k].float()).abs()
                diffs = max(diffs, float(d.max()))
                equal += int((d == 0).sum())
                numel += v.numel()
        bench_env["results"]["mergekit_mode_vs_mergekit"] = {
            "max_abs_diff": diffs,
            "equal_fraction": equal / numel,
        }
        _save(bench_env["results"])
        assert equal / numel > 0.9
