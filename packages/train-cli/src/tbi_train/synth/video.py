"""Video scenes: a coloured shape crossing the frame in one direction over N frames."""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from tbi_train.synth import _vocab as vocab
from tbi_train.synth._scene import Scene
from tbi_train.synth.shapes import draw_shape

_DIRECTIONS = {
    "right": ("왼쪽에서 오른쪽으로", "from left to right"),
    "left": ("오른쪽에서 왼쪽으로", "from right to left"),
    "down": ("위에서 아래로", "from top to bottom"),
    "up": ("아래에서 위로", "from bottom to top"),
}


def make_video(rng: random.Random, lang: str, size: int, num_frames: int) -> Scene:
    """`num_frames` frames of one shape moving linearly; asks for a caption (60%) or the shape's colour.

    Korean captions follow seed 004 (Korean video captioning). Frame t has the shape centre at
    start + t / (num_frames - 1) * (end - start) along the motion axis.
    """
    (s_ko, s_en), (c_ko, c_en, rgb) = rng.choice(vocab.SHAPES), rng.choice(vocab.COLORS)
    direction = rng.choice(sorted(_DIRECTIONS))
    r = size // 8
    lo, hi = r + 4, size - r - 4
    across = rng.randint(lo, hi)
    start, end = (lo, hi) if direction in ("right", "down") else (hi, lo)
    frames, centres = [], []
    for t in range(num_frames):
        along = round(start + t * (end - start) / (num_frames - 1))
        cx, cy = (along, across) if direction in ("right", "left") else (across, along)
        img = Image.new("RGB", (size, size), (245, 245, 245))
        draw_shape(ImageDraw.Draw(img), s_en, cx, cy, r, rgb)
        frames.append(img)
        centres.append([cx, cy])
    ko_dir, en_dir = _DIRECTIONS[direction]
    if lang == "ko":
        caption = f"{c_ko} {s_ko}이 {ko_dir} 움직입니다."
        color_q, color_a = f"움직이는 {s_ko}은 무슨 색인가요?", c_ko
    else:
        caption = f"A {c_en} {s_en} moves {en_dir}."
        color_q, color_a = f"What color is the moving {s_en}?", c_en
    meta = {"direction": direction, "shape": s_en, "color": c_en, "color_rgb": list(rgb), "centres": centres}
    if rng.random() < 0.6:
        question = (
            "영상을 한 문장으로 설명해 주세요." if lang == "ko" else "Describe the video in one sentence."
        )
        return Scene(frames, "caption", question, [caption], caption, meta)
    return Scene(frames, "color", color_q, [color_a], caption, meta)
