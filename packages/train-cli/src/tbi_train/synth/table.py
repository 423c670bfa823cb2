"""Table scenes: a grid of items with price and quantity; one cell is asked."""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from tbi_train.synth import _vocab as vocab
from tbi_train.synth._fonts import FontBook
from tbi_train.synth._scene import Scene, dark_ink


def make_table(rng: random.Random, lang: str, size: int, fonts: FontBook) -> Scene:
    """A header row (item, price, quantity) over 3-4 rows; the answer is one cell's text."""
    k = 0 if lang == "ko" else 1
    header = ["항목", "가격", "수량"] if lang == "ko" else ["Item", "Price", "Qty"]
    items = [pair[k] for pair in rng.sample(vocab.FRUITS, rng.randint(3, 4))]
    rows = [[item, str(rng.randint(1, 50) * 100), str(rng.randint(1, 20))] for item in items]
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    ink = dark_ink(rng)
    left, top = size // 16, size // 8
    col_w = [(size - 2 * left) * w // 10 for w in (4, 3, 3)]
    row_h = (size - 2 * top) // (len(rows) + 1)
    font = fonts.pil(max(9, size // 16))
    cells: dict[str, list[int]] = {}
    for r, row in enumerate([header, *rows]):
        y0 = top + r * row_h
        if r == 0:
            draw.rectangle([left, y0, size - left, y0 + row_h], fill=(225, 230, 240))
        x0 = left
        for c, text in enumerate(row):
            draw.rectangle([x0, y0, x0 + col_w[c], y0 + row_h], outline=ink, width=1)
            cell_font = fonts.fit(text, col_w[c] - 6, font.size)
            xy = (x0 + col_w[c] // 2, y0 + row_h // 2)
            draw.text(xy, text, fill=ink, font=cell_font, anchor="mm")
            cells[f"{r},{c}"] = [*draw.textbbox(xy, text, font=cell_font, anchor="mm"), cell_font.size]
            x0 += col_w[c]
    r = rng.randrange(len(rows))
    c = rng.choice((1, 2))
    item, answer = rows[r][0], rows[r][c]
    if lang == "ko":
        question = f"{item}의 {header[c]}은 얼마인가요?" if c == 1 else f"{item}의 {header[c]}은 몇 개인가요?"
        caption = f"과일 {len(rows)}개의 가격과 수량이 있는 표입니다."
    else:
        question = f"What is the price of {item}?" if c == 1 else f"What is the quantity of {item}?"
        caption = f"A table of prices and quantities of {len(rows)} fruits."
    meta = {"header": header, "rows": rows, "asked": [r + 1, c], "cells": cells}
    return Scene([img], "table", question, [answer], caption, meta)
