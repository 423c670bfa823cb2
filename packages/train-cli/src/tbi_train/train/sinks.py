"""Optional log sinks next to log.jsonl: TensorBoard event files and offline Weights & Biases runs.

Every record the run writes to log.jsonl also goes to each sink as scalars (`scalars(record)`):

    loss, grad_norm, tokens, epoch, elapsed_s   -> train/<key>
    lr {group: rate}                            -> lr/<group>
    throughput {name: value}                    -> throughput/<name>
    eval {metric or benchmark: score}           -> eval/<name>
    router {stat: value}                        -> router/<stat>   (MoLE, when present)

at step = the record's `global_step`. Only rank 0 opens sinks. W&B always runs with mode="offline"
(nothing reaches the network, no login); `wandb sync run/wandb/offline-run-*` uploads later.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from tbi_train.errors import TrainError

__all__ = ["SINKS", "TensorBoardSink", "WandbSink", "check_sinks", "open_sinks", "scalars"]

logger = logging.getLogger(__name__)

SINKS: dict[str, tuple[str | None, str | None]] = {
    "jsonl": (None, None),
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
}
"""Sink name -> (module it needs, tbi-train pip extra providing it); jsonl needs nothing and is always on."""

_BOOKKEEPING = frozenset({"phase", "step", "global_step", "processes", "rank"})
_SECTIONS = {"lr": "lr", "throughput": "throughput", "eval": "eval", "router": "router"}


def check_sinks(names: tuple[str, ...]) -> None:
    """Fail before training when a requested sink's package is not installed, naming the pip extra."""
    for name in names:
        if name not in SINKS:
            raise TrainError(f"log.sinks: unknown sink {name!r}; use any of {', '.join(SINKS)}.")
        module, extra = SINKS[name]
        if module is not None and importlib.util.find_spec(module) is None:
            raise TrainError(
                f"log.sinks asks for {name!r} but the {module!r} package is not installed; "
                f"pip install 'tbi-train[{extra}]' or remove {name} from log.sinks."
            )


def scalars(record: dict) -> dict[str, float]:
    """The numeric leaves of a log record as {tag: value} (see the module table); non-finite values kept."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in _BOOKKEEPING:
            continue
        if isinstance(value, dict) and key in _SECTIONS:
            for sub, number in _flatten(value, _SECTIONS[key]):
                out[sub] = number
        elif _is_number(value):
            out[f"train/{key}"] = float(value)
    return out


def _flatten(tree: dict, prefix: str):
    for key, value in tree.items():
        tag = f"{prefix}/{key}"
        if isinstance(value, dict):
            yield from _flatten(value, tag)
        elif _is_number(value):
            yield tag, float(value)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class TensorBoardSink:
    """Scalars into `directory` (torch's SummaryWriter); on resume, events after `purge_step` are dropped."""

    def __init__(self, directory: str | Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(directory), purge_step=purge_step)

    def write(self, record: dict) -> None:
        step = int(record.get("global_step", 0))
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """An offline W&B run under `directory` (never online: mode="offline" overrides WANDB_MODE)."""

    def __init__(self, directory: str | Path, project: str, name: str, config: dict):
        # Offline means no network at all: no crash reports either (read by wandb at import).
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        import wandb

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, disable_git=True)
        self.run = wandb.init(
            mode="offline",
            dir=str(directory),
            project=project,
            name=name,
            config=config,
            settings=settings,
            reinit="create_new",
        )

    def write(self, record: dict) -> None:
        values = scalars(record)
        if values:
            # W&B rows are keyed by step; a step's eval merges into the row of its training record.
            self.run.log(values, step=int(record.get("global_step", 0)))

    def close(self) -> None:
        self.run.finish()


def open_sinks(
    names: tuple[str, ...], run_dir: str | Path, *, resume_step: int | None, project: str, config: dict
) -> list:
    """The requested sinks (jsonl is the run's own log and is not among them), writing into `run_dir`.

    `resume_step`: the last global step kept on resume (TensorBoard purges later events), None when fresh.
    """
    check_sinks(names)
    run_dir = Path(run_dir)
    sinks: list = []
    if "tensorboard" in names:
        purge = None if resume_step is None else resume_step + 1
        sinks.append(TensorBoardSink(run_dir / "tensorboard", purge_step=purge))
    if "wandb" in names:
        sinks.append(WandbSink(run_dir, project, run_dir.name, config))
    logger.info("log sinks: jsonl%s", "".join(f", {n}" for n in names if n != "jsonl"))
    return sinks
