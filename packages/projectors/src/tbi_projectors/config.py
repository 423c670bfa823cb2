"""The typed configuration every projector shares, and the conversion to and from JSON."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import ProjectorError


@dataclass
class ProjectorConfig:
    """Fields every projector has. Subclasses add their own (with seed defaults) below these."""

    input_dim: int = 1024
    """Channels C of the vision features (seed 000/004: 1024 for CLIP-L / InternViT-300M)."""
    output_dim: int = 2048
    """Width D of the language model the tokens are fed to (seed 000 scale: 2048)."""
    seed: int = 0
    """Initialisation seed: the same seed and config give bit-identical initial weights."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        for name in ("input_dim", "output_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ProjectorError(f"{type(self).__name__}.{name} must be a positive int, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON values (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> ProjectorConfig:
        """Build the config from plain values, turning JSON lists back into tuples where the field is a tuple.

        Raises:
            ProjectorError: an unknown key (the message lists the valid ones).
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ProjectorError(
                f"{source}: unknown option(s) {unknown} for {cls.__name__}; valid options are {sorted(fields)}"
            )
        hints = typing.get_type_hints(cls)
        converted = {}
        for key, value in values.items():
            if isinstance(value, list) and "tuple" in str(hints.get(key, "")):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            converted[key] = value
        return cls(**converted)
