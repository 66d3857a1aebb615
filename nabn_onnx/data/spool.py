"""The one-shot spool: ``replayable`` makes a one-shot batch source (a reader, a generator) re-readable."""

from __future__ import annotations

import os
import shutil
from typing import Iterable, Iterator, Mapping, Optional

import numpy as np

from ..errors import DataError
from ..tempfiles import owned_temp_folder
from .feeds import load_arrays, save_batch
from .reading import DataLike, reader_batches, split_labels

__all__ = ["replayable"]


class _Spool:
    """A one-shot batch source made re-readable by spooling its batches to a temporary folder.

    The first pass reads the source and writes each batch (``.npz``) as it goes; later
    passes read them back from disk, so memory stays at one batch however long the stream.
    """

    def __init__(self, source):
        self._source = source
        self._folder: Optional[str] = None
        self._count = 0
        self._complete = False
        self._exhausted = False

    def __iter__(self) -> Iterator[Mapping[str, np.ndarray]]:
        if self._complete:
            folder = self._folder
            if folder is None:
                raise DataError("a one-shot data source was read again after it was closed")
            for i in range(self._count):
                yield load_arrays(os.path.join(folder, f"{i}.npz"))
            if not self._exhausted:
                raise DataError(
                    f"a one-shot data source was read only partly ({self._count} batch(es)) and a later pass "
                    "asked for more; give a re-readable source (an .npz file, a dict or a list of batches)"
                )
            return
        if self._folder is not None:
            raise DataError("a one-shot data source was read twice while its first pass was unfinished")
        self._folder = owned_temp_folder("nabn-spool-")
        source = (
            reader_batches(self._source)
            if hasattr(self._source, "get_next")
            else (split_labels(b) for b in self._source)
        )
        try:
            for batch in source:
                feeds = save_batch(os.path.join(self._folder, f"{self._count}.npz"), batch)
                self._count += 1
                yield feeds
            self._exhausted = True
        finally:
            # Also when the reader stopped early (``max_batches``): later passes, which stop at
            # the same batch, replay what was read. A pass that wants more is refused in
            # ``__iter__`` rather than given a shorter stream.
            self._complete = True

    def close(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __del__(self):
        self.close()


def replayable(data: DataLike) -> DataLike:
    """``data`` itself when it can be read more than once; a spooled wrapper otherwise.

    Paths, mappings and sequences are re-readable. A ``CalibrationDataReader`` or an
    iterator is read once and its batches spooled to a temporary folder for later passes.
    """
    if isinstance(data, (str, os.PathLike, Mapping, list, tuple, _Spool)):
        return data
    if hasattr(data, "get_next") or (isinstance(data, Iterable) and iter(data) is data):
        return _Spool(data)
    return data
