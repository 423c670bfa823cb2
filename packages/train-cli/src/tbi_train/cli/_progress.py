"""Rich progress bars for `tbi train`: one bar per phase with the latest loss, eval scores as lines."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from tbi_train.config import PhaseConfig
from tbi_train.train import TrainCallback


class RichProgress(TrainCallback):
    """Draws training progress on a rich console (used as a context manager)."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = None

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def on_phase_start(self, index: int, phase: PhaseConfig, total_steps: int, start_step: int) -> None:
        self.task = self.progress.add_task(
            f"phase {index} {phase.name}", total=total_steps, completed=start_step, loss=""
        )

    def on_step(self, record: dict) -> None:
        self.progress.update(self.task, completed=record["step"], loss=f"loss {record['loss']:.4f}")

    def on_eval(self, record: dict) -> None:
        scores = "  ".join(f"{k} {v:.3f}" for k, v in record["eval"].items())
        self.progress.console.print(f"  eval phase {record['phase']} step {record['step']}: {scores}")

    def on_phase_end(self, index: int, checkpoint: Path) -> None:
        self.progress.console.print(f"  phase {index} checkpoint: {checkpoint}")
