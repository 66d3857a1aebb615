"""Image folders as calibration and test data.

An ImageNet-layout folder holds one subfolder per class; the sorted subfolder names give
the label indices (``labels`` of each batch)::

    val/
      n01440764/  a.JPEG  b.JPEG ...     -> label 0
      n01443537/  ...                    -> label 1

A folder with images directly inside and no class subfolders gives unlabelled batches
(enough for calibration). Images are read one batch at a time, sorted by path.

Preprocessing, in order: convert to grayscale or RGB (the model's channel count), resize
so the shorter side is ``resize`` (bilinear), center-crop to ``crop``, scale to [0, 1],
then ``(x - mean) / std`` per channel, and lay out as NCHW or NHWC. Defaults follow the
model: ``crop`` is the model's fixed input size and ``resize`` the crop's longer side;
for torchvision's ImageNet models use ``resize=256, crop=224`` with
``mean=IMAGENET_MEAN, std=IMAGENET_STD``. Pillow is imported only when images are read
(``pip install nabn-onnx[images]``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import DataError, NabnError
from .feeds import Batch, InputSpec

__all__ = ["ImageFolder", "image_folder_batches", "IMAGE_EXTENSIONS", "IMAGENET_MEAN", "IMAGENET_STD"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""torchvision's ImageNet channel means (RGB, after scaling to [0, 1])."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""torchvision's ImageNet channel standard deviations (RGB, after scaling to [0, 1])."""
_LAYOUTS = ("NCHW", "NHWC")

Size = Union[int, Tuple[int, int]]


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise NabnError("reading image folders needs Pillow: pip install nabn-onnx[images]") from None
    return Image


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _pair(size: Size, what: str) -> Tuple[int, int]:
    pair = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(pair) != 2 or any(int(s) < 1 for s in pair):
        raise DataError(f"{what} must be a positive size or (height, width), got {size!r}")
    return int(pair[0]), int(pair[1])


@dataclass(frozen=True)
class ImageFolder:
    """An image folder with its preprocessing; pass it wherever data is taken.

    Attributes:
        root: the folder (class subfolders, or images directly inside).
        resize: shorter side after resizing (None: the crop's longer side).
        crop: center crop, ``int`` or ``(height, width)`` (None: the model's input size).
        mean: per-channel mean subtracted after scaling to [0, 1] (one value or one per channel).
        std: per-channel divisor (one value or one per channel).
        layout: ``"NCHW"`` or ``"NHWC"`` (None: guessed from the model's input shape).
    """

    root: Union[str, os.PathLike]
    resize: Optional[int] = None
    crop: Optional[Size] = None
    mean: Sequence[float] = (0.0,)
    std: Sequence[float] = (1.0,)
    layout: Optional[str] = None

    def __post_init__(self):
        for name in ("mean", "std"):  # "one value" may be given as a bare number
            value = getattr(self, name)
            if isinstance(value, (int, float, np.number)):
                object.__setattr__(self, name, (float(value),))
        if self.layout is not None and self.layout.upper() not in _LAYOUTS:
            raise DataError(f"layout must be NCHW or NHWC, got {self.layout!r}")
        if self.resize is not None and self.resize < 1:
            raise DataError(f"resize must be a positive size, got {self.resize}")
        if any(s == 0 for s in self.std):
            raise DataError("std must not contain 0")

    def files(self) -> Tuple[List[Path], Optional[List[int]], List[str]]:
        """``(image paths, labels or None, class names)`` in reading order."""
        root = Path(self.root)
        if not root.is_dir():
            raise DataError(f"image folder not found: {root}")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if classes:
            paths, labels = [], []
            for index, name in enumerate(classes):
                found = sorted(p for p in (root / name).rglob("*") if _is_image(p))
                paths += found
                labels += [index] * len(found)
            if not paths:
                raise DataError(
                    f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in its {len(classes)} class folder(s)"
                )
            return paths, labels, classes
        paths = sorted(p for p in root.iterdir() if _is_image(p))
        if not paths:
            raise DataError(f"{root}: no class subfolders and no images ({', '.join(IMAGE_EXTENSIONS)})")
        return paths, None, []

    def _geometry(self, spec: InputSpec) -> Tuple[str, int, Tuple[int, int]]:
        if len(spec.shape) != 4:
            raise DataError(f"input '{spec.name}' has rank {len(spec.shape)}; image folders feed rank-4 image inputs")
        layout = self.layout.upper() if self.layout else None
        if layout is None:
            layout = "NHWC" if spec.shape[3] in (1, 3) and spec.shape[1] not in (1, 3) else "NCHW"
        channels = spec.shape[1] if layout == "NCHW" else spec.shape[3]
        if channels not in (1, 3):
            raise DataError(f"input '{spec.name}' has {channels} channels in {layout}; images give 1 (gray) or 3 (RGB)")
        height, width = spec.shape[2:4] if layout == "NCHW" else spec.shape[1:3]
        if self.crop is not None:
            crop = _pair(self.crop, "crop")
        elif height and width:
            crop = (height, width)
        else:
            raise DataError(f"input '{spec.name}' has no fixed height and width: give the crop size")
        if height and width and crop != (height, width):
            raise DataError(f"crop {crop} does not match the model's input size {(height, width)}")
        return layout, channels, crop

    def _load(self, path: Path, channels: int, crop: Tuple[int, int]) -> np.ndarray:
        image_module = _pillow()
        try:
            with image_module.open(path) as image:
                image = image.convert("L" if channels == 1 else "RGB")
                short = self.resize or max(crop)
                scale = short / min(image.size)
                size = (max(crop[1], round(image.size[0] * scale)), max(crop[0], round(image.size[1] * scale)))
                image = image.resize(size, image_module.BILINEAR)
                left, top = (size[0] - crop[1]) // 2, (size[1] - crop[0]) // 2
                image = image.crop((left, top, left + crop[1], top + crop[0]))
                array = np.asarray(image, dtype=np.float32) / 255.0
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None
        return array.reshape(crop[0], crop[1], channels)

    def _normalizer(self, channels: int) -> Tuple[np.ndarray, np.ndarray]:
        out = []
        for name, given in (("mean", self.mean), ("std", self.std)):
            values = np.asarray(given, dtype=np.float32).reshape(-1)
            if values.size not in (1, channels):
                raise DataError(f"{name} has {values.size} values; the model's images have {channels} channel(s)")
            out.append(np.broadcast_to(values, (channels,)))
        return out[0], out[1]

    def batches(self, specs: Sequence[InputSpec], batch_size: int) -> Iterator[Batch]:
        """Preprocessed batches for a one-input image model."""
        if len(specs) != 1:
            raise DataError(f"image folders feed one-input models; this one has {len(specs)} inputs")
        spec = specs[0]
        if spec.dtype.kind != "f":
            raise DataError(f"input '{spec.name}' is {spec.dtype}; image folders feed float inputs")
        layout, channels, crop = self._geometry(spec)
        mean, std = self._normalizer(channels)
        paths, labels, classes = self.files()
        logger.info("%s: %d image(s) in %d class(es), %s crop %s", self.root, len(paths), len(classes), layout, crop)
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            array = (np.stack([self._load(p, channels, crop) for p in chunk]) - mean) / std
            if layout == "NCHW":
                array = array.transpose(0, 3, 1, 2)
            feeds = {spec.name: np.ascontiguousarray(array, dtype=spec.dtype)}
            batch_labels = None if labels is None else np.asarray(labels[start : start + batch_size], dtype=np.int64)
            yield Batch(feeds, batch_labels)


def image_folder_batches(
    folder: Union[str, os.PathLike], specs: Sequence[InputSpec], batch_size: int, **options
) -> Iterator[Batch]:
    """Batches from an image folder; ``options`` are :class:`ImageFolder`'s (resize, crop, mean, std, layout)."""
    return ImageFolder(folder, **options).batches(specs, batch_size)
