"""What a sample is, and how a raw LLaVA-style record becomes one (or is rejected with a reason)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from PIL import Image

from tbi_train.data.errors import DataError
from tbi_train.data.media import MediaRef, is_video_file, resolve_under

IMAGE_PLACEHOLDER = "<image>"

_ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt", "system": "system"}
_KNOWN_KEYS = {"id", "image", "images", "video", "conversations", "messages", "language", "task", "answers"}


@dataclass(frozen=True)
class SampleInfo:
    """A sample's text and shape, known without decoding any pixels.

    `conversations`: turns {"from": "human"|"gpt"|"system", "value": str}; `media_frames[k]`: frames
    the k-th `<image>` placeholder stands for (1 for an image, N for a video or a replicated image);
    `modality`: "video", "image" or "text"; `meta`: the record's other keys plus `source`.
    """

    id: str
    conversations: list[dict[str, str]]
    language: str
    task: str
    answers: list[str]
    media_frames: list[int]
    modality: str
    source: str
    meta: dict[str, object] = field(default_factory=dict)


@dataclass
class Sample:
    """One loaded sample (the contract's `Sample`).

    `images` holds every frame of every placeholder in order (sum of meta["media_frames"] images);
    meta carries `media_frames`, `modality` and `source` besides the record's extra keys.
    """

    id: str
    images: list[Image.Image]
    conversations: list[dict[str, str]]
    language: str
    task: str
    answers: list[str]
    meta: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Entry:
    """A validated record: its SampleInfo and where each placeholder's media comes from."""

    info: SampleInfo
    media: tuple[MediaRef, ...]


class RecordError(DataError):
    """A record is unusable; `reason` is a key of bad.REASONS. Caught and counted by the loaders."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def normalise_turns(raw: object) -> list[dict[str, str]]:
    """LLaVA `conversations` (from/value) or chat `messages` (role/content) -> [{"from", "value"}].

    Structured content (a list of {"type": "image"} / {"type": "text", "text": ...} parts, as in
    Hugging Face chat datasets) becomes text with an `<image>` placeholder per image part.
    """
    if not isinstance(raw, list) or not raw:
        raise RecordError("bad_conversation", "conversations must be a non-empty list of turns")
    turns = []
    for i, turn in enumerate(raw):
        if not isinstance(turn, Mapping):
            raise RecordError("bad_conversation", f"turn {i} is not an object")
        role = turn.get("from", turn.get("role"))
        value = turn.get("value", turn.get("content"))
        if isinstance(value, list):
            value = "".join(_part_text(p) for p in value)
        if role not in _ROLES or not isinstance(value, str):
            raise RecordError(
                "bad_conversation", f"turn {i} needs from/role in {sorted(_ROLES)} and a text value"
            )
        turns.append({"from": _ROLES[role], "value": value})
    return turns


def _part_text(part: object) -> str:
    if isinstance(part, Mapping):
        if part.get("type") in ("image", "video"):
            return IMAGE_PLACEHOLDER
        if isinstance(part.get("text"), str):
            return part["text"]
    if isinstance(part, str):
        return part
    raise RecordError("bad_conversation", f"content part {part!r} is neither text nor an image")


def guess_language(turns: list[dict[str, str]]) -> str:
    """'ko' when any turn contains a Hangul syllable, else 'en' (for records without a `language` key)."""
    return "ko" if any("\uac00" <= ch <= "\ud7a3" for t in turns for ch in t["value"]) else "en"


def parse_record(
    record: object,
    fallback_id: str,
    root: str,
    source: str,
    num_frames: int,
    replicate_image_frames: int,
    media: list[MediaRef] | None = None,
) -> Entry:
    """Validate one raw record and resolve its media paths under `root`.

    `media` is given by loaders that already know the record's media (HF dataset rows); otherwise
    it is read from the `image` / `images` / `video` keys. Raises RecordError or MediaError.
    """
    if not isinstance(record, Mapping):
        raise RecordError("not_a_record", f"expected a JSON object, got {type(record).__name__}")
    rid = str(record.get("id", fallback_id))
    turns = normalise_turns(record.get("conversations", record.get("messages")))
    replies = [t["value"] for t in turns if t["from"] == "gpt" and t["value"].strip()]
    if not replies:
        raise RecordError("no_answer", "no gpt/assistant turn with text")
    if media is None:
        media = _media_from_keys(record, root)
    placeholders = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in turns)
    if placeholders != len(media):
        raise RecordError("placeholder_mismatch", f"{placeholders} <image> for {len(media)} media")
    frames = [num_frames if m.kind in ("video", "frames") else replicate_image_frames for m in media]
    modality = "video" if any(m.kind in ("video", "frames") for m in media) else "image" if media else "text"
    answers = record.get("answers")
    if not (isinstance(answers, list) and answers and all(isinstance(a, str) for a in answers)):
        answers = [replies[-1]]
    meta = {k: v for k, v in record.items() if k not in _KNOWN_KEYS}
    info = SampleInfo(
        id=rid,
        conversations=turns,
        language=str(record.get("language") or guess_language(turns)),
        task=str(record.get("task") or "general"),
        answers=list(answers),
        media_frames=frames,
        modality=modality,
        source=str(meta.pop("source", source)),
        meta=meta,
    )
    return Entry(info, tuple(media))


def _media_from_keys(record: Mapping, root: str) -> list[MediaRef]:
    refs = []
    images = record.get("images", [])
    if "image" in record and record["image"] is not None:
        images = [record["image"], *images] if isinstance(images, list) else images
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        raise RecordError("bad_conversation", "image/images must be a path or a list of paths")
    for rel in images:
        refs.append(MediaRef("image", resolve_under(root, rel)))
    video = record.get("video")
    if video is not None:
        if not isinstance(video, str):
            raise RecordError("bad_conversation", "video must be a path to a video file or a frame folder")
        path = resolve_under(root, video)
        refs.append(MediaRef("video" if is_video_file(video) and not os.path.isdir(path) else "frames", path))
    return refs
