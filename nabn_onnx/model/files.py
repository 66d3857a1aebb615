"""Output files: atomic writes (temporary file in the same folder, fsync, rename) and the guards run before any work.

The guards (:func:`check_output`, :func:`check_output_folder`, :func:`check_paths`)
refuse an output that cannot be written or that would overwrite an input.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Tuple, Union

import onnx

from ..errors import ModelError
from ..tempfiles import PARTIAL_PREFIX, clean_stale_once, owned_prefix
from .external import external_data_info, external_tensors
from .load import ModelLike

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "sync_file",
    "sync_folder",
    "file_mode",
    "check_output_folder",
    "check_output",
    "check_paths",
]


def sync_file(fh: Any) -> None:
    """Flush the open file ``fh`` to the disk, so a rename after it never exposes an empty file after a power loss."""
    fh.flush()
    os.fsync(fh.fileno())


def sync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (POSIX: fsync the directory; elsewhere a no-op)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; the data itself is synced
        pass
    finally:
        os.close(fd)


def file_mode() -> int:
    """The mode a new file gets under the current umask (``mkstemp`` would give 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Union[str, os.PathLike], write: Callable[[str], None]) -> Path:
    """Write a file atomically: ``write(temporary path)`` in the same folder, fsync, rename, fsync the folder.

    The file gets the umask's mode, like any file the user creates.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ModelError(f"output folder does not exist: {folder}")
    clean_stale_once(folder, (PARTIAL_PREFIX,))  # partials a killed run left here (tempfiles)
    fd, tmp = tempfile.mkstemp(prefix=owned_prefix(PARTIAL_PREFIX), suffix=path.suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            sync_file(fh)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
        sync_folder(folder)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: Union[str, os.PathLike], text: str) -> Path:
    """Write a text file atomically (see :func:`atomic_write_bytes`)."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)

    return atomic_write_bytes(path, write)


def check_output_folder(path: Union[str, os.PathLike]) -> None:
    """Fail before the work, not after it, when an output cannot be written there.

    The folder is probed by creating and removing an empty file in it: permission bits
    tell nothing when running as root, and neither they nor ``os.access`` know a read-only
    mount, a full quota or a folder that refuses new files (``/sys``).

    Raises:
        ModelError: the folder does not exist or is not writable, or the path is a folder.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ModelError(f"output folder does not exist: {folder}")
    if path.is_dir():
        raise ModelError(f"output path is a folder: {path}")
    try:
        fd, probe = tempfile.mkstemp(prefix=owned_prefix(PARTIAL_PREFIX), suffix=".probe", dir=folder)
    except OSError as exc:
        raise ModelError(f"cannot write to the output folder {folder}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)


def check_output(
    model: ModelLike, output: Union[str, os.PathLike], inputs: Optional[Mapping[str, object]] = None
) -> None:
    """Refuse an output that would overwrite the input model, the file holding its weights, or another input.

    Args:
        model: the input (a path is checked; an in-memory model has no file to protect).
        output: the model file about to be written (its ``.data`` side file is checked too).
        inputs: the call's other inputs by what they are (``{"the reference model": path}``);
            paths are checked, anything else (arrays, readers, ``ModelProto``) is passed over.

    Raises:
        ModelError: ``output`` is an input, an input's external-data file, or cannot be written.
    """
    output = Path(output)
    check_output_folder(output)
    check_paths({"the input model": model, **(inputs or {})}, {"the output model": output})


def check_paths(inputs: Mapping[str, object], outputs: Mapping[str, object]) -> None:
    """Refuse any output path that names an input file or another output, before any work is done.

    Paths are compared as files: ``os.path.samefile`` where both exist (links and hard links
    included), their resolved paths otherwise. A model's external-data files count as inputs,
    and a model output's ``.data`` side file as an output.

    Args:
        inputs: what each input is (``"the input model"``, ``"--data"``) -> its path; entries
            that are not paths (None, arrays, readers, in-memory models) are passed over.
        outputs: what each output is (``"--report"``) -> the path it will be written to.

    Raises:
        ModelError: an output would overwrite an input, or two outputs are one file.
    """
    named_inputs: List[Tuple[str, Path]] = []
    for label, value in inputs.items():
        if isinstance(value, (str, os.PathLike)):
            path = Path(value)
            named_inputs.append((label, path))
            if path.suffix == ".onnx" and path.is_file():
                named_inputs += [(f"the weights file of {label}", f) for f in sorted(_external_files(path))]
    named_outputs: List[Tuple[str, Path]] = []
    for label, value in outputs.items():
        if isinstance(value, (str, os.PathLike)):
            path = Path(value)
            named_outputs.append((label, path))
            if path.suffix == ".onnx":
                named_outputs.append((f"the weights file of {label}", path.with_name(path.name + ".data")))
    for out_label, out in named_outputs:
        for in_label, given in named_inputs:
            if _same_file(out, given):
                raise ModelError(f"refusing to overwrite {in_label} {given} with {out_label}; choose another path")
    for i, (a_label, a) in enumerate(named_outputs):
        for b_label, b in named_outputs[i + 1 :]:
            if _same_file(a, b):
                raise ModelError(f"{a_label} and {b_label} are the same file {a}; choose different paths")


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (a folder never matches: outputs are files)."""
    if a.is_dir() or b.is_dir():
        return False
    if a.exists() and b.exists():
        try:
            return os.path.samefile(a, b)
        except OSError:  # unreadable or vanished: fall back to the names
            pass
    return os.path.realpath(a) == os.path.realpath(b)


def _external_files(model: Path) -> frozenset:
    """The files the model's external data lives in (empty when it cannot be read: loading will say why).

    Reading them parses the model (without its weights); the path guards of one command ask
    for the same model several times (the CLI's guard, then the library call's), so the
    answer is kept per file version (its resolved path, inode, size and modification time).
    """
    try:
        stat = model.stat()
    except OSError:
        return frozenset()
    return _external_files_of(str(model.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _external_files_of(model: str, inode: int, size: int, mtime_ns: int) -> frozenset:
    """:func:`_external_files` of one version of a file (``inode``, ``size`` and ``mtime_ns`` key the cache)."""
    try:
        proto = onnx.load_model(model, load_external_data=False)
        folder = Path(model).parent
        return frozenset((folder / external_data_info(t).location).resolve() for t in external_tensors(proto))
    except Exception:  # a broken model is reported by load_model, with its own message
        return frozenset()
