"""How a sweep's models and data reach its workers: files in a shared folder, loaded once per worker.

:class:`Workspace` writes a sweep's models (``.onnx``) and in-memory data (``.npy`` arrays
that workers memory-map, one-shot sources spooled to ``.npz`` batches) to a temporary folder;
:func:`resolve_local` turns what a worker receives back into models and arrays, and
:func:`loaded` does so once per sweep and worker process (:data:`LOADED`), not once per chip.
The executors (:mod:`nabn_onnx.evaluation.executors`) use these.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx
from onnx import ModelProto

from ..model import load_model, save_model
from ..tempfiles import owned_temp_folder

__all__ = [
    "ModelFile",
    "ArrayFiles",
    "BatchFiles",
    "Workspace",
    "resolve_local",
    "is_path_like_data",
    "absolute",
    "feed_dicts",
    "loaded",
    "LOADED",
]


class ModelFile:
    """A model a worker loads from a (shared) path."""

    def __init__(self, path: str):
        self.path = path

    def load(self) -> ModelProto:
        """The model, loaded from its path."""
        return load_model(self.path)


class ArrayFiles:
    """A dict of arrays a worker memory-maps from ``.npy`` files (no copy per process)."""

    def __init__(self, paths: Mapping[str, str]):
        self.paths = dict(paths)

    def load(self) -> Dict[str, np.ndarray]:
        """The arrays, memory-mapped."""
        return {k: np.load(p, mmap_mode="r") for k, p in self.paths.items()}


class BatchFiles:
    """Batches spooled to ``.npz`` files, replayed in order: one-shot data made shareable as is."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)

    def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
        for path in self.paths:
            with np.load(path) as saved:
                yield {k: saved[k] for k in saved.files}


def resolve_local(value):
    """What a worker computes with: a loaded model or memory-mapped arrays; anything else as is."""
    if isinstance(value, (ModelFile, ArrayFiles)):
        return value.load()
    if isinstance(value, bytes):
        return onnx.load_from_string(value)
    return value


def is_path_like_data(value) -> bool:
    """Whether ``value`` is data a worker reads from its own path (a file or an image folder)."""
    from ..data import ImageFolder

    return isinstance(value, (str, os.PathLike, ImageFolder))


def absolute(value):
    """``value`` (a path or an :class:`~nabn_onnx.data.ImageFolder`) with an absolute path, for workers elsewhere."""
    from dataclasses import replace

    from ..data import ImageFolder

    if isinstance(value, ImageFolder):
        return replace(value, root=os.path.abspath(value.root))
    return os.path.abspath(value)


class Workspace:
    """A temporary folder holding a sweep's models and in-memory data as files for local workers.

    The folder is named after this process, so the next run removes it when this one is
    killed before :meth:`close` (:mod:`nabn_onnx.tempfiles`).
    """

    def __init__(self):
        self.folder = Path(owned_temp_folder("nabn-sweep-"))
        self._count = 0

    def _path(self, stem: str) -> Path:
        self._count += 1
        return self.folder / f"{self._count}-{stem}"

    def share(self, value):
        """``value`` as a worker can reach it: a model or arrays written here, a path made absolute."""
        if isinstance(value, ModelProto):
            path = self._path("model.onnx")
            save_model(value, path)
            return ModelFile(os.fspath(path))
        if value is None or is_path_like_data(value):
            return None if value is None else absolute(value)
        if isinstance(value, Mapping):
            paths = {}
            for i, (key, array) in enumerate(value.items()):
                path = self._path(f"array{i}.npy")
                np.save(path, np.asarray(array), allow_pickle=False)
                paths[key] = os.fspath(path)
            return ArrayFiles(paths)
        if isinstance(value, Iterable) or hasattr(value, "get_next"):
            batch_paths = []
            for feeds in feed_dicts(value):
                path = self._path("batch.npz")
                arrays: Dict[str, Any] = dict(feeds)  # Any: np.savez's stub checks **arrays against allow_pickle
                np.savez(path, **arrays)
                batch_paths.append(os.fspath(path))
            return BatchFiles(batch_paths)
        return value

    def close(self) -> None:
        """Remove the folder and everything in it."""
        shutil.rmtree(self.folder, ignore_errors=True)


#: Per worker process: the inputs of the sweep it last worked for, loaded once (keyed by ``inputs.key``).
LOADED: Dict[str, object] = {}


def loaded(inputs, resolve: Callable[[object], object]):
    """``inputs`` with its models loaded and data mapped, once per sweep and worker process, not per chip."""
    hit = LOADED.get(inputs.key)
    if hit is None:
        LOADED.clear()
        hit = LOADED[inputs.key] = inputs.map_shared(resolve)
    return hit


def feed_dicts(value) -> Iterator[Dict[str, np.ndarray]]:
    """The batches of a one-shot source (a ``CalibrationDataReader`` or an iterable of feed dicts), labels kept."""
    from ..data import LABELS_KEY, reader_batches, split_labels

    source = reader_batches(value) if hasattr(value, "get_next") else (split_labels(b) for b in value)
    for batch in source:
        feeds = dict(batch.feeds)
        if batch.labels is not None:
            feeds[LABELS_KEY] = batch.labels
        yield feeds
