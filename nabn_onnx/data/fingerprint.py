"""``data_fingerprint``: a digest of what a data source holds, to tell one data set from another."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..errors import DataError
from .reading import DataLike

__all__ = ["data_fingerprint"]


#: files up to this size are digested whole; larger ones by size and their first and last block
_WHOLE_FILE_BYTES = 256 << 20
_BLOCK_BYTES = 1 << 20
#: an image is digested by its size and its first and last block of this many bytes
_IMAGE_BLOCK_BYTES = 64 << 10


def data_fingerprint(data: DataLike) -> str:
    """A digest of what ``data`` holds, to tell one data set from another (a resumed sweep's check).

    * an ``.npz`` (any file): its bytes; above 256 MiB its size and first and last MiB;
    * an image folder (path or :class:`~nabn_onnx.images.ImageFolder`): each image's path
      relative to the folder, size, first and last 64 KiB, and the preprocessing settings;
    * a dict of arrays or a sequence of batches: every array's name, dtype, shape and bytes;
    * a one-shot reader or iterator made re-readable by :func:`replayable`: the batches it
      gives, read once more from its spool.

    Contents, not names or times: a copy of the same data in another folder has the same
    fingerprint, and any changed byte (within the blocks read of a large file) a new one.
    """
    digest = hashlib.sha256()
    from .images import ImageFolder

    if isinstance(data, ImageFolder):
        settings = {k: getattr(data, k) for k in ("resize", "crop", "mean", "std", "layout")}
        digest.update(repr(sorted(settings.items())).encode())
        _digest_folder(digest, Path(data.root))
    elif isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if path.is_dir():
            _digest_folder(digest, path)
        else:
            _digest_file(digest, path)
    elif isinstance(data, Mapping):
        _digest_arrays(digest, data)
    elif isinstance(data, Iterable) and not hasattr(data, "get_next") and iter(data) is not data:
        for number, batch in enumerate(data):
            digest.update(f"batch {number}".encode())
            _digest_arrays(digest, batch if isinstance(batch, Mapping) else {"": batch})
    else:
        raise DataError(
            f"cannot fingerprint one-shot data of type {type(data).__name__}: make it re-readable first (replayable)"
        )
    return digest.hexdigest()[:16]


def _digest_file(digest, path: Path) -> None:
    if not path.is_file():
        raise DataError(f"data {path} is not a regular file (a FIFO or device); give an .npz file or an image folder")
    size = path.stat().st_size
    digest.update(f"file {size}".encode())
    with open(path, "rb") as fh:
        if size <= _WHOLE_FILE_BYTES:
            for block in iter(lambda: fh.read(_BLOCK_BYTES), b""):
                digest.update(block)
        else:
            digest.update(fh.read(_BLOCK_BYTES))
            fh.seek(size - _BLOCK_BYTES)
            digest.update(fh.read(_BLOCK_BYTES))


def _digest_folder(digest, root: Path) -> None:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(root).as_posix()} {size}".encode())
        with open(path, "rb") as fh:
            digest.update(fh.read(_IMAGE_BLOCK_BYTES))
            if size > 2 * _IMAGE_BLOCK_BYTES:
                fh.seek(size - _IMAGE_BLOCK_BYTES)
                digest.update(fh.read(_IMAGE_BLOCK_BYTES))


def _digest_arrays(digest, arrays: Mapping[str, Any]) -> None:
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name} {array.dtype.str} {array.shape}".encode())
        digest.update(array.tobytes())
