"""What one synthetic scene is: its pictures, one question with gold answers, a caption, its ground truth."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image


@dataclass
class Scene:
    """One generated sample before it is written.

    `images` holds one picture, or the frames of a video in time order. `answers[0]` is the reply
    the assistant turn says; the rest are accepted variants for scoring. `meta` keeps the ground
    truth the picture was drawn from (values, boxes, colours) so tests can read the answer back.
    """

    images: list[Image.Image]
    task: str
    question: str
    answers: list[str]
    caption: str
    meta: dict[str, object] = field(default_factory=dict)


def light_background(rng) -> tuple[int, int, int]:
    """A pale colour that dark text and saturated shapes stand out on."""
    return (rng.randint(225, 255), rng.randint(225, 255), rng.randint(225, 255))


def dark_ink(rng) -> tuple[int, int, int]:
    """A dark text colour."""
    return (rng.randint(0, 60), rng.randint(0, 60), rng.randint(0, 80))
