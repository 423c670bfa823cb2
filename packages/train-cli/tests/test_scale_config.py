"""DeepSpeed JSON from the run config (and merged with a user file); launcher command lines; launch options."""

import json

import pytest

from tbi_train.config import apply_overrides, get_preset, resolve_config
from tbi_train.errors import TrainError
from tbi_train.scale.deepspeed_config import (
    deepspeed_config,
    runtime_deepspeed_config,
    write_deepspeed_config,
)
from tbi_train.scale.engines import EngineConfig, make_engine
from tbi_train.scale.launch import LaunchConfig, launcher_command


def _seed000():
    return apply_overrides(get_preset("internvl2.5-8b", root="/models"), ["precision=bf16"])


def test_seed_000_phase_3_on_two_gpus():
    cfg = _seed000()
    ds = deepspeed_config(cfg, phase_index=2, world_size=2, zero_stage=2, offload_optimizer=True)
    # seed 000 3.1 phase 3: per-device 2, accumulation 16; 3.2: clipping 1.0, AdamW (0.9, 0.95), wd 0.05, bf16
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["gradient_accumulation_steps"] == 16
    assert ds["train_batch_size"] == 2 * 16 * 2
    assert ds["gradient_clipping"] == 1.0 and ds["bf16"] == {"enabled": True}
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert ds["optimizer"] == {
        "type": "AdamW",
        "params": {"lr": 2e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.05},
    }
    assert ds["scheduler"]["type"] == "WarmupCosineLR"
    assert ds["scheduler"]["params"]["warmup_num_steps"] == 2000
    assert ds["scheduler"]["params"]["total_num_steps"] == 50_000
    assert ds["scheduler"]["params"]["cos_min_ratio"] == 0.0


def test_generated_json_is_parsed_by_deepspeed_itself(tmp_path):
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg = _seed000()
    path = write_deepspeed_config(deepspeed_config(cfg, 2, world_size=1, zero_stage=2, offload_optimizer=True),
                                  tmp_path / "ds.json")  # fmt: skip
    parsed = DeepSpeedConfig(str(path))  # no process group: world size 1
    assert (parsed.train_batch_size, parsed.gradient_accumulation_steps) == (32, 16)
    assert parsed.zero_optimization_stage == 2 and parsed.zero_config.offload_optimizer.device == "cpu"
    assert parsed.bfloat16_config.enabled and parsed.gradient_clipping == 1.0
    assert (parsed.optimizer_name, parsed.scheduler_name) == ("adamw", "WarmupCosineLR")
    assert not list(tmp_path.glob("*.tmp"))


def test_zero3_and_bad_settings():
    cfg = resolve_config("tiny")
    ds = deepspeed_config(cfg, 0, world_size=4, zero_stage=3)
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert ds["train_batch_size"] == 8 * 1 * 4 and ds["bf16"] == {"enabled": False}  # tiny: fp32 on the CPU
    with pytest.raises(TrainError, match="offload needs ZeRO-2 or ZeRO-3, not ZeRO-1"):
        deepspeed_config(cfg, 0, zero_stage=1, offload_optimizer=True)
    with pytest.raises(TrainError, match="phase 5 does not exist"):
        deepspeed_config(cfg, 5)
    with pytest.raises(TrainError, match="ZeRO stage 4"):
        deepspeed_config(cfg, 0, zero_stage=4)


def test_user_file_is_merged_and_checked(tmp_path):
    cfg = resolve_config("tiny")
    phase = cfg.phases[1]
    user = tmp_path / "user.json"
    user.write_text(json.dumps({"zero_optimization": {"reduce_bucket_size": 1000}, "train_batch_size": "auto",
                                "communication_data_type": "fp32"}))  # fmt: skip
    ds = runtime_deepspeed_config(
        cfg, phase, EngineConfig("deepspeed", zero_stage=1, deepspeed_config=str(user)), 2
    )
    assert ds["zero_optimization"]["stage"] == 1 and ds["zero_optimization"]["reduce_bucket_size"] == 1000
    assert ds["train_batch_size"] == 16 and ds["communication_data_type"] == "fp32"
    assert "optimizer" not in ds and "scheduler" not in ds  # the phase's own AdamW and schedule are passed in
    user.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4}))
    with pytest.raises(
        TrainError, match=r"user.json: train_micro_batch_size_per_gpu=4 but phase vision_projector needs 8"
    ):
        runtime_deepspeed_config(cfg, phase, EngineConfig("deepspeed", deepspeed_config=str(user)), 2)
    user.write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    with pytest.raises(TrainError, match="'optimizer' is set by the run config"):
        runtime_deepspeed_config(cfg, phase, EngineConfig("deepspeed", deepspeed_config=str(user)), 2)
    user.write_text("{oops")
    with pytest.raises(TrainError, match=r"user\.json: not valid JSON"):
        runtime_deepspeed_config(cfg, phase, EngineConfig("deepspeed", deepspeed_config=str(user)), 2)


def test_launcher_commands_for_two_nodes():
    launch = LaunchConfig(
        "torchrun", nproc=8, nodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29600
    )
    assert launcher_command(launch, "runs/f4/launch") == [
        *launcher_command(launch, "runs/f4/launch")[:3],
        "--nnodes", "2", "--nproc_per_node", "8", "--node_rank", "1", "--master_addr", "10.0.0.1",
        "--master_port", "29600", "-m", "tbi_train.scale.worker", "runs/f4/launch",
    ]  # fmt: skip
    ds = launcher_command(LaunchConfig("deepspeed", nproc=2, nodes=2, hostfile="hosts"), "L")
    assert ds[1:9] == [
        "-m",
        "deepspeed.launcher.runner",
        "--num_nodes",
        "2",
        "--num_gpus",
        "2",
        "--hostfile",
        "hosts",
    ]
    assert ds[-3:] == ["--module", "tbi_train.scale.worker", "L"]
    acc = launcher_command(LaunchConfig("accelerate", nproc=2), "L")
    assert acc[1:3] == ["-m", "accelerate.commands.launch"] and acc[acc.index("--num_processes") + 1] == "2"


def test_bad_launch_options_are_named():
    with pytest.raises(TrainError, match="needs a launcher; add --launcher torchrun"):
        LaunchConfig("none", nproc=2)
    with pytest.raises(TrainError, match="--node-rank 2 must lie in"):
        LaunchConfig("torchrun", nproc=1, nodes=2, node_rank=2)
    with pytest.raises(TrainError, match="nonfinite_loss=skip needs the ddp engine"):
        cfg = resolve_config("tiny", overrides=["nonfinite_loss=skip"])
        make_engine(EngineConfig("deepspeed"), cfg, cfg.phases[0])
    with pytest.raises(TrainError, match="nonfinite_loss=skip needs the ddp engine \\(fsdp2 has"):
        cfg = resolve_config("tiny", overrides=["nonfinite_loss=skip"])
        make_engine(EngineConfig("fsdp2"), cfg, cfg.phases[0])
    cfg = resolve_config("tiny")
    with pytest.raises(TrainError, match="zero_stage=0 is plain data parallelism: use the ddp engine"):
        make_engine(EngineConfig("deepspeed", zero_stage=0), cfg, cfg.phases[0])
    with pytest.raises(TrainError, match="engine 'fsdp' is not known; use 'ddp', 'deepspeed' or 'fsdp2'"):
        make_engine(EngineConfig("fsdp"), cfg, cfg.phases[0])


def test_resume_checks_the_global_batch_not_the_split(tmp_path):
    from tbi_train.config import config_hash, save_config
    from tbi_train.train import train

    broken = tmp_path / "train.json"
    broken.write_text("{")  # unreadable: the run stops right after the resume check
    base = [f"data.train={broken}", *(f"phases.{p}.batch_size=2" for p in range(3))]
    two = resolve_config("tiny", overrides=base)  # as written by a 2-process run
    run = tmp_path / "run"
    save_config(two, run / "config.json")
    (run / "run.json").write_text(
        json.dumps({"config_hash": config_hash(two), "name": "tiny", "world_size": 2})
    )
    # 1 process with the same config: half the global batch, refused before any work
    with pytest.raises(TrainError, match="only how each phase's global batch is split"):
        train(two, run, resume=True)
    # 1 process x 2 accumulation steps: the same global batch, accepted (then the bad data file stops it)
    one = resolve_config("tiny", overrides=[*base, *(f"phases.{p}.grad_accum=2" for p in range(3))])
    with pytest.raises(TrainError) as err:
        train(one, run, resume=True)
    assert "global batch" not in str(err.value) and "train.json" in str(err.value)
