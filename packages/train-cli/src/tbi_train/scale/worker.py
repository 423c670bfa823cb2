"""One training process: `python -m tbi_train.scale.worker <run>/launch` (started by a launcher, one per rank).

Reads the resolved config and the engine choice written by `launch_training` and calls
`tbi_train.train.train`; the launcher's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...) says which rank.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from tbi_train.config import load_config
from tbi_train.scale.engines import EngineConfig


def run_worker(launch_dir: str | Path) -> None:
    """Train the run described in `launch_dir` as this process's rank."""
    from tbi_train.train import train

    launch_dir = Path(launch_dir)
    cfg = load_config(launch_dir / "config.json")
    spec = json.loads((launch_dir / "engine.json").read_text())
    train(cfg, launch_dir.parent, resume=spec["resume"], engine=EngineConfig(**spec["engine"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tbi_train.scale.worker", description=__doc__)
    parser.add_argument("launch_dir", help="The run's launch/ folder written by launch_training.")
    # The deepspeed launcher passes --local_rank; LOCAL_RANK in the environment says the same.
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(
        level=logging.INFO, format=f"rank {os.environ.get('RANK', '0')} %(levelname)s %(name)s: %(message)s"
    )
    run_worker(args.launch_dir)


if __name__ == "__main__":
    main()
