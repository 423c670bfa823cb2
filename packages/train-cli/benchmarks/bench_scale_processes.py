"""Data-parallel scaling on the CPU: the tiny preset with 1 and 2 processes (DDP over gloo, DeepSpeed ZeRO-2
and ZeRO-3, FSDP2).

Weak scaling: every process takes a micro-batch of `BATCH` samples, so 2 processes train twice the samples per
step; the ratio is total samples/s (median over the steps after the first) of 2 processes over 1.
TBI_BENCH_SCALE_STEPS (default 4) sets the steps of the measured phase (vision tower + projector); 20 or more
gives steadier figures.

    OMP_NUM_THREADS=1 pytest packages/train-cli/benchmarks/bench_scale_processes.py -s
"""

import json
import os
import statistics

import pytest
from PIL import Image

from tbi_train.config import resolve_config
from tbi_train.scale.engines import EngineConfig
from tbi_train.scale.launch import LaunchConfig, launch_training

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BATCH = 4


def _data(root):
    (root / "images").mkdir(parents=True)
    records = []
    for i in range(32):
        Image.new("RGB", (32, 32), (7 * i, 255 - 7 * i, 90)).save(root / "images" / f"{i}.png")
        answer = "초록색" if i % 2 else "green"
        records.append(
            {
                "id": f"b{i}",
                "image": f"images/{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nColour?"},
                    {"from": "gpt", "value": answer},
                ],
                "answers": [answer],
            }
        )
    (root / "train.json").write_text(json.dumps(records, ensure_ascii=False))
    return root / "train.json"


def _samples_per_s(run):
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("phase") == 1 and "throughput" in r][1:]  # the first step warms up
    return statistics.median(r["throughput"]["samples_per_s"] for r in steps)


@pytest.mark.slow  # two process launches of ~30 s each on the shared CPU
@pytest.mark.parametrize(("kind", "stage"), [("ddp", 2), ("deepspeed", 2), ("deepspeed", 3), ("fsdp2", 2)])
def test_bench_two_process_scaling(benchmark, tmp_path, kind, stage):
    steps = int(os.environ.get("TBI_BENCH_SCALE_STEPS", "4"))
    data = _data(tmp_path / "data")
    overrides = [f"data.train={data}", "eval.at_start=false", "eval.limit=0", "checkpoint.every_steps=0",
                 "phases.0.steps=1", f"phases.1.steps={steps}", "phases.2.steps=1"]  # fmt: skip
    cfg = resolve_config("tiny", overrides=overrides + [f"phases.{p}.batch_size={BATCH}" for p in range(3)])
    launch_training(cfg, tmp_path / "one", LaunchConfig("none"), EngineConfig("ddp"))
    benchmark.pedantic(
        launch_training,
        args=(cfg, tmp_path / "two", LaunchConfig("torchrun", nproc=2), EngineConfig(kind, zero_stage=stage)),
        rounds=1,
        iterations=1,
    )
    one, two = _samples_per_s(tmp_path / "one"), _samples_per_s(tmp_path / "two")
    ratio = two / one
    name = f"{kind} ZeRO-{stage}" if kind == "deepspeed" else kind
    print(f"\n{name}: 1 process {one:.1f} samples/s, 2 processes {two:.1f} samples/s, scaling {ratio:.2f}x")
    benchmark.extra_info.update({"samples_per_s_1": one, "samples_per_s_2": two, "scaling": ratio})
    assert one > 0 and two > 0
