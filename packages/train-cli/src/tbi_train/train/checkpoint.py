"""Checkpoints: complete or absent, never half-written.

    checkpoints/<PP>-<phase>-step<SSSSSSS>/
        model/          save_vlm: config.json, model.safetensors, tokenizer/, adapters/<part>/ (peft)
        state/          the engine's portable state: Adam moments by parameter name, schedule step, RNG per
                        rank, engine.json (no weights: resume loads model/; see tbi_train.scale.engines)
        trainer.json    phase index and name, optimizer step, whether the phase is finished
        COMPLETE        marker, written last

Everything is written under a `.tmp-` name and renamed; `latest_checkpoint` only trusts folders with the
marker, so a process killed mid-write leaves an ignorable temp folder.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from tbi_train.errors import TrainError
from tbi_train.model import save_vlm

__all__ = ["CheckpointState", "latest_checkpoint", "prune_checkpoints", "read_checkpoint", "save_checkpoint"]

_MARKER = "COMPLETE"
_STATE = "trainer.json"


@dataclass(frozen=True)
class CheckpointState:
    """Where a checkpoint sits in the run."""

    phase_index: int
    """Index of the phase in `RunConfig.phases`."""
    phase_name: str
    """Name of that phase."""
    step: int
    """Optimizer steps done in the phase."""
    phase_done: bool
    """The phase has finished (the next phase starts from this checkpoint's weights)."""

    @property
    def folder_name(self) -> str:
        end = "-end" if self.phase_done else ""
        return f"{self.phase_index:02d}-{self.phase_name}-step{self.step:07d}{end}"


def save_checkpoint(run_dir: str | Path, state: CheckpointState, accelerator, vlm) -> Path:
    """Write one checkpoint (model export + engine state + trainer.json), marker last; return its path.

    `accelerator` is the phase's engine (every rank calls this); `vlm` what the engine trains, whose
    `accelerator.unwrap_model(vlm)` is the plain VLM with full weights on rank 0 while this runs.
    """
    root = Path(run_dir) / "checkpoints"
    final = root / state.folder_name
    tmp = root / f".tmp-{state.folder_name}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / "state"), safe_serialization=True)
    if accelerator.is_main_process:
        save_vlm(accelerator.unwrap_model(vlm), tmp / "model")
        (tmp / _STATE).write_text(json.dumps(asdict(state), indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        (final / _MARKER).write_text("")
    accelerator.wait_for_everyone()
    return final


def read_checkpoint(path: str | Path) -> CheckpointState:
    """The CheckpointState of a complete checkpoint folder."""
    path = Path(path)
    if not (path / _MARKER).is_file():
        raise TrainError(
            f"{path} is not a complete checkpoint (no {_MARKER} marker); pick another or start over."
        )
    return CheckpointState(**json.loads((path / _STATE).read_text()))


def _complete(run_dir: str | Path) -> list[tuple[CheckpointState, Path]]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(read_checkpoint(p), p) for p in root.iterdir() if p.is_dir() and (p / _MARKER).is_file()]
    return sorted(found, key=lambda item: (item[0].phase_index, item[0].step, item[0].phase_done))


def latest_checkpoint(run_dir: str | Path) -> tuple[CheckpointState, Path] | None:
    """The furthest complete checkpoint of a run (by phase, then step), or None."""
    found = _complete(run_dir)
    return found[-1] if found else None


def prune_checkpoints(run_dir: str | Path, phase_index: int, keep_last: int) -> None:
    """Delete all but the newest `keep_last` mid-phase checkpoints of a phase; phase ends are kept."""
    mid = [(s, p) for s, p in _complete(run_dir) if s.phase_index == phase_index and not s.phase_done]
    for _, path in mid[: max(0, len(mid) - keep_last)]:
        shutil.rmtree(path)
