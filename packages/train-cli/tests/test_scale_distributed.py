"""Data-parallel training is the same training: 2 processes (DDP over gloo, DeepSpeed ZeRO-2 and ZeRO-3,
FSDP2) x batch b equal 1 process x batch 2b and 1 process x batch b x 2 accumulation steps; a killed rank stops
the job with its name; checkpoints cross-resume between 2 processes and 1 and between engines."""

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tbi_train.config import resolve_config
from tbi_train.scale.engines import EngineConfig
from tbi_train.scale.launch import LaunchConfig, launch_training
from tbi_train.train import train

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

COLOURS = [
    ("red", "빨간색", (220, 30, 30)),
    ("blue", "파란색", (30, 70, 220)),
    ("green", "초록색", (30, 150, 60)),
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    (root / "images").mkdir()
    records = []
    for i in range(12):
        en, ko, rgb = COLOURS[i % 3]
        answer = ko if i % 2 == 0 else en
        Image.new("RGB", (24, 24), rgb).save(root / "images" / f"{i}.png")
        records.append(
            {
                "id": f"c{i}",
                "image": f"images/{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat colour is this?"},
                    {"from": "gpt", "value": answer},
                ],
                "task": "color",
                "answers": [answer],
            }
        )
    (root / "train.json").write_text(json.dumps(records, ensure_ascii=False))
    return root / "train.json"


def _cfg(data, batch, accum, steps=(2, 2, 2), every=0, evals=False):
    # LoRA dropout off: equal training needs the same forward on every layout (dropout masks differ per rank).
    overrides = [f"data.train={data}", "eval.at_start=false", "eval.limit=0", "model.peft.lm.dropout=0",
                 f"checkpoint.every_steps={every}", "checkpoint.keep_last=1"]  # fmt: skip
    if evals:  # greedy generation on 2 samples after every step (it must not change the training)
        overrides += [f"data.val={data}", "eval.limit=2", "eval.every_steps=1", "eval.max_new_tokens=3"]
    for p, n in enumerate(steps):
        overrides += [f"phases.{p}.steps={n}", f"phases.{p}.warmup_steps=1",
                      f"phases.{p}.batch_size={batch}", f"phases.{p}.grad_accum={accum}"]  # fmt: skip
    return resolve_config("tiny", overrides=overrides)


def _losses(run):
    lines = (run / "log.jsonl").read_text().splitlines()
    return [(r["phase"], r["step"], r["loss"]) for r in map(json.loads, lines) if "loss" in r]


def _assert_same_training(a, b):
    la, lb = _losses(a), _losses(b)
    assert [x[:2] for x in la] == [x[:2] for x in lb]
    torch.testing.assert_close([x[2] for x in la], [x[2] for x in lb], rtol=1e-5, atol=1e-5)
    wa, wb = (
        load_file(str(a / "final" / "model.safetensors")),
        load_file(str(b / "final" / "model.safetensors")),
    )
    assert wa.keys() == wb.keys()
    for key in wa:
        # fp32 sums in another order, amplified by three phases of AdamW at rates up to 3e-3
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-4, msg=key)


@pytest.fixture(scope="module")
def references(colour_data, tmp_path_factory):
    """1 process x batch 4, and 1 process x batch 2 x 2 accumulation steps."""
    root = tmp_path_factory.mktemp("references")
    train(_cfg(colour_data, 4, 1), root / "batch4")
    train(_cfg(colour_data, 2, 2), root / "batch2x2")
    return root / "batch4", root / "batch2x2"


@pytest.mark.slow
def test_accumulation_equals_one_big_batch(references):
    big, accumulated = references
    _assert_same_training(big, accumulated)
    weights = load_file(str(big / "final" / "model.safetensors"))
    initial = load_file(
        str(big / "checkpoints" / "00-projector_pretrain-step0000002-end" / "model" / "model.safetensors")
    )
    assert any(not torch.equal(weights[k], initial[k]) for k in weights)  # it trained


@pytest.mark.slow
def test_checkpoint_state_holds_no_weights(references):
    # The weights live once, in model/; state/ has only what resuming needs besides them.
    checkpoint = references[0] / "checkpoints" / "01-vision_projector-step0000002-end"
    state = checkpoint / "state"
    assert {p.name for p in state.iterdir()} == {
        "optimizer_full.safetensors", "engine.json", "scheduler.json", "rng_0.safetensors"
    }  # fmt: skip
    moments = load_file(str(state / "optimizer_full.safetensors"))
    weights = load_file(str(checkpoint / "model" / "model.safetensors"))
    names = {k.rsplit("/", 1)[0] for k in moments}
    assert names and names < set(weights)  # only trained parameters, by their weight names
    for name in names:
        assert moments[f"{name}/exp_avg"].shape == weights[name].shape
        assert moments[f"{name}/step"].item() == 2
    assert json.loads((state / "engine.json").read_text()) == {"kind": "ddp", "world_size": 1, "adam_step": 2}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "stage", "offload"),
    [
        ("ddp", 2, False),
        ("deepspeed", 2, False),
        ("deepspeed", 2, True),
        ("deepspeed", 3, False),
        ("fsdp2", 2, False),
    ],
)
def test_two_processes_match_one_process(kind, stage, offload, colour_data, references, tmp_path):
    run = tmp_path / kind
    engine = EngineConfig(kind, zero_stage=stage, offload_optimizer=offload)
    # The sharded engines also gather their weights for evaluations mid-phase and at phase ends.
    sharded = kind == "fsdp2" or stage == 3
    cfg = _cfg(colour_data, 2, 1, evals=sharded)
    result = launch_training(cfg, run, LaunchConfig("torchrun", nproc=2), engine)
    assert result.final_model == run / "final"
    assert len(result.evals) == (6 if sharded else 0)
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    records = [r for r in records if "eval" not in r]
    assert {r["processes"] for r in records} == {2}
    first = records[0]["throughput"]
    assert first["tokens_per_s"] == pytest.approx(2 * first["tokens_per_s_per_process"], rel=0.5)
    for reference in references:
        _assert_same_training(run, reference)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["accelerate", "deepspeed"])
def test_other_launchers_give_the_same_training(launcher, colour_data, references, tmp_path):
    # accelerate launch --multi_gpu: DDP; the deepspeed launcher: DeepSpeed ZeRO-2 (the default engine there)
    run = tmp_path / launcher
    launch_training(_cfg(colour_data, 2, 1), run, LaunchConfig(launcher, nproc=2, master_port=_free_port()))
    assert json.loads((run / "run.json").read_text())["world_size"] == 2
    engine = json.loads((run / "launch" / "engine.json").read_text())["engine"]["kind"]
    assert engine == ("deepspeed" if launcher == "deepspeed" else "ddp")
    _assert_same_training(run, references[0])


def _wait_for(path, proc, seconds=120):
    deadline = time.monotonic() + seconds
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return path.exists()


def _worker_pid(parent_pid, rank):
    for child in psutil.Process(parent_pid).children(recursive=True):
        try:
            if "tbi_train.scale.worker" in " ".join(child.cmdline()) and child.environ().get("RANK") == str(
                rank
            ):
                return child.pid
        except psutil.Error:
            continue
    raise AssertionError(f"no worker of rank {rank} under pid {parent_pid}")


_LAUNCH = """
import json, sys
from tbi_train.config import load_config
from tbi_train.errors import TrainError
from tbi_train.scale.engines import EngineConfig
from tbi_train.scale.launch import LaunchConfig, launch_training
try:
    engine = EngineConfig(sys.argv[3], zero_stage=int(sys.argv[4]))
    launch_training(load_config(sys.argv[1]), sys.argv[2], LaunchConfig("torchrun", nproc=2), engine)
except TrainError as exc:
    print("TrainError:", exc)
    sys.exit(3)
"""


_LONG = (1, 1, 10)


@pytest.fixture(scope="module")
def long_reference(colour_data, tmp_path_factory):
    """1 process x batch 2 x 2 accumulation steps, phases of 1, 1 and 10 steps."""
    reference = tmp_path_factory.mktemp("long") / "reference"
    train(_cfg(colour_data, 2, 2, _LONG), reference)
    return reference


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_killed_rank_stops_the_job_and_one_process_resumes_it(stage, colour_data, long_reference, tmp_path):
    # 2-process DeepSpeed ZeRO-2 / ZeRO-3 checkpoints, resumed by 1 process with the ddp engine.
    steps, reference = _LONG, long_reference
    run = tmp_path / "killed"
    from tbi_train.config import save_config

    config = save_config(_cfg(colour_data, 2, 1, steps, every=2), tmp_path / "two.json")
    proc = subprocess.Popen(
        [sys.executable, "-c", _LAUNCH, str(config), str(run), "deepspeed", str(stage)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    marker = run / "checkpoints" / "02-lm_lora-step0000002" / "COMPLETE"
    assert _wait_for(marker, proc), proc.communicate()[0][-3000:]
    victim = _worker_pid(proc.pid, 1)
    os.kill(victim, signal.SIGKILL)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, output[-3000:]
    message = output[output.index("TrainError:") :]
    assert f"rank 1 (local rank 1, pid {victim}) was killed by SIGKILL" in message
    assert "Continue with --resume from 02-lm_lora-step" in message
    assert not (run / "final").exists()

    # One process, the same global batch as 2 x 2: batch 2 x 2 accumulation steps.
    resumed = train(_cfg(colour_data, 2, 2, steps, every=2), run, resume=True)
    assert json.loads((run / "run.json").read_text())["world_size"] == 1
    _assert_same_training(resumed.run_dir, reference)


def _train_child(cfg, run):
    torch.set_num_threads(1)
    train(cfg, run)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["deepspeed", "fsdp2"])
def test_one_process_checkpoint_resumes_on_two_processes(kind, colour_data, long_reference, tmp_path):
    # A 1-process ddp checkpoint resumed by 2 processes with DeepSpeed ZeRO-2 or FSDP2.
    steps, reference = _LONG, long_reference
    run = tmp_path / "killed"
    one = _cfg(colour_data, 2, 2, steps, every=2)
    child = multiprocessing.get_context("fork").Process(target=_train_child, args=(one, run))
    child.start()
    marker = run / "checkpoints" / "02-lm_lora-step0000004" / "COMPLETE"
    deadline = time.monotonic() + 120
    while not marker.exists() and child.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert marker.exists() and not (run / "final").exists()

    resumed = launch_training(
        _cfg(colour_data, 2, 1, steps, every=2), run, LaunchConfig("torchrun", nproc=2), EngineConfig(kind),
        resume=True,
    )  # fmt: skip
    _assert_same_training(resumed.run_dir, reference)
