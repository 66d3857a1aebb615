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

Limits, checked from each image's header before it is decoded (a 141-byte PNG can say
1x20000, and resizing it to a 224 short side would make a 224x4480000 image), so that one
image costs at most about 128 MiB decoded (an 8192x4096 RGB PNG: under 1 s, and 210 to
240 MB peak for the whole process) and a bad one is refused in one line naming the file:

* aspect ratio at most 16:1 against the crop's own proportions (``_MAX_ASPECT``): beyond it
  the center crop keeps less than a sixteenth of the picture;
* decoded pixels at most 2**25 (33.5 million, e.g. 8192x4096), or 64 times the crop's area
  when that is larger (``_MAX_PIXELS``, ``_PIXELS_PER_CROP``); a larger JPEG is decoded at
  1/2, 1/4 or 1/8 scale (Pillow's ``draft``, still at least the resized size) and refused
  only if that is still too large. The resized image is held to the same bound. Pillow's
  own decompression-bomb limit (``Image.MAX_IMAGE_PIXELS`` twice over) still applies.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import DataError, NabnError
from .feeds import LABELS_KEY, Batch, InputSpec, load_arrays, save_batch

__all__ = [
    "ImageFolder",
    "DecodedFolder",
    "decoded_once",
    "image_folder_batches",
    "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""torchvision's ImageNet channel means (RGB, after scaling to [0, 1])."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""torchvision's ImageNet channel standard deviations (RGB, after scaling to [0, 1])."""
_LAYOUTS = ("NCHW", "NHWC")
#: longest side over shortest, relative to the crop's proportions, beyond which an image is refused
_MAX_ASPECT = 16
#: decoded pixels allowed per image: this many, or _PIXELS_PER_CROP times the crop's area if more
_MAX_PIXELS = 1 << 25
_PIXELS_PER_CROP = 64
#: threads that decode one batch's images (at most one per core)
_DECODE_THREADS = 4

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
        return self._finish(path, self._open(path, crop), channels, crop)

    def _open(self, path: Path, crop: Tuple[int, int]):
        """``(image, size)``: the header read and checked (the decode is set up, not run)."""
        image_module = _pillow()
        try:
            with warnings.catch_warnings():  # the bound below is tighter than Pillow's warning
                warnings.simplefilter("ignore", image_module.DecompressionBombWarning)
                image = image_module.open(path)  # reads the header only
            try:
                return image, self._resized_size(path, image, crop)
            except BaseException:
                image.close()
                raise
        except (OSError, ValueError, image_module.DecompressionBombError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None

    def _finish(self, path: Path, opened, channels: int, crop: Tuple[int, int]) -> np.ndarray:
        """Decode, convert, resize, crop and scale an image :meth:`_open` opened (thread-safe: no warnings state)."""
        image_module = _pillow()
        image, size = opened
        try:
            with image:
                mode = "L" if channels == 1 else "RGB"
                if image.mode != mode:  # converting to its own mode would copy it
                    image = image.convert(mode)
                image = image.resize(size, image_module.BILINEAR)
                left, top = (size[0] - crop[1]) // 2, (size[1] - crop[0]) // 2
                image = image.crop((left, top, left + crop[1], top + crop[0]))
                array = np.asarray(image, dtype=np.float32) / 255.0
        except (OSError, ValueError, image_module.DecompressionBombError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None
        return array.reshape(crop[0], crop[1], channels)

    def _load_all(self, paths: Sequence[Path], channels: int, crop: Tuple[int, int]) -> List[np.ndarray]:
        """The images of one batch, in order: headers read here, decoding on up to :data:`_DECODE_THREADS` threads.

        Pillow releases the GIL while it decodes and resizes, so two cores decode a batch of
        JPEGs about twice as fast. The first image that cannot be read is the error, as read
        one by one; images after it are not decoded.
        """
        threads = min(_DECODE_THREADS, os.cpu_count() or 1, len(paths))
        if threads < 2:
            return [self._load(p, channels, crop) for p in paths]
        from concurrent.futures import ThreadPoolExecutor

        out: List[np.ndarray] = []
        with ThreadPoolExecutor(threads) as pool:
            pending = []
            try:
                for path in paths:
                    pending.append(pool.submit(self._finish, path, self._open(path, crop), channels, crop))
                for future in pending:
                    out.append(future.result())
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
        return out

    def _resized_size(self, path: Path, image, crop: Tuple[int, int]) -> Tuple[int, int]:
        """The (width, height) to resize to, after refusing, from the header, an image too thin or too large.

        A JPEG above the pixel bound is set to decode at a reduced scale (``draft``) first.
        """
        width, height = image.size
        if min(width, height) < 1:
            raise DataError(f"image {path} is {width}x{height}: it has no pixels")
        ratio = (width / height) / (crop[1] / crop[0])
        if max(ratio, 1 / ratio) > _MAX_ASPECT:
            raise DataError(
                f"image {path} is {width}x{height}: its proportions are {max(ratio, 1 / ratio):.0f} times those "
                f"of the {crop[1]}x{crop[0]} crop, beyond the {_MAX_ASPECT} that resize and center crop allow"
            )
        limit = max(_MAX_PIXELS, _PIXELS_PER_CROP * crop[0] * crop[1])
        if width * height > limit:
            image.draft(None, self._scaled(image.size, crop))  # JPEG only; others are left as they are
            drafted = image.size
            if drafted[0] * drafted[1] > limit:
                smaller = f" (still {drafted[0]}x{drafted[1]} at reduced scale)" if drafted != (width, height) else ""
                raise DataError(
                    f"image {path} is {width}x{height} ({width * height} pixels){smaller}, above the {limit} pixels "
                    f"an image may decode to for a {crop[1]}x{crop[0]} crop"
                )
            width, height = image.size
        size = self._scaled((width, height), crop)
        if size[0] * size[1] > limit:
            raise DataError(
                f"image {path} would be resized to {size[0]}x{size[1]}, above the {limit} pixels allowed for a "
                f"{crop[1]}x{crop[0]} crop; give a smaller resize"
            )
        return size

    def _scaled(self, size: Tuple[int, int], crop: Tuple[int, int]) -> Tuple[int, int]:
        """(width, height) of an image of ``size`` once its shorter side is resized (never below the crop)."""
        short = self.resize or max(crop)
        scale = short / min(size)
        return max(crop[1], round(size[0] * scale)), max(crop[0], round(size[1] * scale))

    def _normalizer(self, channels: int) -> Tuple[np.ndarray, np.ndarray]:
        out = []
        for name, given in (("mean", self.mean), ("std", self.std)):
            values = np.asarray(given, dtype=np.float32).reshape(-1)
            if values.size not in (1, channels):
                raise DataError(f"{name} has {values.size} values; the model's images have {channels} channel(s)")
            out.append(np.broadcast_to(values, (channels,)))
        return out[0], out[1]

    def batches(self, specs: Sequence[InputSpec], batch_size: int, skip: int = 0) -> Iterator[Batch]:
        """Preprocessed batches for a one-input image model (the first ``skip`` batches left out, not decoded)."""
        if len(specs) != 1:
            raise DataError(f"image folders feed one-input models; this one has {len(specs)} inputs")
        spec = specs[0]
        if spec.dtype.kind != "f":
            raise DataError(f"input '{spec.name}' is {spec.dtype}; image folders feed float inputs")
        layout, channels, crop = self._geometry(spec)
        mean, std = self._normalizer(channels)
        paths, labels, classes = self.files()
        if not skip:
            logger.info(
                "%s: %d image(s) in %d class(es), %s crop %s", self.root, len(paths), len(classes), layout, crop
            )
        for start in range(skip * batch_size, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            array = (np.stack(self._load_all(chunk, channels, crop)) - mean) / std
            if layout == "NCHW":
                array = array.transpose(0, 3, 1, 2)
            feeds = {spec.name: np.ascontiguousarray(array, dtype=spec.dtype)}
            batch_labels = None if labels is None else np.asarray(labels[start : start + batch_size], dtype=np.int64)
            yield Batch(feeds, batch_labels)


class DecodedFolder:
    """An image folder decoded once per batching: later passes read the preprocessed batches back from disk.

    A calibration reads its data up to seven times (clean statistics, clean and noisy
    training-mode passes, ``auto``'s scoring), and decoding, resizing and normalizing
    images costs more than the network's own pass over them (MobileNet-v2, 256 JPEGs of
    500x375, two cores: about 1.5 s a pass). The first pass of each batching (input specs,
    batch size) writes every batch it yields to a temporary folder (``nabn-spool-``, named
    after this process: :mod:`nabn_onnx.tempfiles`) in the spools' file form
    (:func:`~nabn_onnx.data.feeds.save_batch`); later passes load them, and a pass that
    wants more batches than were written decodes the rest. Memory stays at one batch; the
    disk holds the decoded data (4 bytes a value) until :meth:`close`, the object's
    deletion or the process's end. When the folder cannot be written (a full disk), the
    batches are decoded every pass, as without this wrapper.

    Attributes:
        folder: the :class:`ImageFolder` read.
    """

    def __init__(self, folder: ImageFolder):
        self.folder = folder
        self._spool: Optional[str] = None
        self._written: dict = {}  # batching key -> [batches written, every batch written]
        self._broken = False

    def batches(self, specs: Sequence[InputSpec], batch_size: int) -> Iterator[Batch]:
        """The folder's batches (as :meth:`ImageFolder.batches`), decoded at most once."""
        key = (tuple((s.name, tuple(s.shape), str(s.dtype)) for s in specs), batch_size)
        state = self._written.setdefault(key, [0, False])
        tag = f"b{list(self._written).index(key)}"
        for index in range(state[0]):
            yield self._load(tag, index)
        if state[1]:
            return
        for batch in self.folder.batches(specs, batch_size, skip=state[0]):
            if self._save(tag, state[0], batch):
                state[0] += 1
            yield batch
        if not self._broken:
            state[1] = True

    def _save(self, tag: str, index: int, batch: Batch) -> bool:
        if self._broken:
            return False
        try:
            if self._spool is None:
                from ..tempfiles import owned_temp_folder

                self._spool = owned_temp_folder("nabn-spool-")
            save_batch(os.path.join(self._spool, f"{tag}.{index}.npz"), batch)
        except OSError as exc:  # a full or read-only disk: decode every pass instead
            logger.info("decoded images are not kept between passes (%s): they are decoded every pass", exc)
            self._broken = True
            self.close()
            return False
        return True

    def _load(self, tag: str, index: int) -> Batch:
        arrays = load_arrays(os.path.join(self._spool or "", f"{tag}.{index}.npz"))
        labels = arrays.pop(LABELS_KEY, None)
        return Batch(arrays, labels)

    def close(self) -> None:
        """Remove the decoded batches (later passes decode again)."""
        if self._spool is not None:
            shutil.rmtree(self._spool, ignore_errors=True)
            self._spool = None
            for state in self._written.values():
                state[:] = [0, False]

    def __del__(self):
        self.close()


def decoded_once(data: object) -> object:
    """``data`` in a :class:`DecodedFolder` if it is an image folder (a path or an :class:`ImageFolder`), else as is."""
    if isinstance(data, (str, os.PathLike)) and Path(data).is_dir():
        data = ImageFolder(data)
    return DecodedFolder(data) if isinstance(data, ImageFolder) else data


def image_folder_batches(
    folder: Union[str, os.PathLike], specs: Sequence[InputSpec], batch_size: int, **options
) -> Iterator[Batch]:
    """Batches from an image folder; ``options`` are :class:`ImageFolder`'s (resize, crop, mean, std, layout)."""
    return ImageFolder(folder, **options).batches(specs, batch_size)
