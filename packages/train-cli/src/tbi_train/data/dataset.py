"""A map-style dataset of validated conversations whose media are decoded on access."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from torch.utils.data import Dataset

from tbi_train.data.bad import BadSampleReport
from tbi_train.data.errors import DataError
from tbi_train.data.media import (
    MediaError,
    MediaRef,
    open_image,
    read_frame_folder,
    read_video,
    resolve_under,
    verify_frame_folder,
    verify_image,
    verify_video,
)
from tbi_train.data.sample import Entry, RecordError, Sample, SampleInfo, parse_record

logger = logging.getLogger(__name__)


class ConversationDataset(Dataset):
    """Validated samples; `dataset[i]` decodes sample i's images or video frames into a `Sample`.

    Bad records were dropped at construction and counted in `bad_report`. A sample whose media
    fails to decode later (e.g. a file changed under the run) is counted too and replaced by the
    next decodable sample, so an epoch never stops halfway.
    """

    def __init__(self, entries: Sequence[Entry], bad_report: BadSampleReport, hf_rows=None):
        self._entries = list(entries)
        self.bad_report = bad_report
        self._hf_rows = hf_rows
        self._failed: set[int] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def describe(self, index: int) -> SampleInfo:
        """Sample `index`'s text, language, task and media shape, without decoding pixels."""
        return self._entries[index].info

    def select(self, indices: Iterable[int]) -> ConversationDataset:
        """A view on some samples (same bad report, same media loaders)."""
        return ConversationDataset([self._entries[i] for i in indices], self.bad_report, self._hf_rows)

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        for step in range(len(self)):
            i = (index + step) % len(self)
            if i in self._failed:
                continue
            try:
                return self._load(self._entries[i])
            except MediaError as exc:
                self._failed.add(i)
                self.bad_report.add(self._entries[i].info.id, exc.reason, exc.detail)
                logger.warning("skipping sample %s: %s", self._entries[i].info.id, exc.detail)
        raise DataError(
            f"{self.bad_report.summary()}\nno sample of this dataset can be decoded; check the media files."
        )

    def _load(self, entry: Entry) -> Sample:
        info = entry.info
        images = []
        for ref, frames in zip(entry.media, info.media_frames):
            if ref.kind == "video":
                images.extend(read_video(ref.path, frames))
            elif ref.kind == "frames":
                images.extend(read_frame_folder(ref.path, frames))
            else:
                images.extend([open_image(self._image_source(ref))] * frames)
        meta = {
            **info.meta,
            "media_frames": list(info.media_frames),
            "modality": info.modality,
            "source": info.source,
        }
        return Sample(info.id, images, info.conversations, info.language, info.task, info.answers, meta)

    def _image_source(self, ref: MediaRef) -> str | bytes:
        if ref.row < 0:
            return ref.path
        value = self._hf_rows[ref.row][ref.column]
        if ref.item >= 0:
            value = value[ref.item]
        return hf_image_source(value, ref.path)


def hf_image_source(value: object, root: str | None) -> str | bytes:
    """An HF `Image(decode=False)` cell ({"bytes", "path"}) or a plain path string -> bytes or a path."""
    if isinstance(value, dict) and value.get("bytes"):
        return value["bytes"]
    path = value.get("path") if isinstance(value, dict) else value
    if not isinstance(path, str) or not path:
        raise MediaError("missing_media", "the row's image cell has neither bytes nor a path")
    return resolve_under(root or os.getcwd(), path)


def load_conversations(
    path: str | Path,
    image_root: str | Path | None = None,
    *,
    num_frames: int = 8,
    replicate_image_frames: int = 1,
    max_bad_fraction: float = 0.05,
    verify_media: bool = True,
    source: str | None = None,
) -> ConversationDataset:
    """Load LLaVA-style conversations from a JSON list or a JSONL file.

    Each record: `id`, `image` | `images` | `video` (a video file or a frame folder, relative to
    `image_root`), `conversations` [{"from": "human"|"gpt"|"system", "value"}] (or chat `messages`
    with role/content), optional `language` (guessed from Hangul when absent), `task`, `answers`.

    Args:
        path: the .json or .jsonl file.
        image_root: folder media paths are relative to; default the file's folder. Paths escaping it are bad.
        num_frames: frames sampled uniformly from each video or frame folder (seed 004: 8).
        replicate_image_frames: an image becomes this many identical frames (seed 003 A8a: 1, A8b: 16).
        max_bad_fraction: raise when a larger share of records is unusable.
        verify_media: check every image/video decodes at load time (PIL verify, first video frame).
        source: name of this dataset in reports and mixtures; default the file name.

    Raises:
        DataError: the file is missing or unreadable, or more than `max_bad_fraction` of it is bad.
    """
    path = Path(path)
    if num_frames < 1 or replicate_image_frames < 1:
        raise DataError(
            f"num_frames={num_frames}, replicate_image_frames={replicate_image_frames}: both must be >= 1."
        )
    if path.is_dir():
        raise DataError(
            f"{path} is a folder; pass one of its .json/.jsonl files (e.g. {path / 'train.json'})."
        )
    if not path.is_file():
        raise DataError(f"dataset file {path} does not exist; pass a LLaVA-style .json or .jsonl file.")
    root = str(Path(image_root) if image_root is not None else path.parent)
    name = source or path.name
    report = BadSampleReport(name)
    rows = _read_rows(path, report)
    entries = []
    seen: set[str] = set()
    for line_no, raw in rows:
        fallback = f"{name}:{line_no}"
        try:
            entry = parse_record(raw, fallback, root, name, num_frames, replicate_image_frames)
            if entry.info.id in seen:
                raise RecordError("duplicate_id", f"id {entry.info.id} repeats")
            if verify_media:
                verify_entry(entry, num_frames)
        except (RecordError, MediaError) as exc:
            rid = str(raw.get("id", fallback)) if isinstance(raw, dict) else fallback
            report.add(rid, exc.reason, exc.detail)
            continue
        seen.add(entry.info.id)
        entries.append(entry)
    report.total = len(rows) + report.counts.get("bad_json", 0)
    if report.bad:
        logger.warning("%s", report.summary())
    report.check(max_bad_fraction)
    return ConversationDataset(entries, report)


def verify_entry(entry: Entry, num_frames: int, source_of=None) -> None:
    """Check every media item of an entry decodes; raises MediaError."""
    for ref in entry.media:
        if ref.kind == "video":
            verify_video(ref.path)
        elif ref.kind == "frames":
            verify_frame_folder(ref.path, num_frames)
        else:
            verify_image(source_of(ref) if source_of is not None else ref.path)


def _read_rows(path: Path, report: BadSampleReport) -> list[tuple[int, object]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((line_no, json.loads(line)))
            except json.JSONDecodeError as exc:
                report.add(f"{path.name}:{line_no}", "bad_json", str(exc))
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path} is not valid JSON ({exc}); use a JSON list of records or a .jsonl file."
        ) from exc
    if not isinstance(data, list):
        raise DataError(f"{path} holds a JSON {type(data).__name__}; expected a list of records.")
    return list(enumerate(data))
