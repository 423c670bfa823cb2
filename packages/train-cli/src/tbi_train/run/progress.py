"""A suite-level progress view (rich): experiments done / running / failed / skipped, current step, ETA.

with SuiteProgress(console) as view:
    ablate("tbi-mllm", preset="tiny", on_event=view)
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

__all__ = ["SuiteProgress"]


class SuiteProgress:
    """Callable `on_event(kind, info)` for `ablate` that redraws a live table."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console()
        self.total = 0
        self.suite = ""
        self.counts = {"done": 0, "failed": 0, "skipped": 0}
        self.running = ""
        self.step = ""
        self.durations: list[float] = []
        self.started = time.perf_counter()
        self._live = Live(self.render(), console=self.console, refresh_per_second=2)

    def __enter__(self) -> SuiteProgress:
        self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._live.__exit__(*exc)

    def eta_seconds(self) -> float | None:
        """Mean time of the finished runs times the runs left (None before the first finishes)."""
        left = self.total - sum(self.counts.values())
        if not self.durations:
            return None
        return sum(self.durations) / len(self.durations) * left

    def __call__(self, kind: str, info: dict) -> None:
        if kind == "start":
            self.total, self.suite = info["total"], info["suite"]
        elif kind == "running":
            self.running, self.step = f"{info['id']} seed {info['seed']}", ""
        elif kind == "step":
            self.step = f"{info['step']} ({info['key'][:8]})"
        elif kind in self.counts:
            self.counts[kind] += 1
            if kind == "done":
                self.durations.append(info["seconds"])
            if kind == "failed":
                self.console.print(
                    f"[red]failed[/] {info['id']} seed {info['seed']}: {info['error']}", highlight=False
                )
            self.running = ""
        self._live.update(self.render())

    def render(self) -> Table:
        eta = self.eta_seconds()
        table = Table("suite", "done", "running", "failed", "skipped", "left", "ETA", title="tbi ablate")
        left = self.total - sum(self.counts.values())
        table.add_row(
            self.suite,
            str(self.counts["done"]),
            f"{self.running} {self.step}".strip() or "—",
            str(self.counts["failed"]),
            str(self.counts["skipped"]),
            str(left),
            "—" if eta is None else f"{eta / 60:.1f} min",
        )
        return table
