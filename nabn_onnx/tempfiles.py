"""Temporary files and folders named after the process that owns them, and removal of those a killed process left.

A process killed with ``kill -9`` (or by the out-of-memory killer) runs no ``finally``: a
session's model copy, a parallel sweep's shared folder or a half-written output stays
behind. Every temporary thing the tool makes is therefore named
``<prefix><pid>.<start>.<host>-<random>`` (:func:`owned_prefix`; the owner as
:class:`~nabn_onnx.processes.Owner` writes it), and the next run that makes one in the
same folder removes the entries of that naming (:func:`clean_stale`) whose owner
certainly no longer runs **and** that nobody has written to for :data:`STALE_AGE`
seconds. Nothing else is ever removed: not a name of another form (older versions' names,
a user's files), not a symbolic link, not another user's entry, not the entry of a live
process or of another host or container (whose processes cannot be looked up from here).

Prefixes in use (the system temporary folder: :data:`TEMP_PREFIXES`; beside an output:
:data:`PARTIAL_PREFIX`):

* ``nabn-session-``: a model handed to onnxruntime (:func:`nabn_onnx.runtime.make_session`);
* ``nabn-sweep-``: a parallel sweep's models and data (:mod:`nabn_onnx.evaluation.shipping`);
* ``nabn-spool-``: a one-shot data source spooled to disk (:mod:`nabn_onnx.data.spool`);
* ``.nabn-``: an output being written, beside its target (:mod:`nabn_onnx.model.files`,
  :mod:`nabn_onnx.model.save`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Set, Tuple, Union

from .processes import Owner, this_process

__all__ = [
    "STALE_AGE",
    "TEMP_PREFIXES",
    "PARTIAL_PREFIX",
    "owned_prefix",
    "owner_of",
    "clean_stale",
    "clean_stale_once",
    "owned_temp_folder",
]

logger = logging.getLogger(__name__)

#: Seconds an entry of a dead owner must have gone unwritten before it is removed.
STALE_AGE = 600.0
#: Our folders in the system temporary folder (see the module docstring).
TEMP_PREFIXES = ("nabn-session-", "nabn-sweep-", "nabn-spool-")
#: Our partial outputs beside their target.
PARTIAL_PREFIX = ".nabn-"

PathLike = Union[str, "os.PathLike[str]"]


def owned_prefix(prefix: str) -> str:
    """``prefix`` followed by this process's owner tag and ``-``: the ``prefix=`` for ``tempfile``'s functions."""
    return f"{prefix}{this_process().tag()}-"


def owner_of(name: str, prefixes: Iterable[str]) -> Optional[Owner]:
    """The owner a file name of our naming records, or None when ``name`` is not of our naming."""
    for prefix in prefixes:
        found = re.match(re.escape(prefix) + Owner.PATTERN + "-", name)
        if found is not None:
            return Owner(int(found[1]), int(found[2]), found[3])
    return None


def _last_write(entry: os.DirEntry, info: os.stat_result) -> float:
    """The newest modification time of the entry and, for a folder, of what it directly holds."""
    newest = info.st_mtime
    if stat.S_ISDIR(info.st_mode):
        try:
            with os.scandir(entry.path) as inside:
                for child in inside:
                    try:
                        newest = max(newest, child.stat(follow_symlinks=False).st_mtime)
                    except OSError:
                        continue
        except OSError:
            pass
    return newest


def clean_stale(folder: PathLike, prefixes: Sequence[str], min_age: float = STALE_AGE) -> List[Path]:
    """Remove the entries of ``folder`` of our naming whose owner is gone and that are older than ``min_age`` seconds.

    Args:
        folder: the folder to look in (not recursively).
        prefixes: the prefixes of our naming to consider (:data:`TEMP_PREFIXES`,
            :data:`PARTIAL_PREFIX`).
        min_age: seconds since the entry (or, for a folder, anything directly in it) was last written.

    Returns:
        The paths removed. An entry that cannot be examined or removed is left as it is.
    """
    removed: List[Path] = []
    now = time.time()
    uid = os.getuid() if hasattr(os, "getuid") else None
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        owner = owner_of(entry.name, prefixes)
        if owner is None:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISLNK(info.st_mode) or (uid is not None and info.st_uid != uid):
            continue
        if now - _last_write(entry, info) < min_age or owner.alive():
            continue
        try:
            if stat.S_ISDIR(info.st_mode):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except FileNotFoundError:  # another run removed it first
            continue
        except OSError as exc:
            logger.debug("cannot remove stale %s: %s", entry.path, exc)
            continue
        logger.debug("removed %s, left by process %d, which is gone", entry.path, owner.pid)
        removed.append(Path(entry.path))
    if removed:
        logger.info("removed %d temporary file(s) left in %s by stopped nabn-onnx processes", len(removed), folder)
    return removed


_cleaned: Set[Tuple[int, str, Tuple[str, ...]]] = set()


def clean_stale_once(folder: PathLike, prefixes: Sequence[str], min_age: float = STALE_AGE) -> List[Path]:
    """:func:`clean_stale`, at most once per process, folder and prefixes (a job makes many temporary files)."""
    key = (os.getpid(), os.path.realpath(folder), tuple(prefixes))
    if key in _cleaned:
        return []
    _cleaned.add(key)
    return clean_stale(folder, prefixes, min_age)


def owned_temp_folder(prefix: str) -> str:
    """A new folder of our naming in the system temporary folder, after removing stale ones (once per process).

    Args:
        prefix: one of :data:`TEMP_PREFIXES`.
    """
    clean_stale_once(tempfile.gettempdir(), TEMP_PREFIXES)
    return tempfile.mkdtemp(prefix=owned_prefix(prefix))
