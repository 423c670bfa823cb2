"""Media behind a record: image files, video files (PyAV), frame folders, and uniform frame sampling."""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tbi_train.data.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class MediaError(DataError):
    """One media item is unusable; `reason` is a key of bad.REASONS. Caught and counted, never escapes."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class MediaRef:
    """Where one `<image>` placeholder's pixels come from.

    kind: "image" (a file or, with `row` set, bytes in a Hugging Face dataset row), "video" (a
    video file decoded with PyAV) or "frames" (a folder of frame images). `path` is absolute.
    For HF rows: `row` index, `column` name, `item` position in a list column (or -1), and `path`
    is the data root that a cell holding only a relative path is resolved under.
    """

    kind: str
    path: str | None = None
    row: int = -1
    column: str = ""
    item: int = -1


def resolve_under(root: str, relative: str) -> str:
    """The absolute path of `relative` under `root`; MediaError when it escapes `root`.

    The check is lexical (normpath, no symlink resolution): `../x` and absolute paths outside the
    root are refused, while a symlinked folder inside the root (a common way to mount images) works.
    """
    root = os.path.normpath(os.path.abspath(root))
    path = os.path.normpath(os.path.join(root, relative))
    if os.path.commonpath([root, path]) != root:
        raise MediaError("path_outside_root", f"{relative} is outside {root}")
    return path


def uniform_indices(total: int, n: int) -> list[int]:
    """n frame indices spread uniformly over [0, total - 1], first and last included.

    index_i = round(i * (total - 1) / (n - 1)); fewer than n frames repeat some indices (n == 1: the middle).
    """
    if total < 1:
        raise MediaError("corrupt_media", "no frames")
    if n == 1:
        return [(total - 1) // 2]
    return [int(v) for v in np.round(np.linspace(0, total - 1, n)).astype(int)]


def frame_files(folder: str) -> list[str]:
    """Image files of a frame folder in natural order (frame2 before frame10)."""
    names = [n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES)]

    def key(name: str) -> list[object]:
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]

    return [os.path.join(folder, n) for n in sorted(names, key=key)]


def open_image(source: str | bytes) -> Image.Image:
    """Decode an image file or bytes to RGB; MediaError when missing or corrupt."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            return img.convert("RGB")
    except FileNotFoundError as exc:
        raise MediaError("missing_media", f"{source} does not exist") from exc
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        where = "image bytes" if isinstance(source, bytes) else source
        raise MediaError("corrupt_media", f"{where}: {exc}") from exc


def verify_image(source: str | bytes) -> None:
    """Check an image without keeping its pixels (PIL verify: headers and chunk checksums)."""
    if isinstance(source, str) and not os.path.isfile(source):
        raise MediaError("missing_media", f"{source} does not exist")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            img.verify()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        where = "image bytes" if isinstance(source, bytes) else source
        raise MediaError("corrupt_media", f"{where}: {exc}") from exc


def read_frame_folder(folder: str, num_frames: int) -> list[Image.Image]:
    """num_frames frames sampled uniformly from a folder of frame images."""
    files = _existing_frames(folder)
    return [open_image(files[i]) for i in uniform_indices(len(files), num_frames)]


def read_video(path: str, num_frames: int) -> list[Image.Image]:
    """num_frames RGB frames sampled uniformly from a video file, decoded with PyAV.

    Frames are decoded in order and only the sampled ones are converted; the frame count comes
    from the container when it states one, else from a first decoding pass.
    """
    import av

    if not os.path.isfile(path):
        raise MediaError("missing_media", f"{path} does not exist")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise MediaError("corrupt_media", f"{path} has no video stream")
            total = container.streams.video[0].frames
        if total <= 0:
            total = _count_frames(path)
        wanted = uniform_indices(total, num_frames)
        picked: dict[int, Image.Image] = {}
        with av.open(path) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i > wanted[-1]:
                    break
                if i in wanted:
                    picked[i] = frame.to_image().convert("RGB")
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise MediaError("corrupt_media", f"{path}: {exc}") from exc
    if not picked:
        raise MediaError("corrupt_media", f"{path}: no decodable frames")
    # A container may overstate its frame count; fall back to the last decoded frame.
    last = picked[max(picked)]
    return [picked.get(i, last) for i in wanted]


def verify_video(path: str) -> None:
    """Check that a video file exists, has a video stream and decodes its first frame."""
    import av

    if not os.path.isfile(path):
        raise MediaError("missing_media", f"{path} does not exist")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise MediaError("corrupt_media", f"{path} has no video stream")
            next(container.decode(video=0))
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, StopIteration) as exc:
        raise MediaError("corrupt_media", f"{path}: {exc or 'no frames'}") from exc


def verify_frame_folder(folder: str, num_frames: int) -> None:
    """Check that a frame folder exists and that the frames it would yield decode."""
    files = _existing_frames(folder)
    for i in sorted(set(uniform_indices(len(files), num_frames))):
        verify_image(files[i])


def _existing_frames(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise MediaError("missing_media", f"frame folder {folder} does not exist")
    files = frame_files(folder)
    if not files:
        raise MediaError("missing_media", f"frame folder {folder} has no {'/'.join(IMAGE_SUFFIXES)} files")
    return files


def _count_frames(path: str) -> int:
    import av

    with av.open(path) as container:
        return sum(1 for _ in container.decode(video=0))


def is_video_file(path: str) -> bool:
    """True when `path` names a file rather than a frame folder (a trailing slash or no suffix means a folder)."""
    return not path.endswith(("/", os.sep)) and Path(path).suffix != ""
