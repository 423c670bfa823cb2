"""Local Hugging Face datasets (save_to_disk folders, parquet or arrow files) as conversation datasets."""

from __future__ import annotations

import logging
from pathlib import Path

from tbi_train.data.bad import BadSampleReport
from tbi_train.data.dataset import ConversationDataset, hf_image_source, verify_entry
from tbi_train.data.errors import DataError
from tbi_train.data.media import MediaError, MediaRef
from tbi_train.data.sample import RecordError, parse_record

logger = logging.getLogger(__name__)


def load_hf_dataset(
    path: str | Path,
    split: str = "train",
    image_root: str | Path | None = None,
    *,
    image_column: str | None = None,
    num_frames: int = 8,
    replicate_image_frames: int = 1,
    max_bad_fraction: float = 0.05,
    verify_media: bool = True,
) -> ConversationDataset:
    """Load a Hugging Face dataset from a local path only (never the Hub).

    `path` is a `save_to_disk` folder (a DatasetDict's `split` is taken), a .parquet/.arrow file,
    or a folder of such files. Rows hold `conversations` (from/value) or `messages` (role/content,
    content may be a list of text/image parts), and images in `image_column` (default `image`, else
    `images`): `datasets.Image` cells (bytes decoded on access) or path strings under `image_root`.
    Videos are not read from HF rows; give a LLaVA JSON with `video` paths instead.

    Raises:
        DataError: the path is missing, has no rows, or more than `max_bad_fraction` of them are bad.
    """
    import datasets

    path = Path(path)
    if not path.exists():
        raise DataError(
            f"HF dataset {path} does not exist; pass a local save_to_disk folder or parquet/arrow files."
        )
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        table = datasets.load_from_disk(str(path))
        if isinstance(table, datasets.DatasetDict):
            if split not in table:
                raise DataError(f"{path} has splits {sorted(table)}, not {split!r}; pass split= one of them.")
            table = table[split]
    else:
        files = sorted(path.glob("*.parquet")) + sorted(path.glob("*.arrow")) if path.is_dir() else [path]
        if not files:
            raise DataError(f"{path} holds no .parquet or .arrow files and is not a save_to_disk folder.")
        kinds = {f.suffix for f in files}
        if len(kinds) != 1 or kinds - {".parquet", ".arrow"}:
            raise DataError(f"{path}: expected only .parquet or only .arrow files, got {sorted(kinds)}.")
        builder = "parquet" if ".parquet" in kinds else "arrow"
        table = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
    column = image_column or next((c for c in ("image", "images") if c in table.column_names), None)
    if column is not None and isinstance(table.features.get(column), datasets.Image):
        table = table.cast_column(column, datasets.Image(decode=False))
    elif column is not None and isinstance(table.features.get(column), datasets.Sequence | list):
        feature = table.features[column]
        inner = feature.feature if isinstance(feature, datasets.Sequence) else feature[0]
        if isinstance(inner, datasets.Image):
            table = table.cast_column(column, [datasets.Image(decode=False)])
    root = str(Path(image_root) if image_root is not None else (path if path.is_dir() else path.parent))
    name = path.name
    report = BadSampleReport(name, total=len(table))
    text_table = table.remove_columns([column]) if column is not None else table
    dataset = ConversationDataset([], report, hf_rows=table)
    entries = []
    seen: set[str] = set()
    for row_index, row in enumerate(text_table):
        fallback = f"{name}:{row_index}"
        try:
            media = _row_media(table, row_index, column, root)
            record = {k: v for k, v in row.items() if v is not None}
            entry = parse_record(
                record, fallback, root, name, num_frames, replicate_image_frames, media=media
            )
            if entry.info.id in seen:
                raise RecordError("duplicate_id", f"id {entry.info.id} repeats")
            if verify_media:
                verify_entry(entry, num_frames, source_of=dataset._image_source)
        except (RecordError, MediaError) as exc:
            report.add(str(row.get("id") or fallback), exc.reason, exc.detail)
            continue
        seen.add(entry.info.id)
        entries.append(entry)
    if report.bad:
        logger.warning("%s", report.summary())
    report.check(max_bad_fraction)
    return ConversationDataset(entries, report, hf_rows=table)


def _row_media(table, row_index: int, column: str | None, root: str) -> list[MediaRef]:
    if column is None:
        return []
    cell = table[row_index][column]
    if cell is None:
        return []
    if isinstance(cell, list):
        return [MediaRef("image", root, row=row_index, column=column, item=k) for k in range(len(cell))]
    hf_image_source(cell, root)  # path cells are checked against the root here
    return [MediaRef("image", root, row=row_index, column=column)]
