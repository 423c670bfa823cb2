"""The phase store: one folder per step key, so a step shared by several experiments is computed once.

    store/<key>/            a core run folder (train), or model/ (merge), or a MoLE folder (mole)
    store/<key>/DONE.json   written last: step name, kind, seconds, which experiment computed it
    store/.partial-<key>/   a step being computed; a later call resumes it (train; mole from its last
                            mid-step checkpoint, `mole_checkpoints/`, single process) or starts it over (merge)

A train step continuing from a parent is the core's own resume: the parent's phase-end checkpoint is linked
into the new run folder, `run.json` names the new config's hash, and `tbi_train.train.train(..., resume=True)`
starts at the next phase; the core guarantees the same weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path

from tbi_train.config import config_hash, save_config
from tbi_train.experiments import Step
from tbi_train.run.data import SuiteData

__all__ = ["StepStore"]

logger = logging.getLogger(__name__)


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a folder with hard links (same filesystem) or plain copies."""

    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


class StepStore:
    """Computes steps into `root/<key>` unless done; reports reuse in the log and in its return value."""

    def __init__(self, root: str | Path, data: SuiteData):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.data = data

    def done(self, key: str) -> bool:
        return (self.root / key / "DONE.json").is_file()

    def model_dir(self, step: Step) -> Path:
        """The saved VLM a step produced (a MoLE folder for mole steps)."""
        folder = self.root / step.key
        return folder / "final" if step.kind == "train" else folder / "model"

    def ensure(self, step: Step, by: str, steps: dict[str, Step], seed: int) -> tuple[bool, float]:
        """Compute `step` unless it is in the store; return (reused, seconds spent)."""
        if self.done(step.key):
            logger.info("reuse %s %s (computed by %s)", step.name, step.key, self._who(step.key))
            return True, 0.0
        started = time.perf_counter()
        partial = self.root / f".partial-{step.key}"
        logger.info("compute %s %s for %s", step.name, step.key, by)
        if step.kind == "train":
            self._train(step, partial, steps)
        elif step.kind == "merge":
            self._merge(step, partial, seed)
        else:
            self._mole(step, partial, steps, seed)
        seconds = time.perf_counter() - started
        (partial / "DONE.json").write_text(
            json.dumps({"name": step.name, "kind": step.kind, "key": step.key, "by": by, "seconds": seconds})
            + "\n"
        )
        final = self.root / step.key
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        return False, seconds

    def _who(self, key: str) -> str:
        return json.loads((self.root / key / "DONE.json").read_text()).get("by", "?")

    def _train(self, step: Step, partial: Path, steps: dict[str, Step]) -> None:
        from tbi_train.train import latest_checkpoint, train

        cfg = step.config
        data = dataclasses.replace(cfg.data, train=str(self.data.mix_file(step.mix)), val=str(self.data.val))
        cfg = dataclasses.replace(cfg, data=data)
        if not (partial / "run.json").is_file():
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            if step.parent is not None:
                parent = self.root / step.parent
                found = latest_checkpoint(parent)
                if found is None or not found[0].phase_done:
                    raise RuntimeError(
                        f"store step {step.parent} has no phase-end checkpoint to continue from."
                    )
                _link_tree(found[1], partial / "checkpoints" / found[1].name)
                for name in ("tokenizer", "log.jsonl"):
                    if (parent / name).exists():
                        (_link_tree if (parent / name).is_dir() else shutil.copy2)(
                            parent / name, partial / name
                        )
            elif self.data.tokenizer is not None:
                _link_tree(self.data.tokenizer, partial / "tokenizer")
            save_config(cfg, partial / "config.json")
            (partial / "run.json").write_text(
                json.dumps({"config_hash": config_hash(cfg), "name": cfg.name}) + "\n"
            )
        train(cfg, partial, resume=True)

    def _merge(self, step: Step, partial: Path, seed: int) -> None:
        from tbi_train.strategies import merge_vlms

        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        inputs = {role: self.root / key / "final" for role, key in step.inputs}
        spec = dict(step.spec)
        merge_vlms(
            inputs["base"], inputs["en"], inputs["ko"], partial / "model",
            method=spec["method"], drop_rate=spec["drop_rate"], rescale=spec["rescale"], sign=spec["sign"],
            lambda_en=spec["lambda_en"], lambda_ko=spec["lambda_ko"], normalize=spec["normalize"], seed=seed,
        )  # fmt: skip

    def _mole(self, step: Step, partial: Path, steps: dict[str, Step], seed: int) -> None:
        from tbi_train.data import load_conversations
        from tbi_train.strategies import train_mole

        checkpoints = partial / "mole_checkpoints"
        log = partial / "log.jsonl"
        if not checkpoints.is_dir():  # otherwise resume: train_mole continues from the latest checkpoint
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            if (self.root / dict(step.inputs)["ko"] / "log.jsonl").is_file():
                shutil.copy2(self.root / dict(step.inputs)["ko"] / "log.jsonl", log)
        experts = {role: self.model_dir(steps[key]) for role, key in step.inputs}
        spec = dict(step.spec)
        en_step = steps[dict(step.inputs)["en"]]
        cfg = en_step.config
        dataset = load_conversations(self.data.mix_file(step.mix), image_root=cfg.data.image_root)
        train_mole(experts, spec, dataset, partial / "model", seed, cfg.max_length, cfg.optim, log_path=log,
                   checkpoint_dir=checkpoints, checkpoint_every=cfg.checkpoint.every_steps)  # fmt: skip
