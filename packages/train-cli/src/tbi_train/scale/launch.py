"""Start a run on several processes through an existing launcher: torchrun (in process), deepspeed, accelerate.

    launch_training(cfg, "runs/f4", LaunchConfig("torchrun", nproc=2), EngineConfig("deepspeed", zero_stage=2))

The resolved config and the engine choice are written to `<run>/launch/`, and every worker runs
`python -m tbi_train.scale.worker <run>/launch`, which calls `tbi_train.train.train` (see `worker.py`).
With torchrun a worker that dies stops the job: the elastic agent terminates the other ranks and this
function raises a `TrainError` naming the rank, its exit code or signal, and the checkpoint `--resume`
continues from.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from tbi_train.config import RunConfig, save_config
from tbi_train.errors import TrainError
from tbi_train.scale.engines import EngineConfig

__all__ = ["LaunchConfig", "launch_training", "launcher_command"]

logger = logging.getLogger(__name__)

_WORKER = "tbi_train.scale.worker"


@dataclass(frozen=True)
class LaunchConfig:
    """Which launcher starts the processes, and how many."""

    launcher: Literal["none", "torchrun", "deepspeed", "accelerate"] = "none"
    """none: train in this process; torchrun / deepspeed / accelerate: start `nproc` workers per node."""
    nproc: int = 1
    """Processes per node (one per GPU; on a CPU, processes sharing its cores)."""
    nodes: int = 1
    """Machines; run the same command on each with its own `node_rank`."""
    node_rank: int = 0
    """This machine's index among `nodes` (torchrun, accelerate)."""
    master_addr: str = "127.0.0.1"
    """Address of node 0 (several nodes)."""
    master_port: int = 29500
    """Port on node 0 (several nodes; one node picks a free port)."""
    hostfile: str | None = None
    """deepspeed launcher only: hostfile of `host slots=N` lines for several nodes (it starts them over ssh)."""

    def __post_init__(self) -> None:
        if self.nproc < 1 or self.nodes < 1:
            raise TrainError(f"--nproc {self.nproc} --nodes {self.nodes}: both must be at least 1.")
        if not 0 <= self.node_rank < self.nodes:
            raise TrainError(f"--node-rank {self.node_rank} must lie in [0, {self.nodes}).")
        if self.launcher == "none" and self.nproc * self.nodes > 1:
            raise TrainError(
                f"--nproc {self.nproc} --nodes {self.nodes} needs a launcher; add --launcher torchrun "
                f"(or deepspeed / accelerate)."
            )


def _write_launch_dir(cfg: RunConfig, run_dir: Path, engine: EngineConfig, resume: bool) -> Path:
    folder = run_dir / "launch"
    folder.mkdir(parents=True, exist_ok=True)
    save_config(cfg, folder / "config.json")
    tmp = folder / "engine.json.tmp"
    tmp.write_text(json.dumps({"engine": asdict(engine), "resume": resume}, indent=2) + "\n")
    tmp.replace(folder / "engine.json")
    return folder


def launcher_command(launch: LaunchConfig, launch_dir: str | Path) -> list[str]:
    """The argv of the deepspeed or accelerate launcher running every worker on this node."""
    worker = ["-m", _WORKER, str(launch_dir)]
    if launch.launcher == "deepspeed":
        # `deepspeed` on the command line is this module; running it from this interpreter needs no PATH.
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner"]
        cmd += ["--num_nodes", str(launch.nodes), "--num_gpus", str(launch.nproc)]
        if launch.hostfile is not None:
            cmd += ["--hostfile", launch.hostfile]
        cmd += ["--master_addr", launch.master_addr, "--master_port", str(launch.master_port)]
        return [*cmd, "--module", _WORKER, str(launch_dir)]
    if launch.launcher == "accelerate":
        return [
            sys.executable, "-m", "accelerate.commands.launch",
            "--multi_gpu", "--num_processes", str(launch.nproc * launch.nodes),
            "--num_machines", str(launch.nodes), "--machine_rank", str(launch.node_rank),
            "--main_process_ip", launch.master_addr, "--main_process_port", str(launch.master_port),
            *worker,
        ]  # fmt: skip
    if launch.launcher == "torchrun":
        return [
            sys.executable, "-m", "torch.distributed.run",
            "--nnodes", str(launch.nodes), "--nproc_per_node", str(launch.nproc),
            "--node_rank", str(launch.node_rank),
            "--master_addr", launch.master_addr, "--master_port", str(launch.master_port),
            *worker,
        ]  # fmt: skip
    raise TrainError(
        f"launcher {launch.launcher!r} starts no processes; use torchrun, deepspeed or accelerate."
    )


def launch_training(
    cfg: RunConfig,
    out_dir: str | Path,
    launch: LaunchConfig,
    engine: EngineConfig | None = None,
    resume: bool = False,
):
    """Train `cfg` into `out_dir` with `launch.nproc` x `launch.nodes` processes; return the `RunResult`.

    Raises:
        TrainError: a worker failed (the message names its rank and how it ended), or bad launch options.
    """
    from tbi_train.train import train
    from tbi_train.train.run import RunResult

    engine = engine or EngineConfig(kind="deepspeed" if launch.launcher == "deepspeed" else "ddp")
    run_dir = Path(out_dir)
    if launch.launcher == "none":
        return train(cfg, run_dir, resume=resume, engine=engine)
    launch_dir = _write_launch_dir(cfg, run_dir, engine, resume)
    if launch.launcher == "torchrun":
        _torchrun(launch, launch_dir, run_dir)
    else:
        command = launcher_command(launch, launch_dir)
        logger.info("starting %s", " ".join(command))
        done = subprocess.run(command, check=False)
        if done.returncode != 0:
            raise TrainError(
                f"the {launch.launcher} launcher exited with code {done.returncode} (its output names the "
                f"failed rank); continue with --resume from the last complete checkpoint in {run_dir}."
            )
    summary = json.loads((run_dir / "summary.json").read_text())
    return RunResult(run_dir, Path(summary["final_model"]), summary["evals"], summary["config_hash"])


def _torchrun(launch: LaunchConfig, launch_dir: Path, run_dir: Path) -> None:
    """torch.distributed's elastic agent in this process; a failed worker becomes a TrainError naming its rank."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig as ElasticConfig
    from torch.distributed.launcher.api import elastic_launch

    if launch.nodes == 1:
        rdzv = {"rdzv_backend": "c10d", "rdzv_endpoint": "localhost:0", "rdzv_configs": {}}
    else:
        rdzv = {
            "rdzv_backend": "static",
            "rdzv_endpoint": f"{launch.master_addr}:{launch.master_port}",
            "rdzv_configs": {"rank": launch.node_rank},
        }
    config = ElasticConfig(
        min_nodes=launch.nodes,
        max_nodes=launch.nodes,
        nproc_per_node=launch.nproc,
        run_id=str(uuid.uuid4()),
        max_restarts=0,
        monitor_interval=0.1,
        **rdzv,
    )
    try:
        elastic_launch(config, sys.executable)("-u", "-m", _WORKER, str(launch_dir))
    except ChildFailedError as exc:
        raise TrainError(_failure_message(exc.failures, run_dir)) from None


def _failure_message(failures: dict, run_dir: Path) -> str:
    """The rank that failed first, how it ended, how the others ended, and where `--resume` continues."""
    from tbi_train.train import latest_checkpoint

    def how(failure) -> str:
        if failure.exitcode < 0:
            return f"was killed by {failure.signal_name()}"
        return f"exited with code {failure.exitcode}"

    def cause(item) -> tuple:
        # A rank killed by a signal (OOM killer, SIGKILL) started it; the others then lost their peer
        # (gloo/NCCL error, exit code 1) or were sent SIGTERM by the agent.
        rank, failure = item
        signalled = failure.exitcode < 0 and failure.signal_name() != "SIGTERM"
        return (0 if signalled else 1 if failure.exitcode > 0 else 2, failure.timestamp, rank)

    ordered = sorted(failures.items(), key=cause)
    rank, first = ordered[0]
    text = f"rank {rank} (local rank {first.local_rank}, pid {first.pid}) {how(first)}"
    others = ", ".join(f"rank {r} {how(f)}" for r, f in ordered[1:])
    text += f"; the other ranks were stopped ({others})" if others else "; the other ranks were stopped"
    latest = latest_checkpoint(run_dir)
    where = f"from {latest[1].name}" if latest is not None else "from the start (no complete checkpoint yet)"
    return f"{text}. Continue with --resume {where} in {run_dir}."
