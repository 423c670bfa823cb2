"""Shape scenes: count the shapes of one kind, or name the colour of a shape; also the video frames' shapes."""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from tbi_train.synth import _vocab as vocab
from tbi_train.synth._scene import Scene


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, r: int, fill: tuple[int, int, int]
) -> None:
    """Draw a filled circle, square or triangle of half-size `r` centred at (cx, cy); the centre is inside."""
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)


def make_count(rng: random.Random, lang: str, size: int) -> Scene:
    """1-6 shapes of one kind and colour, plus 0-2 distractors of another kind and colour, one per grid cell.

    Shapes sit in distinct cells of a 3x3 grid, so they never touch; the answer is the target count.
    """
    k = 0 if lang == "ko" else 1
    (s_ko, s_en), (_, d_en) = rng.sample(vocab.SHAPES, 2)
    (c_ko, c_en, rgb), (_, _, d_rgb) = rng.sample(vocab.COLORS, 2)
    count, distractors = rng.randint(1, 6), rng.randint(0, 2)
    cell = size // 3
    slots = rng.sample(range(9), count + distractors)
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    centres = []
    r = cell // 3
    for j, slot in enumerate(slots):
        cx = (slot % 3) * cell + cell // 2 + rng.randint(-cell // 8, cell // 8)
        cy = (slot // 3) * cell + cell // 2 + rng.randint(-cell // 8, cell // 8)
        target = j < count
        draw_shape(draw, s_en if target else d_en, cx, cy, r, rgb if target else d_rgb)
        if target:
            centres.append([cx, cy])
    if lang == "ko":
        question = f"이미지에 {s_ko}이 몇 개 있나요?"
        answers = [str(count), f"{count}개", vocab.COUNT_WORDS_KO[count - 1]]
        caption = f"흰 배경에 {c_ko} {s_ko} {count}개가 있습니다."
    else:
        question = f"How many {s_en}s are there in the image?"
        answers = [str(count), vocab.COUNT_WORDS_EN[count - 1]]
        caption = f"{count} {c_en} {s_en}{'s' if count > 1 else ''} on a white background."
    meta = {"shape": (s_ko, s_en)[k], "count": count, "color_rgb": list(rgb), "centres": centres}
    return Scene([img], "count", question, answers, caption, meta)


def make_color(rng: random.Random, lang: str, size: int) -> Scene:
    """One large shape of a named colour on a pale grey background; the answer is the colour name."""
    (s_ko, s_en), (c_ko, c_en, rgb) = rng.choice(vocab.SHAPES), rng.choice(vocab.COLORS)
    img = Image.new("RGB", (size, size), (240, 240, 240))
    draw = ImageDraw.Draw(img)
    r = size // 4 + rng.randint(-size // 16, size // 16)
    cx = size // 2 + rng.randint(-size // 10, size // 10)
    cy = size // 2 + rng.randint(-size // 10, size // 10)
    draw_shape(draw, s_en, cx, cy, r, rgb)
    if lang == "ko":
        question, answer, caption = f"{s_ko}은 무슨 색인가요?", c_ko, f"회색 배경에 {c_ko} {s_ko}이 있습니다."
    else:
        question, answer, caption = (
            f"What color is the {s_en}?",
            c_en,
            f"A {c_en} {s_en} on a gray background.",
        )
    meta = {"shape": s_en, "color": c_en, "color_rgb": list(rgb), "centre": [cx, cy]}
    return Scene([img], "color", question, [answer], caption, meta)
