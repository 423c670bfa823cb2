"""Chart scenes: a bar chart of fruit sales or a line chart of monthly visitors, values printed on the marks."""

from __future__ import annotations

import random

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from tbi_train.synth import _vocab as vocab
from tbi_train.synth._fonts import FontBook
from tbi_train.synth._scene import Scene

BAR_COLOR = (31, 119, 180)
"""RGB of every bar; used by nothing else in a chart, so the bars can be found by colour."""


def make_chart(rng: random.Random, lang: str, size: int, fonts: FontBook) -> Scene:
    """A bar chart (60%) or a line chart (40%) of 3-6 integer values with a unique maximum.

    The question asks for one value (answer: the integer as printed) or for the label of the maximum.
    The y axis starts at 0, so bar heights are proportional to the values.
    """
    k = 0 if lang == "ko" else 1
    kind = "bar" if rng.random() < 0.6 else "line"
    if kind == "bar":
        labels = [pair[k] for pair in rng.sample(vocab.FRUITS, rng.randint(3, 5))]
        title = "과일 판매량" if lang == "ko" else "Fruit sales"
    else:
        labels = [pair[k] for pair in vocab.MONTHS[: rng.randint(4, 6)]]
        title = "월별 방문자" if lang == "ko" else "Monthly visitors"
    values = _distinct_max_values(rng, len(labels))
    img = _render(kind, labels, values, title, size, fonts)
    ask = rng.randrange(len(labels) + 1)
    if ask < len(labels):
        label, answer = labels[ask], str(values[ask])
        if lang == "ko":
            question = f"{label}의 값은 얼마인가요?"
        else:
            question = f"What is the value of {label}?" if kind == "bar" else f"What is the value in {label}?"
    else:
        answer = labels[int(np.argmax(values))]
        if lang == "ko":
            question = "값이 가장 큰 과일은 무엇인가요?" if kind == "bar" else "값이 가장 큰 달은 언제인가요?"
        else:
            question = (
                "Which fruit has the highest value?"
                if kind == "bar"
                else "Which month has the highest value?"
            )
    if lang == "ko":
        caption = (
            f"과일 {len(labels)}개의 판매량 막대 그래프입니다."
            if kind == "bar"
            else f"{labels[0]}부터 {labels[-1]}까지 방문자 수 꺾은선 그래프입니다."
        )
    else:
        caption = (
            f"A bar chart of sales of {len(labels)} fruits."
            if kind == "bar"
            else f"A line chart of visitors from {labels[0]} to {labels[-1]}."
        )
    meta = {"kind": kind, "labels": labels, "values": values, "title": title, "bar_color": list(BAR_COLOR)}
    return Scene([img], "chart", question, [answer], caption, meta)


def _distinct_max_values(rng: random.Random, count: int) -> list[int]:
    while True:
        values = [rng.randint(1, 20) for _ in range(count)]
        if values.count(max(values)) == 1:
            return values


def _render(
    kind: str, labels: list[str], values: list[int], title: str, size: int, fonts: FontBook
) -> Image.Image:
    """Draw with matplotlib's Agg canvas (no pyplot, so no global figure state) and return RGB pixels."""
    dpi = 100
    fig = Figure(figsize=(size / dpi, size / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.12, 0.16, 0.84, 0.72))
    small = fonts.mpl.copy()
    small.set_size(max(5.0, size / 32))
    big = fonts.mpl.copy()
    big.set_size(max(6.0, size / 26))
    x = np.arange(len(values))
    color = tuple(c / 255 for c in BAR_COLOR)
    if kind == "bar":
        ax.bar(x, values, width=0.6, color=color, antialiased=False)
    else:
        ax.plot(x, values, color=(0.85, 0.33, 0.1), marker="o", markersize=size / 64)
    for xi, v in zip(x, values):
        ax.text(xi, v + 0.4, str(v), ha="center", va="bottom", fontproperties=small)
    ax.set_ylim(0, max(values) * 1.3)
    ax.set_xlim(-0.6, len(values) - 0.4)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontproperties=small)
    ax.tick_params(axis="y", labelsize=small.get_size())
    ax.set_title(title, fontproperties=big)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return Image.fromarray(rgba[..., :3].copy())
