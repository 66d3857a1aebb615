"""The JSON-lines results file of a sweep: one line per finished chip, durable as soon as written.

Format (one JSON object per line, UTF-8)::

    {
        "kind": "header",
        "format": "nabn-onnx-sweep",
        "version": 1,
        "model": ...,
        "fingerprint": ...,
        "metric": ...,
        "method": ...,
        "settings": {...},
        "measure": {...},
        "calib": "<digest of the calibration data>",
        "test": "<digest of the test data>",
        "clean": 0.93,
    }
    {
        "kind": "chip",
        "noise": "mul",
        "eta": 0.1,
        "seed": 0,
        "vanilla": 0.41,
        "nabn": 0.88,
        "seconds": {"vanilla": ..., "calibrate": ..., "nabn": ..., "sessions": ...},
        "worker": "host:pid",
    }
    ...

The header says what was swept (the model's fingerprint, the noise settings shared by all
chips, how each chip is measured, the clean metric); each chip line is written, flushed and
``fsync``-ed the moment the chip ends, in the order chips finish. A sweep killed at any point
leaves every finished chip on disk and at most a torn last line, which :meth:`ResultsFile.open`
drops. Resuming checks that the header matches the new sweep's (same model, calibration and
test data by content digest, settings), so a results file is never extended with rows of
another experiment. While a sweep has the file open it holds an exclusive lock on it
(``flock``): a second sweep on the same file is refused in one line instead of interleaving
its rows, and every line is appended with ``O_APPEND``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, BinaryIO, Dict, List, Mapping, Tuple, Union

from ..errors import NabnError

__all__ = ["ResultsFile", "FORMAT", "VERSION", "chip_key", "check_results_path"]

FORMAT = "nabn-onnx-sweep"
VERSION = 1

#: Header fields that must agree for a file to be resumed (``clean`` is checked separately).
_MATCHED = ("format", "version", "fingerprint", "calib", "test", "metric", "method", "settings", "measure")

ChipKey = Tuple[str, float, int]


def chip_key(row: Mapping[str, Any]) -> ChipKey:  # Any: rows are read from JSON
    """``(noise, eta, seed)`` of a row: what identifies a chip."""
    seed, eta = row["seed"], float(row["eta"])
    if isinstance(seed, bool) or not isinstance(seed, (int, float)) or seed != int(seed) or eta != eta:
        raise ValueError(f"not a chip: seed {seed!r}, eta {eta!r}")
    return (str(row["noise"]), eta, int(seed))


def _normalize(value):
    """``value`` as it reads back from JSON (tuples become lists), for comparing headers."""
    return json.loads(json.dumps(value))


class ResultsFile:
    """Appends chip rows to a JSON-lines file, durably, and reads back the rows of a resumed sweep.

    Use :meth:`open`; then :meth:`append` per finished chip, :meth:`close` at the end.

    Attributes:
        path: the file.
        header: the header line's object.
        rows: chip rows already in the file when it was opened, by ``(noise, eta, seed)``.
    """

    def __init__(self, path: Path, header: Dict[str, object], rows: Dict[ChipKey, Dict[str, object]], handle):
        self.path, self.header, self.rows, self._handle = path, header, rows, handle
        self._worker = f"{socket.gethostname()}:{os.getpid()}"

    @classmethod
    def open(cls, path: Union[str, Path], header: Dict[str, object], resume: bool) -> ResultsFile:
        """Start ``path`` with ``header``, or, with ``resume``, continue the sweep already in it.

        Raises:
            NabnError: the file exists and ``resume`` is False; with ``resume``, the file is
                not a sweep results file or was made with another model, data or settings.
        """
        path = Path(path)
        header = _normalize({"kind": "header", "format": FORMAT, "version": VERSION, **header})
        check_results_path(path)
        # O_APPEND: every line lands at the end of the file, whatever else writes to it
        handle: BinaryIO = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644), "r+b")
        try:
            _lock(handle, path)
            return cls._start(path, header, resume, handle)
        except BaseException:
            handle.close()
            raise

    @classmethod
    def _start(cls, path: Path, header: Dict[str, object], resume: bool, handle: BinaryIO) -> ResultsFile:
        """With the lock held: write the header of a new file, or check and continue a resumed one."""
        if os.fstat(handle.fileno()).st_size == 0:
            results = cls(path, header, {}, handle)
            results._write(header)
            return results
        if not resume:
            raise NabnError(
                f"{path} already holds sweep results: pass --resume to continue that sweep, "
                "or choose another results file"
            )
        found, rows, good_bytes = _read(path)
        _check_header(path, found, header)
        _check_clean(path, found, header)
        handle.truncate(good_bytes)  # a line torn by a kill is dropped, so appends start on a fresh line
        return cls(path, found, rows, handle)

    def append(self, row: Mapping[str, object]) -> None:
        """Write one finished chip, flushed and fsync-ed before returning."""
        line = {"kind": "chip", **row, "worker": row.get("worker", self._worker)}
        self._write(line)
        self.rows.setdefault(chip_key(line), dict(line))

    def _write(self, obj: Mapping[str, object]) -> None:
        self._handle.write((json.dumps(obj, allow_nan=True) + "\n").encode("utf-8"))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Close the file (idempotent)."""
        if not self._handle.closed:
            self._handle.close()

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def read(path: Union[str, Path]) -> Tuple[Dict[str, object], List[Dict[str, object]]]:
        """``(header, chip rows in file order)`` of a results file (a torn last line is skipped)."""
        header, rows, _ = _read(Path(path))
        return header, list(rows.values())


def check_results_path(path: Union[str, Path]) -> None:
    """Refuse, before any work, a results path that cannot hold a results file.

    Raises:
        NabnError: its folder does not exist, or it exists and is not a regular file (a FIFO
            would block the sweep forever, ``/dev/null`` cannot be synced, ``/dev/full`` fails).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise NabnError(f"cannot write results to {path}: folder {path.parent} does not exist")
    if path.exists() and not path.is_file():
        raise NabnError(f"results file {path} is not a regular file (a folder, FIFO or device); choose a file")


def _lock(handle: BinaryIO, path: Path) -> None:
    """Hold an exclusive lock on the results file while this sweep writes it (released on close)."""
    if sys.platform == "win32":  # no flock; one sweep per file is then the user's to keep
        return
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise NabnError(
            f"{path} is in use by another sweep (it holds the file's lock); wait for that sweep to end "
            "or choose another results file"
        ) from None


def _read(path: Path) -> Tuple[Dict[str, object], Dict[ChipKey, Dict[str, object]], int]:
    """Header, rows by key (first occurrence wins) and the byte length of the well-formed lines."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    good = 0
    objects = []
    for number, raw in enumerate(lines, 1):
        last = number == len(lines)
        if last and raw == b"":
            break
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            obj = None
        if not isinstance(obj, dict):
            if last:
                break  # torn by a kill while writing: everything before it is intact
            raise NabnError(
                f"{path} line {number} is not a JSON object: not a sweep results file, "
                "or damaged other than by an interrupted write"
            )
        if last:
            break  # a complete object without its newline was torn before the newline: rerun that chip
        objects.append(obj)
        good += len(raw) + 1
    if not objects or objects[0].get("kind") != "header" or objects[0].get("format") != FORMAT:
        raise NabnError(f"{path} is not a nabn-onnx sweep results file (no header line)")
    rows: Dict[ChipKey, Dict[str, object]] = {}
    for number, obj in enumerate(objects[1:], 2):
        if obj.get("kind") == "chip":
            try:
                key = chip_key(obj)
            except (KeyError, TypeError, ValueError, OverflowError):
                raise NabnError(
                    f"{path} line {number} is a chip without a valid noise, eta and seed "
                    f"(seed {obj.get('seed')!r}, eta {obj.get('eta')!r}): the file is damaged; "
                    "remove that line or use a new results file"
                ) from None
            for field in ("vanilla", "nabn"):
                if not _is_metric(obj.get(field)):
                    raise NabnError(
                        f"{path} line {number}: the chip's {field!r} is {obj.get(field, 'missing')!r}, not a metric: "
                        "the file is damaged; remove that line or use a new results file"
                    )
            rows.setdefault(key, obj)
    return objects[0], rows, good


def _is_metric(value: object) -> bool:
    """A metric as a row holds it: a number, or (several methods or test sets) a mapping of metrics."""
    if isinstance(value, Mapping):
        return bool(value) and all(_is_metric(v) for v in value.values())
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_header(path: Path, found: Mapping[str, object], wanted: Mapping[str, object]) -> None:
    for key in _MATCHED:
        if found.get(key) != wanted.get(key):
            raise NabnError(
                f"cannot resume {path}: it was made with another {_what(key)} "
                f"({key} {found.get(key)!r}, now {wanted.get(key)!r}); use a new results file"
            )


def _what(key: str) -> str:
    return {
        "fingerprint": "model",
        "calib": "calibration data",
        "test": "test data",
        "settings": "noise settings",
        "measure": "calibration or evaluation settings",
        "version": "file format version",
        "format": "file format",
    }.get(key, key)


def _check_clean(path: Path, found: Mapping[str, Any], wanted: Mapping[str, Any]) -> None:
    """Refuse to resume when the clean metric moved: the test data (or how it is read) changed."""
    before, clean = found.get("clean"), wanted.get("clean")
    if isinstance(before, dict) or isinstance(clean, dict):  # several test sets: a figure per set
        moved = before is not None and clean is not None and before != clean
    else:
        moved = before is not None and clean is not None and float(before) != float(clean)
    if moved:
        raise NabnError(
            f"cannot resume {path}: the clean model now scores {clean!r} on the test data, "
            f"{before!r} when the file was started (other test data?); use a new results file"
        )
