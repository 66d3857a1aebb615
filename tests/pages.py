"""Rendered pages with known ground truth, for the real third-party networks (DBNet text
detection, PicoDet layout detection): tests/test_real_networks.py renders a few with fixed
seeds, ``python -m tools.samples.make_real_models`` renders the cache's data sets with the
same functions. Fonts: DejaVu when installed, else Pillow's default font.

Imported as ``tests.pages`` (by the tests and by the script alike).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

#: Where ``python -m tools.samples.make_real_models`` builds the real networks and their data.
DEFAULT_CACHE = Path(os.environ.get("NABN_REAL_CACHE", Path.home() / ".cache" / "nabn-onnx" / "real"))
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
DBNET_SIZE = 320
LAYOUT_H, LAYOUT_W = 800, 608
LAYOUT_CLASSES = (
    "text",
    "title",
    "figure",
    "figure_caption",
    "table",
    "table_caption",
    "header",
    "footer",
    "reference",
    "equation",
)
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONT_FILES = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansCondensed.ttf", "DejaVuSerifCondensed.ttf")
BOLD_FONTS = ("DejaVuSans-Bold.ttf", "DejaVuSerif-Bold.ttf")
WORDS = [
    "analog",
    "memory",
    "noise",
    "weight",
    "layer",
    "batch",
    "normalization",
    "device",
    "chip",
    "accuracy",
    "network",
    "model",
    "calibration",
    "variance",
    "mean",
    "channel",
    "signal",
    "conductance",
    "array",
    "crossbar",
    "inference",
    "training",
    "data",
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "on",
    "with",
    "as",
    "by",
    "that",
    "from",
    "this",
    "are",
    "we",
    "our",
    "results",
    "table",
    "figure",
    "section",
    "method",
    "error",
    "robust",
    "energy",
    "power",
    "efficient",
    "hardware",
    "computing",
    "neural",
    "deep",
    "learning",
]


def fonts(bold: bool = False) -> List[Path]:
    return [FONT_DIR / f for f in (BOLD_FONTS if bold else FONT_FILES) if (FONT_DIR / f).is_file()]


def font(rng: np.random.Generator, size: int, bold: bool = False) -> ImageFont.ImageFont:
    found = fonts(bold)
    if not found:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(str(found[int(rng.integers(len(found)))]), size)


def words(rng: np.random.Generator, count: int, capital: bool = True) -> str:
    text = " ".join(rng.choice(WORDS, size=count))
    return text[0].upper() + text[1:] if capital else text


# DBNet trains on text boxes shrunk by D = area (1 - r^2) / perimeter with r = 0.4; PP-OCR's
# training boxes enclose the text loosely, our boxes are the tight ink boxes, so the same
# rule with r = 0.4 leaves half the predicted text outside. r = 0.62 maximizes the clean
# model's text IoU on 8 pages (0.55: 0.74, 0.62: 0.81, 0.70: 0.78); tables compare noisy
# and calibrated against clean, so the choice shifts all rows alike.
DB_SHRINK = 0.62


def shrink(box: Sequence[float], ratio: float = DB_SHRINK) -> Tuple[float, float, float, float]:
    """DBNet's shrunk text region: the box moved inwards by ``area * (1 - r^2) / perimeter``."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    d = w * h * (1 - ratio**2) / (2 * (w + h))
    return x1 + d, y1 + d, x2 - d, y2 - d


def render_dbnet_page(rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """One 320x320 page of text lines: the preprocessed input (3, H, W) and the shrunk text mask (H, W)."""
    size = DBNET_SIZE
    background = int(rng.integers(200, 256))
    image = Image.new("L", (size, size), background)
    draw = ImageDraw.Draw(image)
    mask = np.zeros((size, size), dtype=np.uint8)
    y = int(rng.integers(4, 30))
    while True:
        height = int(rng.integers(14, 34))
        f = font(rng, height)
        text = words(rng, int(rng.integers(1, 6)))
        x = int(rng.integers(4, 60))
        left, top, right, bottom = draw.textbbox((x, y), text, font=f)
        if bottom > size - 4:
            break
        if right < size - 4:
            draw.text((x, y), text, font=f, fill=int(rng.integers(0, 90)))
            x1, y1, x2, y2 = (round(v) for v in shrink((left, top, right, bottom)))
            mask[max(y1, 0) : y2, max(x1, 0) : x2] = 1
        y = bottom + int(rng.integers(6, 40))
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.8))))
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return ((array - 0.5) / 0.5).transpose(2, 0, 1).astype(np.float32), mask


def paragraph(draw, rng, x, y, width, size, lines) -> Tuple[int, int, int, int]:
    """Justified-looking lines of words from (x, y) within ``width``; returns the ink box."""
    f = font(rng, size)
    boxes = []
    for i in range(lines):
        text = ""
        while True:
            candidate = (text + " " + str(rng.choice(WORDS))).strip()
            if draw.textlength(candidate, font=f) > width:
                break
            text = candidate
        if i == lines - 1 and lines > 1:
            text = " ".join(text.split()[: max(1, len(text.split()) // 2)])
        draw.text((x, y), text, font=f, fill=int(rng.integers(0, 60)))
        boxes.append(draw.textbbox((x, y), text, font=f))
        y += int(size * 1.5)
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def figure(draw, rng, box) -> None:
    """A plot-like figure: frame, axes, a few curves or bars."""
    x1, y1, x2, y2 = box
    draw.rectangle(box, outline=0, width=2)
    ax, ay = x1 + 25, y2 - 20
    draw.line((ax, y1 + 10, ax, ay), fill=0, width=2)
    draw.line((ax, ay, x2 - 10, ay), fill=0, width=2)
    if rng.random() < 0.5:
        count = int(rng.integers(4, 10))
        step = (x2 - 10 - ax) / count
        for i in range(count):
            top = int(rng.uniform(y1 + 15, ay - 5))
            color = tuple(int(c) for c in rng.integers(0, 200, 3))
            draw.rectangle((ax + i * step + 3, top, ax + (i + 1) * step - 3, ay), fill=color)
    else:
        for _ in range(int(rng.integers(1, 4))):
            xs = np.linspace(ax, x2 - 10, 30)
            ys = ay - (ay - y1 - 15) * (0.5 + 0.4 * np.sin(xs / rng.uniform(10, 60) + rng.uniform(0, 6)))
            color = tuple(int(c) for c in rng.integers(0, 200, 3))
            draw.line(list(zip(xs.tolist(), ys.tolist())), fill=color, width=2)


def table(draw, rng, box) -> None:
    """A ruled table with short words and numbers in its cells."""
    x1, y1, x2, y2 = box
    rows, cols = int(rng.integers(3, 8)), int(rng.integers(3, 6))
    f = font(rng, 11)
    draw.rectangle(box, outline=0, width=1)
    for r in range(1, rows):
        y = y1 + (y2 - y1) * r / rows
        draw.line((x1, y, x2, y), fill=0, width=1)
    for c in range(1, cols):
        x = x1 + (x2 - x1) * c / cols
        draw.line((x, y1, x, y2), fill=0, width=1)
    for r in range(rows):
        for c in range(cols):
            text = str(rng.choice(WORDS)) if r == 0 or c == 0 else f"{rng.uniform(0, 100):.1f}"
            draw.text((x1 + (x2 - x1) * c / cols + 4, y1 + (y2 - y1) * r / rows + 3), text, font=f, fill=0)


def render_layout_page(rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """One 608x800 page: input (3, 800, 608) and boxes (K, 5) = (class, x1, y1, x2, y2)."""
    image = Image.new("RGB", (LAYOUT_W, LAYOUT_H), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    boxes = []
    margin = int(rng.integers(40, 70))
    width = LAYOUT_W - 2 * margin
    if rng.random() < 0.7:
        hb = paragraph(draw, rng, margin, 18, width * 0.6, 10, 1)
        boxes.append((LAYOUT_CLASSES.index("header"), *hb))
    y = 60
    if rng.random() < 0.8:
        f = font(rng, int(rng.integers(20, 28)), bold=True)
        text = words(rng, int(rng.integers(2, 6)))
        draw.text((margin, y), text, font=f, fill=0)
        boxes.append((LAYOUT_CLASSES.index("title"), *draw.textbbox((margin, y), text, font=f)))
        y = boxes[-1][4] + 22
    while y < LAYOUT_H - 140:
        kind = rng.choice(["text", "text", "figure", "table"])
        if kind == "text":
            size = int(rng.integers(11, 15))
            lines = int(rng.integers(2, 8))
            if y + lines * size * 1.5 > LAYOUT_H - 70:
                break
            b = paragraph(draw, rng, margin, y, width, size, lines)
            boxes.append((0, *b))
            y = b[3] + int(rng.integers(16, 30))
        else:
            height = int(rng.integers(120, 260))
            if y + height + 40 > LAYOUT_H - 70:
                break
            fw = int(width * rng.uniform(0.6, 1.0))
            fx = margin + (width - fw) // 2
            box = (fx, y, fx + fw, y + height)
            caption_above = kind == "table"
            if caption_above:
                cb = paragraph(draw, rng, fx, y, fw, 11, 1)
                boxes.append((LAYOUT_CLASSES.index("table_caption"), *cb))
                box = (fx, cb[3] + 8, fx + fw, cb[3] + 8 + height)
            (table if kind == "table" else figure)(draw, rng, box)
            boxes.append((LAYOUT_CLASSES.index(kind), *box))
            y = box[3] + 8
            if not caption_above:
                cb = paragraph(draw, rng, fx, y, fw, 11, 1)
                boxes.append((LAYOUT_CLASSES.index("figure_caption"), *cb))
                y = cb[3]
            y += int(rng.integers(18, 30))
    if rng.random() < 0.7:
        fb = paragraph(draw, rng, LAYOUT_W // 2 - 20, LAYOUT_H - 35, 60, 10, 1)
        boxes.append((LAYOUT_CLASSES.index("footer"), *fb))
    array = np.asarray(image, dtype=np.float32) / 255.0
    x = ((array - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).astype(np.float32)
    return x, np.array(boxes, dtype=np.float32)
