"""Typed settings of the synthetic bilingual data generator."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields

from tbi_train.synth.errors import SynthError

TASKS: tuple[str, ...] = ("ocr", "chart", "table", "doc", "count", "color", "caption", "video")
"""Scene kinds the generator draws. `video` records carry the task `caption` or `color`."""

DEFAULT_FONT = "/usr/share/fonts/truetype/nanum/NanumGothic.ttf"


def _default_weights() -> dict[str, float]:
    return {
        "ocr": 0.2,
        "chart": 0.15,
        "table": 0.15,
        "doc": 0.1,
        "count": 0.1,
        "color": 0.1,
        "caption": 0.1,
        "video": 0.1,
    }


@dataclass(frozen=True)
class SynthConfig:
    """Settings of `generate_synthetic`. Defaults make the tiny preset's data."""

    n: int = 200
    """Number of records (one image or frame sequence and one question/answer each)."""
    seed: int = 0
    """Seed of every random choice; same seed and settings give byte-identical files."""
    image_size: int = 224
    """Side of the square images and video frames, in pixels (text scales with it; >= 96)."""
    val_fraction: float = 0.1
    """Share of records written to val.json, spread evenly over the record order (fixed split)."""
    ko_fraction: float = 0.5
    """Share of Korean records in every task (seed 000 phase 1 mixes 50% Korean / 50% English)."""
    num_frames: int = 8
    """Frames per synthetic video (seed 004 samples 8 frames)."""
    task_weights: dict[str, float] = field(default_factory=_default_weights)
    """Relative share of each scene kind in `TASKS`; missing kinds get 0."""
    font_path: str = DEFAULT_FONT
    """A TrueType font with Hangul glyphs (Debian package fonts-nanum)."""

    def __post_init__(self) -> None:
        if self.n < 1:
            raise SynthError(f"n={self.n}: the number of records must be at least 1.")
        if self.image_size < 96:
            raise SynthError(f"image_size={self.image_size}: use at least 96 so rendered text stays legible.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise SynthError(f"val_fraction={self.val_fraction}: use a value in [0, 1).")
        if not 0.0 <= self.ko_fraction <= 1.0:
            raise SynthError(f"ko_fraction={self.ko_fraction}: use a value in [0, 1].")
        if self.num_frames < 2:
            raise SynthError(f"num_frames={self.num_frames}: a video needs at least 2 frames.")
        for name, weight in self.task_weights.items():
            if name not in TASKS:
                raise SynthError(
                    f"task_weights has unknown task {name!r}{_suggest(name, TASKS)}; tasks are {TASKS}."
                )
            if weight < 0:
                raise SynthError(f"task_weights[{name!r}]={weight}: weights must be >= 0.")
        if sum(self.task_weights.values()) <= 0:
            raise SynthError("task_weights are all zero: give at least one task a positive weight.")

    @classmethod
    def from_options(cls, **options: object) -> SynthConfig:
        """Build a config from keyword options, naming the nearest field for a misspelt one."""
        names = [f.name for f in fields(cls)]
        for key in options:
            if key not in names:
                raise SynthError(f"unknown synth option {key!r}{_suggest(key, names)}; options are {names}.")
        return cls(**options)  # type: ignore[arg-type]


def _suggest(word: str, choices: object) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)  # type: ignore[arg-type]
    return f" (did you mean {close[0]!r}?)" if close else ""
