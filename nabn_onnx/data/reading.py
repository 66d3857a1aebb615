"""Calibration and test data: sources (npz, mappings, readers, iterables), batching and validation.

The ``.npz`` reader (every member's header checked before a row is read) is in npz.py, the
one-shot spool (``replayable``) in spool.py, ``data_fingerprint`` in fingerprint.py.

Accepted everywhere data is taken:

* a path to an ``.npz`` file whose keys are the model's input names (for a one-input
  model, one array under any key), first axis = samples, plus an optional ``labels``; it
  is read batch by batch straight from the archive, so memory does not grow with its size;
* a mapping ``{input_name: array}`` (same layout as the file);
* onnxruntime's ``CalibrationDataReader`` (``get_next()`` returning a feed dict or None);
* any iterable of feed dicts ``{input_name: array}`` (each one batch; a ``labels`` entry is
  taken as the labels).

Every batch is checked against the model's inputs: names, rank, fixed dimensions, dtype
kind and finiteness. Problems raise :class:`~nabn_onnx.errors.DataError` with one line.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Iterable, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import DataError
from ..logs import warn_once
from .feeds import LABELS_KEY, Batch, InputSpec, input_specs
from .npz import npz_batches, npz_header

__all__ = [
    "InputSpec",
    "input_specs",
    "Batch",
    "iter_batches",
    "DataLike",
    "LABELS_KEY",
    "count_samples",
    "check_batching",
    "reader_batches",
    "split_labels",
]

logger = logging.getLogger(__name__)

DataLike = Union[str, os.PathLike, Mapping[str, np.ndarray], Iterable[Mapping[str, np.ndarray]], object]


def count_samples(data: DataLike) -> Optional[int]:
    """Samples in ``data`` when they can be counted without reading it; None otherwise.

    An ``.npz`` (its first header), a mapping, an image folder (its image files, listed not
    decoded) can be counted; a reader or an iterator cannot.
    """
    from .images import DecodedFolder, ImageFolder

    if isinstance(data, DecodedFolder):
        data = data.folder
    if isinstance(data, (str, os.PathLike)) and Path(data).is_dir():
        data = ImageFolder(data)
    if isinstance(data, ImageFolder):
        try:
            return len(data.files()[0])
        except DataError:  # reading the data will say what is wrong with it
            return None
    if isinstance(data, (str, os.PathLike)) and Path(data).suffix == ".npz" and Path(data).is_file():
        try:
            with zipfile.ZipFile(data) as archive, archive.open(archive.namelist()[0]) as fh:
                return int(npz_header(fh)[0][0])
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, IndexError, RuntimeError, NotImplementedError):
            return None
    if isinstance(data, Mapping) and data:
        return len(next(iter(data.values())))
    return None


def _mapping_batches(data: Mapping[str, np.ndarray], specs: Sequence[InputSpec], batch_size: int) -> Iterator[Batch]:
    data = dict(data)
    labels = data.pop(LABELS_KEY, None)
    if len(specs) == 1 and len(data) == 1:
        data = {specs[0].name: next(iter(data.values()))}
    arrays = {k: np.asarray(v) for k, v in data.items()}
    if not arrays:
        raise DataError("the data holds no arrays")
    total = len(next(iter(arrays.values())))
    for start in range(0, total, batch_size):
        feeds = {k: v[start : start + batch_size] for k, v in arrays.items()}
        yield Batch(feeds, None if labels is None else np.asarray(labels)[start : start + batch_size])


def reader_batches(reader) -> Iterator[Batch]:
    """The batches of a ``CalibrationDataReader`` (``get_next()`` until None), labels split off."""
    while True:
        feeds = reader.get_next()
        if feeds is None:
            return
        yield split_labels(feeds)


def _rebatch(batches: Iterable[Batch], batch_size: int) -> Iterator[Batch]:
    """Join consecutive single-sample batches into batches of ``batch_size``.

    onnxruntime's quantization readers commonly return one sample per ``get_next()``; a
    BatchNorm cannot measure a variance on one sample, so such items are grouped.
    Batches of two or more samples are the user's own and pass through unchanged.
    """
    group: List[Batch] = []

    def joined() -> Batch:
        feeds = {k: np.concatenate([np.asarray(b.feeds[k]) for b in group]) for k in group[0].feeds}
        labels = None
        if all(b.labels is not None for b in group):
            labels = np.concatenate(
                [
                    np.asarray(b.labels).reshape((1, *np.asarray(b.labels).shape[1:]))
                    if np.asarray(b.labels).ndim == 0
                    else np.asarray(b.labels)
                    for b in group
                ]
            )
        return Batch(feeds, labels)

    for batch in batches:
        sizes = {np.asarray(v).shape[0] if np.asarray(v).ndim else 0 for v in batch.feeds.values()}
        if sizes == {1} and (not group or set(batch.feeds) == set(group[0].feeds)):
            group.append(batch)
            if len(group) == batch_size:
                yield joined()
                group = []
            continue
        if group:
            yield joined()
            group = []
        yield batch
    if group:
        yield joined()


def split_labels(feeds: object) -> Batch:
    """A feed dict as a :class:`Batch`: its ``labels`` entry (if any) apart from the model inputs."""
    if not isinstance(feeds, Mapping):
        raise DataError(f"each batch must be a dict of input name to array, got {type(feeds).__name__}")
    feeds = dict(feeds)
    labels = feeds.pop(LABELS_KEY, None)
    return Batch(feeds, None if labels is None else np.asarray(labels))


def _raw_batches(data: DataLike, specs: Sequence[InputSpec], batch_size: int) -> Iterator[Batch]:
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if path.is_dir():
            from .images import image_folder_batches

            return image_folder_batches(path, specs, batch_size)
        if path.suffix != ".npz":
            raise DataError(f"data must be an .npz file or an image folder, got {path}")
        return npz_batches(path, specs, batch_size)
    from .images import DecodedFolder, ImageFolder

    if isinstance(data, (ImageFolder, DecodedFolder)):
        return data.batches(specs, batch_size)
    if hasattr(data, "get_next"):
        return _rebatch(reader_batches(data), batch_size)
    if isinstance(data, Mapping):
        return _mapping_batches(data, specs, batch_size)
    if isinstance(data, Iterable):
        return _rebatch((split_labels(b) for b in data), batch_size)
    raise DataError(
        f"cannot read data of type {type(data).__name__}: give an .npz path, a dict of arrays, "
        "a CalibrationDataReader or an iterable of feed dicts"
    )


def _check_batch(batch: Batch, specs: Sequence[InputSpec], number: int) -> Batch:
    names = [s.name for s in specs]
    if len(specs) == 1 and len(batch.feeds) == 1 and names[0] not in batch.feeds:
        batch.feeds = {names[0]: next(iter(batch.feeds.values()))}
    if sorted(batch.feeds) != sorted(names):
        raise DataError(f"batch {number}: keys {sorted(batch.feeds)} do not match the model's inputs {names}")
    sizes = set()
    for spec in specs:
        array = np.asarray(batch.feeds[spec.name])
        reason = spec.misfit(array.shape, array.dtype)
        if reason:
            raise DataError(f"batch {number}: input '{spec.name}' {reason}")
        if array.dtype != spec.dtype:
            array = array.astype(spec.dtype)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise DataError(f"batch {number}: input '{spec.name}' contains NaN or Inf")
        batch.feeds[spec.name] = np.ascontiguousarray(array)
        sizes.add(array.shape[0] if array.ndim else 0)
    if len(sizes) > 1:
        raise DataError(f"batch {number}: inputs disagree on the batch size ({sorted(sizes)})")
    if batch.labels is not None and len(batch.labels) != next(iter(sizes)):
        raise DataError(f"batch {number}: {len(batch.labels)} labels for {next(iter(sizes))} samples")
    return batch


def check_batching(data: DataLike, batch_size: int, max_batches: Optional[int], min_batch: int = 1) -> None:
    """Refuse batching settings and missing data files before any work is done on the model.

    Raises:
        DataError: a batch size below 1 (below ``min_batch`` when the tool does the batching),
            max batches below 1, or a data path that does not exist.
    """
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")
    if max_batches is not None and max_batches < 1:
        raise DataError(f"max batches must be at least 1, got {max_batches}")
    tool_batches = isinstance(data, (str, os.PathLike, Mapping))
    if tool_batches and batch_size < min_batch:
        raise DataError(
            f"batch size {batch_size} gives batches of {batch_size} sample(s); calibration needs at least {min_batch} "
            "per batch to measure a variance"
        )
    if isinstance(data, (str, os.PathLike)) and not Path(data).exists():
        raise DataError(f"data file not found: {data}")


def iter_batches(
    data: DataLike,
    specs: Sequence[InputSpec],
    *,
    batch_size: int = 64,
    max_batches: Optional[int] = None,
    min_batch: int = 1,
) -> Iterator[Batch]:
    """Validated batches from any accepted data source.

    Args:
        data: see the module docstring.
        specs: the model's inputs (:func:`input_specs`).
        batch_size: samples per batch when the tool does the batching (files, mappings).
        max_batches: stop after this many batches.
        min_batch: smallest usable batch; a smaller last batch is dropped with a warning,
            a smaller batch elsewhere is an error (calibration needs 2 for a variance).

    Raises:
        DataError: no batches at all, or a batch that does not fit the model.
    """
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")
    if max_batches is not None and max_batches < 1:
        raise DataError(f"max batches must be at least 1, got {max_batches}")
    count = 0
    pending: Optional[Batch] = None
    for raw in _raw_batches(data, specs, batch_size):
        if pending is not None:
            if pending.size < min_batch:
                raise DataError(
                    f"batch {count} has {pending.size} sample(s); calibration needs at least {min_batch} per batch "
                    "to measure a variance"
                )
            yield pending
            count += 1
            pending = None
            if max_batches is not None and count >= max_batches:
                return
        pending = _check_batch(raw, specs, count + 1)
    if pending is not None:
        if pending.size >= min_batch:
            yield pending
            count += 1
        elif count:
            warn_once(logger, "dropped the last batch: %d sample(s) are too few to measure a variance", pending.size)
        else:
            raise DataError(
                f"the data has {pending.size} sample(s) in its only batch; calibration needs at least {min_batch}"
            )
    if count == 0:
        raise DataError("the data holds no samples")
