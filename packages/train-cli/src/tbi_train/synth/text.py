"""Text scenes: a sign with one or two words (OCR) and a small document with labelled fields."""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from tbi_train.synth import _vocab as vocab
from tbi_train.synth._fonts import FontBook
from tbi_train.synth._scene import Scene, dark_ink, light_background


def make_ocr(rng: random.Random, lang: str, size: int, fonts: FontBook) -> Scene:
    """A sign with a word in the record's language, or a Korean and an English word on two lines.

    The question asks for one word; the answer is that word exactly as drawn.
    """
    img = Image.new("RGB", (size, size), light_background(rng))
    draw = ImageDraw.Draw(img)
    margin = size // 10
    draw.rectangle(
        [margin // 2, size // 4, size - margin // 2, 3 * size // 4], outline=dark_ink(rng), width=2
    )
    ink = dark_ink(rng)
    word_ko, word_en = rng.choice(vocab.WORDS_KO), rng.choice(vocab.WORDS_EN)
    boxes: dict[str, list[int]] = {}
    if rng.random() < 0.6:
        word = word_ko if lang == "ko" else word_en
        font = fonts.fit(word, size - 3 * margin, size // 6)
        xy = (
            size // 2 + rng.randint(-margin // 2, margin // 2),
            size // 2 + rng.randint(-margin // 2, margin // 2),
        )
        draw.text(xy, word, fill=ink, font=font, anchor="mm")
        boxes[word] = list(draw.textbbox(xy, word, font=font, anchor="mm"))
        question = (
            "이미지에 적힌 단어는 무엇인가요?" if lang == "ko" else "What word is written in the image?"
        )
        caption = f'"{word}"라고 적힌 표지판입니다.' if lang == "ko" else f'A sign with the word "{word}".'
        return Scene(
            [img], "ocr", question, [word], caption, {"text": word, "boxes": boxes, "font_size": font.size}
        )
    for word, y in ((word_ko, size * 2 // 5), (word_en, size * 3 // 5)):
        font = fonts.fit(word, size - 3 * margin, size // 8)
        draw.text((size // 2, y), word, fill=ink, font=font, anchor="mm")
        boxes[word] = list(draw.textbbox((size // 2, y), word, font=font, anchor="mm"))
    ask_korean = rng.random() < 0.5
    word = word_ko if ask_korean else word_en
    if lang == "ko":
        question = f"이미지에 있는 {'한국어' if ask_korean else '영어'} 단어는 무엇인가요?"
        caption = f'표지판에 한국어 "{word_ko}", 영어 "{word_en}" 두 단어가 적혀 있습니다.'
    else:
        question = f"What is the {'Korean' if ask_korean else 'English'} word in the image?"
        caption = f'A sign with the words "{word_ko}" and "{word_en}".'
    meta = {"text": word, "boxes": boxes, "font_size": fonts.fit(word, size - 3 * margin, size // 8).size}
    return Scene([img], "ocr", question, [word], caption, meta)


def make_doc(rng: random.Random, lang: str, size: int, fonts: FontBook) -> Scene:
    """A page with a title and three `label: value` lines (name, date, total); one field is asked."""
    img = Image.new("RGB", (size, size), (250, 250, 245))
    draw = ImageDraw.Draw(img)
    k = 0 if lang == "ko" else 1
    title = rng.choice(vocab.DOC_TITLES)[k]
    person = rng.choice(vocab.PEOPLE)[k]
    date = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    total = str(rng.randint(10, 99) * 100)
    labels = ("이름", "날짜", "합계") if lang == "ko" else ("Name", "Date", "Total")
    values = (person, date, total)
    ink = dark_ink(rng)
    title_font = fonts.fit(title, size - 20, size // 9)
    draw.text((size // 2, size // 7), title, fill=ink, font=title_font, anchor="mm")
    draw.line([size // 10, size // 4, size - size // 10, size // 4], fill=ink, width=1)
    boxes = {title: list(draw.textbbox((size // 2, size // 7), title, font=title_font, anchor="mm"))}
    line_font = fonts.pil(max(10, size // 14))
    for row, (label, value) in enumerate(zip(labels, values)):
        y = size // 4 + (row + 1) * size // 6
        text = f"{label}: {value}"
        font = fonts.fit(text, size - size // 5, line_font.size)
        draw.text((size // 10, y), text, fill=ink, font=font, anchor="lm")
        boxes[text] = list(draw.textbbox((size // 10, y), text, font=font, anchor="lm"))
    field_index = rng.randrange(4)
    if lang == "ko":
        questions = (
            "문서의 제목은 무엇인가요?",
            "문서에 적힌 이름은 무엇인가요?",
            "문서의 날짜는 언제인가요?",
            "문서의 합계는 얼마인가요?",
        )
        caption = f"{person}의 {title}입니다."
    else:
        questions = (
            "What is the title of the document?",
            "What name is on the document?",
            "What is the date on the document?",
            "What is the total on the document?",
        )
        caption = f"A {title.lower()} for {person}."
    answer = (title, *values)[field_index]
    meta = {"title": title, "fields": dict(zip(labels, values)), "boxes": boxes}
    return Scene([img], "doc", questions[field_index], [answer], caption, meta)
