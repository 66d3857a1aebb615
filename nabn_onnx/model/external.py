"""External data: checking every tensor's claim on the files beside the model, then reading them.

A model saved with external data names, for each large tensor, a file in the model's folder
and a byte range in it (``location``, ``offset``, ``length``). A damaged or hostile file can
claim anything there: a path outside the folder, a symbolic link, a FIFO, or 3 GiB of data
for a bias of ten floats (onnx would read it all, then fail or crash). :func:`load_external_data`
checks every claim before a byte is read:

* the location is a relative path whose target, symbolic links followed, stays inside the
  model's folder, and is a regular file;
* the tensor's type and dims give a size, and the claimed length (or, without one, the rest
  of the file after ``offset``) is exactly that size;
* the range lies inside the file.

Then onnx's own helper reads the data. onnx refuses to open a symbolic link (its guard
against links out of the folder); a link that stays inside the folder is what users make
(``model.onnx.data -> weights-v3.bin``), so its location is replaced by the path of its
target, links resolved, before onnx opens it.
"""

from __future__ import annotations

import logging
import os
import stat
import warnings
from pathlib import Path
from typing import List, Optional

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, external_data_helper

from ..errors import ModelError

__all__ = ["external_tensors", "external_data_info", "load_external_data", "tensor_data_bytes"]

logger = logging.getLogger(__name__)


#: Bits per element of the types packed below one byte.
_PACKED_BITS = {
    getattr(TensorProto, name): bits
    for name, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2))
    if hasattr(TensorProto, name)
}


def external_tensors(model: ModelProto) -> List[TensorProto]:
    """The model's tensors (initializers, subgraphs' and attributes' tensors) that keep their data in a file."""
    return [
        t
        for t in external_data_helper._get_all_tensors(model)  # onnx's own walker
        if external_data_helper.uses_external_data(t)
    ]


def tensor_data_bytes(tensor: TensorProto) -> int:
    """The bytes ``raw_data`` holds for ``tensor``'s type and dims (what an external range must hold).

    Raises:
        ModelError: the type is unknown or a string (which has no raw form), or a dim is negative.
    """
    known = set(TensorProto.DataType.values()) - {TensorProto.UNDEFINED, TensorProto.STRING}
    if tensor.data_type not in known:
        what = "string data" if tensor.data_type == TensorProto.STRING else f"an unknown data type ({tensor.data_type})"
        raise ModelError(f"tensor '{tensor.name}' has {what} stored as external data; the file is corrupt")
    if any(d < 0 for d in tensor.dims):
        raise ModelError(f"tensor '{tensor.name}' has negative dims {list(tensor.dims)}; the file is corrupt")
    numel = 1
    for d in tensor.dims:
        numel *= d
    if tensor.data_type in _PACKED_BITS:
        return -(-numel * _PACKED_BITS[tensor.data_type] // 8)
    return numel * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize


def load_external_data(model: ModelProto, path: Path) -> None:
    """Read the external data of ``model`` (loaded from ``path``) into it, after checking every tensor's claim.

    Raises:
        ModelError: a location leaves the model's folder or names no regular file, a claimed
            range does not fit the tensor's dims or the file, or the file cannot be read.
    """
    base = path.parent.resolve()
    for tensor in external_tensors(model):
        _check_claim(tensor, base)
    with warnings.catch_warnings(record=True) as caught:  # onnx warns of unknown keys, which it ignores
        warnings.simplefilter("always")
        try:
            external_data_helper.load_external_data_for_model(model, str(base))
        except (OSError, ValueError, onnx.checker.ValidationError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"cannot read the external data of {path}: {first}") from None
    for warning in caught:
        logger.debug("%s: %s", path, warning.message)


def external_data_info(tensor: TensorProto) -> external_data_helper.ExternalDataInfo:
    """The external-data entry of ``tensor`` as onnx reads it, without its warning about unknown keys (ignored).

    Raises:
        ModelError: the offset or length is not a whole number, or is negative.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown keys: onnx ignores them, and so do we
        try:
            return external_data_helper.ExternalDataInfo(tensor)
        except ValueError as exc:  # a non-numeric or negative offset or length
            raise ModelError(f"tensor '{tensor.name}' has unreadable external-data fields ({exc})") from None


def _check_claim(tensor: TensorProto, base: Path) -> None:
    """Refuse ``tensor``'s external-data entry unless it names a range of a file inside ``base`` that fits its dims.

    A location reached through symbolic links that stay inside ``base`` is replaced by its target's path.
    """
    info = external_data_info(tensor)
    location = info.location or ""
    name = tensor.name
    if "\x00" in location:
        raise ModelError(
            f"tensor '{name}' has an external-data location with a NUL byte ({location!r}); the file is damaged"
        )
    if not location or os.path.isabs(location) or Path(location).drive:
        raise ModelError(
            f"tensor '{name}' stores its data at '{location}': external data must be a relative "
            "path inside the model's folder"
        )
    wanted = tensor_data_bytes(tensor)
    if info.length is not None and info.length != wanted:
        raise ModelError(
            f"tensor '{name}' claims {info.length} bytes of external data but its dims {list(tensor.dims)} need "
            f"{wanted}; the file is corrupt or hostile, nothing was read"
        )
    target = _target(name, location, base)
    try:
        found = os.stat(target)
    except OSError:
        raise ModelError(
            f"tensor '{name}' stores its data in '{location}', which does not exist next to the model"
        ) from None
    if not stat.S_ISREG(found.st_mode):
        raise ModelError(
            f"tensor '{name}' stores its data in '{location}', which is a folder or a special file: a data file of "
            "that name does not exist next to the model"
        )
    offset = info.offset or 0
    length = wanted if info.length is not None else found.st_size - offset
    if offset + length > found.st_size or length != wanted:
        raise ModelError(
            f"tensor '{name}' needs {wanted} bytes of external data from byte {offset} of '{location}', which holds "
            f"{found.st_size} bytes; the file is corrupt, truncated or hostile, nothing was read"
        )
    canonical = target.relative_to(base).as_posix()
    if canonical != location:
        _set_location(tensor, canonical)


def _target(name: str, location: str, base: Path) -> Path:
    """The file ``location`` names, symbolic links resolved; refused when it leaves ``base``."""
    try:
        target = (base / location).resolve()
    except (OSError, RuntimeError) as exc:  # a symbolic-link loop
        raise ModelError(f"tensor '{name}' stores its data at '{location}', which cannot be resolved ({exc})") from None
    if target == base or base in target.parents:  # the folder itself is refused as not a file
        return target
    link = _first_link(base, location)
    how = f"'{link}' is a symbolic link, and '{location}'" if link else f"'{location}'"
    raise ModelError(
        f"tensor '{name}' points outside the model's folder ({how} resolves to {target}); refusing to read it "
        "(copy the file into the model's folder)"
    )


def _first_link(base: Path, location: str) -> Optional[str]:
    """The first part of ``location`` (below ``base``) that is a symbolic link, or None."""
    path = base
    for part in Path(location).parts:
        path = path / part
        if path.is_symlink():
            return path.relative_to(base).as_posix()
    return None


def _set_location(tensor: TensorProto, location: str) -> None:
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = location
