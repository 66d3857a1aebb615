"""``.npz`` archives as data: every member's header is checked before a row is read.

An ``.npz`` is a zip of ``.npy`` streams, each a header (dtype, order, shape) and raw rows.
A header can claim anything: ``(4, 2**32, 2**32, 1)`` in a few bytes (whose element count
overflows int64), or ``(2, 1, 16384, 16384)`` over a 2 MB member that deflates to 2 GiB of
zeros. So :func:`npz_batches` opens every member and, before reading one row, refuses in one
line (:class:`~nabn_onnx.errors.DataError`):

* a header that does not parse (magic, version, dict, dtype), Python objects, a scalar, a
  negative dimension, samples that hold no values;
* an input array the model cannot take (:meth:`~nabn_onnx.data.InputSpec.misfit`: dtype
  kind, rank, fixed dimensions after the first), the rule every batch is held to later;
* arrays (and ``labels``) that disagree on the number of samples;
* more bytes than the member holds: the header's shape times the item size, counted in
  Python integers, against the zip's uncompressed size; and that size against the stored
  bytes (equal when stored, at most deflate's ceiling of 1032 to 1 when deflated), and the
  stored bytes against the file's size.

Rows are then read one batch at a time into an array allocated once (the sizes above bound
it), 16 MiB per read, so a batch costs its own size and not twice it; damaged bytes (bad
CRC, broken deflate stream, early end) are a one-line error too. Memory is one batch,
whatever the archive's size.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError
from .feeds import LABELS_KEY, Batch, InputSpec

__all__ = ["npz_header", "npz_batches"]

#: the most bytes one stored byte can give, by method: deflate spends at least 2 bits on a
#: 258-byte match. Members of these methods may be allocated a batch up front; others
#: (bzip2, lzma: no such bound) are read as their bytes come.
_MAX_RATIO = {zipfile.ZIP_STORED: 1, zipfile.ZIP_DEFLATED: 1032}
#: bytes per read while filling a batch (the read buffer beside the batch itself)
_READ_BYTES = 16 << 20
#: what reading a damaged or hostile member raises: zip (bad CRC, encrypted, unknown method),
#: zlib (broken stream), numpy's header parser (bad magic, version, dict, dtype), an early end
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError)


def npz_header(fh) -> Tuple[Tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of the ``.npy`` stream ``fh``, which is left at the start of the data."""
    version = np.lib.format.read_magic(fh)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return reader(fh)


class _Member:
    """One array of an ``.npz`` archive: its checked header, then its rows block by block."""

    def __init__(self, archive: zipfile.ZipFile, member: str, path: Path):
        self.archive, self.member, self.path = archive, member, path
        self.key = member[:-4]
        try:
            with archive.open(member) as fh:
                self.shape, self.fortran, self.dtype = npz_header(fh)
                self.offset = fh.tell()
        except ValueError as exc:  # numpy's parser: magic, version, header dict, dtype
            raise DataError(f"{self._name} has no readable .npy header ({exc})") from None
        except _READ_ERRORS as exc:
            raise DataError(f"{self._name} cannot be read: the archive is damaged ({exc})") from None
        self._check_header()

    @property
    def _name(self) -> str:
        return f"{self.path}: array '{self.key}'"

    def _check_header(self) -> None:
        if self.dtype.hasobject:
            raise DataError(f"{self._name} holds Python objects; store plain numeric arrays")
        if not self.shape:
            raise DataError(f"{self._name} is a scalar; the first axis must be samples")
        if any(d < 0 for d in self.shape):
            raise DataError(f"{self._name} has a negative dimension in its header {self.shape}")
        if 0 in self.shape[1:] or self.dtype.itemsize == 0:  # however many samples, nothing to feed
            raise DataError(f"{self._name} has shape {self.shape} of {self.dtype}: its samples hold no values")

    def check_size(self) -> None:
        """Refuse a header that claims more bytes than the member can hold, before any is read."""
        info = self.archive.getinfo(self.member)
        wanted = math.prod(self.shape) * self.dtype.itemsize  # Python ints: no overflow
        held = info.file_size - self.offset
        if wanted > held:
            raise DataError(
                f"{self._name} claims shape {self.shape} of {self.dtype} ({wanted} bytes) in its header "
                f"but the archive member holds {max(held, 0)} bytes"
            )
        # the sizes in the zip's directory are claims too: hold them to the file and to the method
        ceiling = _MAX_RATIO.get(info.compress_type)
        stored = self.path.stat().st_size
        if info.compress_size > stored or (ceiling is not None and info.file_size > ceiling * info.compress_size):
            raise DataError(
                f"{self._name} cannot be read: the archive is damaged (it claims {info.file_size} bytes from "
                f"{info.compress_size} stored, in a file of {stored} bytes)"
            )

    def check_input(self, spec: InputSpec) -> None:
        """Refuse an array the model's input ``spec`` cannot take, from its header alone."""
        reason = spec.misfit(self.shape, self.dtype)
        if reason:
            raise DataError(f"{self._name} {reason}")

    def __len__(self) -> int:
        return self.shape[0]

    def blocks(self, size: int) -> Iterator[np.ndarray]:
        """The rows, ``size`` at a time (the last block may be shorter)."""
        try:
            yield from self._blocks(size)
        except _READ_ERRORS as exc:
            raise DataError(f"{self._name} cannot be read: the archive is damaged ({exc})") from None

    def _blocks(self, size: int) -> Iterator[np.ndarray]:
        with self.archive.open(self.member) as fh:
            npz_header(fh)
            if self.fortran:  # column-major: rows are not contiguous, read it whole (its size is checked)
                array = self._read(fh, math.prod(self.shape)).reshape(self.shape, order="F")
                for start in range(0, len(array), size):
                    yield array[start : start + size]
                return
            row = math.prod(self.shape[1:])
            for start in range(0, self.shape[0], size):
                count = min(size, self.shape[0] - start)
                yield self._read(fh, count * row).reshape((count, *self.shape[1:]))

    def _read(self, fh, items: int) -> np.ndarray:
        """The next ``items`` values of the member."""
        size = items * self.dtype.itemsize
        if self.archive.getinfo(self.member).compress_type not in _MAX_RATIO:
            return np.frombuffer(b"".join(self._chunks(fh, size)), dtype=self.dtype)
        flat = np.empty(items, dtype=self.dtype)
        buffer, done = flat.view(np.uint8), 0
        for raw in self._chunks(fh, size):
            buffer[done : done + len(raw)] = np.frombuffer(raw, dtype=np.uint8)
            done += len(raw)
        return flat

    def _chunks(self, fh, size: int) -> Iterator[bytes]:
        """The next ``size`` bytes, ``_READ_BYTES`` at a time."""
        while size > 0:
            raw = fh.read(min(_READ_BYTES, size))
            if not raw:
                raise DataError(f"{self._name} is truncated")
            size -= len(raw)
            yield raw


def _open(path: Path) -> zipfile.ZipFile:
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if not path.is_file():  # a FIFO would block the open forever, a device never end
        raise DataError(f"data {path} is not a regular file (a FIFO or device); give an .npz file or an image folder")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc})") from None


def _members(
    archive: zipfile.ZipFile, path: Path, specs: Sequence[InputSpec]
) -> Tuple[Dict[str, _Member], Optional[_Member]]:
    members = {name[:-4]: name for name in archive.namelist() if name.endswith(".npy")}
    labels = _Member(archive, members.pop(LABELS_KEY), path) if LABELS_KEY in members else None
    names = [s.name for s in specs]
    if len(specs) == 1 and len(members) == 1:
        return {names[0]: _Member(archive, next(iter(members.values())), path)}, labels
    missing = [n for n in names if n not in members]
    extra = [k for k in members if k not in names]
    if missing or extra:
        raise DataError(
            f"{path}: keys {sorted(members)} do not match the model's inputs {names}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unexpected {extra})" if extra else "")
        )
    return {n: _Member(archive, members[n], path) for n in names}, labels


def _check_members(
    path: Path, arrays: Dict[str, _Member], labels: Optional[_Member], specs: Sequence[InputSpec]
) -> None:
    for spec in specs:  # the model's misfit first: it says more than a size
        arrays[spec.name].check_input(spec)
    for member in [*arrays.values(), *([labels] if labels is not None else [])]:
        member.check_size()
    lengths = {len(a) for a in arrays.values()} | ({len(labels)} if labels is not None else set())
    if len(lengths) > 1:
        raise DataError(f"{path}: arrays disagree on the number of samples ({sorted(lengths)})")


def _checked(path: Path, specs: Sequence[InputSpec]) -> Tuple[Dict[str, _Member], Optional[_Member], zipfile.ZipFile]:
    archive = _open(path)
    try:
        arrays, labels = _members(archive, path, specs)
        _check_members(path, arrays, labels, specs)
    except BaseException:
        archive.close()
        raise
    return arrays, labels, archive


def npz_batches(path: Path, specs: Sequence[InputSpec], batch_size: int) -> Iterator[Batch]:
    """Batches of ``batch_size`` samples from the ``.npz`` at ``path``, every header checked first.

    Raises:
        DataError: the file is not a readable archive, a member's header is damaged or does
            not fit the model's inputs ``specs``, or its bytes run short (see the module docstring).
    """
    arrays, labels, archive = _checked(path, specs)
    with archive:
        streams = {n: a.blocks(batch_size) for n, a in arrays.items()}
        label_stream = labels.blocks(batch_size) if labels is not None else None
        for blocks in zip(*streams.values()):
            feeds = dict(zip(streams.keys(), blocks))
            yield Batch(feeds, next(label_stream) if label_stream is not None else None)
