"""`tbi data check`: load a dataset the way training does and report what is wrong with it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tbi_train.data.bad import BadSampleReport
from tbi_train.data.dataset import ConversationDataset, load_conversations
from tbi_train.data.errors import DataError
from tbi_train.data.hf import load_hf_dataset
from tbi_train.data.preflight import PreflightReport, preflight_check


@dataclass
class DatasetCheckReport:
    """Per file: bad samples (with ids and reasons), counts by language/task/modality, optional pre-flight."""

    path: str
    files: dict[str, BadSampleReport] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    preflight: dict[str, PreflightReport] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No bad sample, no unreadable file, no pre-flight problem."""
        return (
            not self.errors
            and all(r.bad == 0 for r in self.files.values())
            and all(p.ok for p in self.preflight.values())
        )

    def summary(self) -> str:
        """The text `tbi data check` prints."""
        lines = [f"{self.path}: {'OK' if self.ok else 'PROBLEMS FOUND'}"]
        for name, report in self.files.items():
            lines.append(report.summary())
            for key, counter in self.counts.get(name, {}).items():
                lines.append(f"  {key}: " + ", ".join(f"{k}={v}" for k, v in sorted(counter.items())))
            if name in self.preflight:
                lines.append("  " + self.preflight[name].summary().replace("\n", "\n  "))
        lines += [f"{name}: {message}" for name, message in self.errors.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        """JSON-able form (for `tbi data check --json`)."""
        return {
            "path": self.path,
            "ok": self.ok,
            "files": {k: v.to_dict() for k, v in self.files.items()},
            "counts": self.counts,
            "preflight": {
                k: {"ok": p.ok, "checked": p.checked, "problems": p.problems}
                for k, p in self.preflight.items()
            },
            "errors": self.errors,
        }


def open_dataset(path: str | Path, image_root: str | Path | None = None, **options) -> ConversationDataset:
    """Load a .json/.jsonl file with `load_conversations`, else a local HF dataset with `load_hf_dataset`."""
    path = Path(path)
    if path.is_file() and path.suffix in (".json", ".jsonl"):
        return load_conversations(path, image_root, **options)
    return load_hf_dataset(path, image_root=image_root, **options)


def dataset_files(path: str | Path) -> list[Path]:
    """The datasets under `path`: the file itself, a folder's train/val JSON (synthetic layout), or the folder."""
    path = Path(path)
    if path.is_dir():
        found = [
            path / n for n in ("train.json", "val.json", "train.jsonl", "val.jsonl") if (path / n).is_file()
        ]
        if found:
            return found
    return [path]


def check_dataset(
    path: str | Path,
    image_root: str | Path | None = None,
    *,
    tokenizer=None,
    tokens_per_image: int = 64,
    loss_on: str = "answers",
    max_length: int | None = None,
    num_frames: int = 8,
) -> DatasetCheckReport:
    """Validate a dataset and report every bad sample (never raises for bad samples).

    `path`: a LLaVA .json/.jsonl file, a folder with train/val JSON (e.g. `tbi data synth` output),
    or a local HF dataset. With a `tokenizer`, each file also gets the pre-flight check (text
    tokenised with the chat template, `tokens_per_image` image-pad tokens per frame).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; pass a dataset file or folder.")
    report = DatasetCheckReport(str(path))
    for file in dataset_files(path):
        name = file.name
        try:
            dataset = open_dataset(file, image_root, num_frames=num_frames, max_bad_fraction=1.0)
        except DataError as exc:
            report.errors[name] = str(exc)
            continue
        report.files[name] = dataset.bad_report
        infos = [dataset.describe(i) for i in range(len(dataset))]
        report.counts[name] = {
            key: dict(Counter(str(getattr(info, key)) for info in infos))
            for key in ("language", "task", "modality")
        }
        if tokenizer is not None:
            from tbi_train.data.collator import Collator

            collator = Collator(
                tokenizer,
                image_transform=None,
                tokens_per_image=tokens_per_image,
                loss_on=loss_on,
                max_length=max_length,
            )
            report.preflight[name] = preflight_check(dataset, collator, raise_on_problems=False)
    return report
