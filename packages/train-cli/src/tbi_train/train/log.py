"""The run's JSONL log (one object per line) and its training-curve PNGs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

__all__ = ["JsonlLog", "RunLog", "plot_curves"]


class JsonlLog:
    """Append-only JSONL file, flushed per line so a killed run keeps everything it logged."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [
            json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()
        ]

    def keep(self, predicate: Callable[[dict], bool]) -> None:
        """Drop the records failing `predicate` (on resume: those logged after the checkpoint), atomically."""
        records = [r for r in self.read() if predicate(r)]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records))
        tmp.replace(self.path)


class RunLog(JsonlLog):
    """The run's JSONL log that also forwards every record to the optional sinks (`tbi_train.train.sinks`)."""

    def __init__(self, path: str | Path, sinks: list | None = None):
        super().__init__(path)
        self.sinks = list(sinks or [])

    def write(self, record: dict) -> None:
        super().write(record)
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        """Flush and close the sinks (log.jsonl needs nothing)."""
        for sink in self.sinks:
            sink.close()
        self.sinks = []


def plot_curves(records: list[dict], out_dir: str | Path) -> list[Path]:
    """train_loss.png (loss per global step) and, when evaluated, val_scores.png; returns the files written."""
    from tbi_evalbench import plot_training_curves

    out_dir = Path(out_dir)
    written = []
    steps = [r for r in records if "loss" in r]
    if steps:
        curves = {"train loss": ([r["global_step"] for r in steps], [r["loss"] for r in steps])}
        written.append(plot_training_curves(curves, out_dir / "train_loss.png", title="Training loss"))
    evals = [r for r in records if "eval" in r]
    if evals:
        curves = {
            metric: ([r["global_step"] for r in evals], [r["eval"][metric] for r in evals])
            for metric in evals[0]["eval"]
        }
        written.append(
            plot_training_curves(curves, out_dir / "val_scores.png", title="Validation", ylabel="score")
        )
    return written
