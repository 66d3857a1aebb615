"""Atomic output: a failure in the middle of a save leaves no partial file, no temporary
folder and an untouched input; the model in memory keeps its weights.

Failures are injected where a real one happens: the serializer, opening the temporary
file, the file writes (disk full halfway through the model or its data file), and each
``os.replace``.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import onnx
import pytest

import nabn_onnx.model.save as nabn_save
from nabn_onnx import ModelError, load_model, save_model
from nabn_onnx.cli import main

from builders import images, small_cnn

EXTERNAL = (False, True)


def _fingerprint(folder: Path) -> Dict[str, Tuple[int, int, str]]:
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_dir():
            out[rel] = (0, 0, "dir")
        else:
            out[rel] = (path.stat().st_size, path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


class _WrappedFile:
    """A file object that passes everything but ``write`` to the real file."""

    def __init__(self, fh):
        self.fh = fh

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()
        return False


class _HalfWriter(_WrappedFile):
    """A file object that writes half of what it is given, then reports a full disk."""

    def write(self, data):
        self.fh.write(data[: len(data) // 2])
        self.fh.flush()
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    onnx.save(small_cnn(seed=4, channels=32), tmp_path / "model.onnx")
    return tmp_path


def _assert_clean_failure(folder: Path, before, model: onnx.ModelProto, reference: bytes) -> None:
    after = _fingerprint(folder)
    assert after == before, f"left behind or changed: {set(after) ^ set(before) or 'a file was modified'}"
    assert not [p for p in folder.iterdir() if p.name.startswith(".nabn-")], "a temporary folder was left"
    assert _weights(model) == reference, "the model in memory lost or changed its tensors"


def _weights(model: onnx.ModelProto) -> Dict[str, bytes]:
    """Every initializer's values, which must stay in memory (never left pointing at external data)."""
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    return {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in model.graph.initializer}


@pytest.mark.parametrize("external", EXTERNAL)
def test_failure_in_the_writer(folder: Path, monkeypatch, external: bool) -> None:
    """The serializer dies after writing part of the model (and of its data file)."""
    model = load_model(folder / "model.onnx")
    reference = _weights(model)
    before = _fingerprint(folder)

    def dies_midway(model, fh, **kwargs):
        fh.write(b"\x08\x08" * 1000)
        if kwargs.get("data") is not None:
            kwargs["data"].write(b"\0" * 5000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nabn_save, "serialize_model", dies_midway)
    with pytest.raises(ModelError, match=r"cannot write .*No space left"):
        save_model(model, folder / "out.onnx", external_data=external)
    _assert_clean_failure(folder, before, model, reference)


@pytest.mark.parametrize("external", EXTERNAL)
def test_cannot_open_the_temporary_file(folder: Path, monkeypatch, external: bool) -> None:
    model = load_model(folder / "model.onnx")
    reference = _weights(model)
    before = _fingerprint(folder)
    monkeypatch.setattr(nabn_save, "open", _disk_full, raising=False)
    with pytest.raises(ModelError, match=r"cannot write .*No space left"):
        save_model(model, folder / "out.onnx", external_data=external)
    _assert_clean_failure(folder, before, model, reference)


def test_disk_full_halfway_through_inline_write(folder: Path, monkeypatch) -> None:
    model = load_model(folder / "model.onnx")
    reference = _weights(model)
    before = _fingerprint(folder)
    real_open = open
    monkeypatch.setattr(nabn_save, "open", lambda *a, **k: _HalfWriter(real_open(*a, **k)), raising=False)
    with pytest.raises(ModelError, match="No space left"):
        save_model(model, folder / "out.onnx", external_data=False)
    _assert_clean_failure(folder, before, model, reference)


class _FailsOnWrite(_WrappedFile):
    """A file object whose ``n``-th write fails, after the earlier ones went through."""

    def __init__(self, fh, n: int):
        super().__init__(fh)
        self.n, self.calls = n, 0

    def write(self, data):
        self.calls += 1
        if self.calls == self.n:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.fh.write(data)


def test_disk_full_halfway_through_external_data(folder: Path, monkeypatch) -> None:
    """The data file fills up after some tensors: nothing is left, the model keeps its weights."""
    model = load_model(folder / "model.onnx")
    reference = _weights(model)
    before = _fingerprint(folder)
    real_open = open
    opened = []

    def data_fails(path, *args, **kwargs):
        fh = real_open(path, *args, **kwargs)
        if str(path).endswith(".data"):
            opened.append(_FailsOnWrite(fh, 5))
            return opened[-1]
        return fh

    monkeypatch.setattr(nabn_save, "open", data_fails, raising=False)
    with pytest.raises(ModelError, match="No space left"):
        save_model(model, folder / "out.onnx", external_data=True)
    assert opened and opened[0].calls == 5
    _assert_clean_failure(folder, before, model, reference)


def _fail_nth_replace(monkeypatch, failing_call: int, code: int, message: str):
    """Make the ``failing_call``-th ``os.replace`` of nabn_onnx.io raise; returns the real one."""
    real_replace = os.replace
    calls = {"n": 0}

    def flaky(src, dst, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == failing_call:
            raise OSError(code, message)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(nabn_save.os, "replace", flaky)
    return real_replace


@pytest.mark.parametrize("external", EXTERNAL)
@pytest.mark.parametrize("failing_call", [1, 2])
def test_failure_in_rename(folder: Path, monkeypatch, external: bool, failing_call: int) -> None:
    """The first or second ``os.replace`` fails (external data moves two files)."""
    model = load_model(folder / "model.onnx")
    reference = _weights(model)
    before = _fingerprint(folder)
    _fail_nth_replace(monkeypatch, failing_call, errno.EXDEV, "Invalid cross-device link")
    if failing_call == 2 and not external:
        save_model(model, folder / "out.onnx", external_data=False)  # inline renames once: it succeeds
        assert load_model(folder / "out.onnx").SerializeToString()
        return
    with pytest.raises(ModelError, match="cannot write"):
        save_model(model, folder / "out.onnx", external_data=external)
    _assert_clean_failure(folder, before, model, reference)


@pytest.mark.parametrize("failing_call", [1, 2, 3])
def test_failed_overwrite_keeps_the_old_output(folder: Path, monkeypatch, failing_call: int) -> None:
    """Re-saving over an earlier external-data output: a failure leaves the old pair intact and consistent."""
    old = load_model(folder / "model.onnx")
    save_model(old, folder / "out.onnx", external_data=True)
    old_bytes = load_model(folder / "out.onnx").SerializeToString()
    new = small_cnn(seed=9, channels=32)
    reference = _weights(new)
    before = _fingerprint(folder)
    real_replace = _fail_nth_replace(monkeypatch, failing_call, errno.EIO, "Input/output error")
    with pytest.raises(ModelError):
        save_model(new, folder / "out.onnx", external_data=True)
    monkeypatch.setattr(nabn_save.os, "replace", real_replace)
    _assert_clean_failure(folder, before, new, reference)
    assert load_model(folder / "out.onnx").SerializeToString() == old_bytes


def test_interrupt_leaves_nothing(folder: Path, monkeypatch) -> None:
    """Ctrl-C during the write: the temporary folder goes, the interrupt propagates."""
    model = load_model(folder / "model.onnx")
    before = _fingerprint(folder)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(nabn_save.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_model(model, folder / "out.onnx")
    assert _fingerprint(folder) == before


@pytest.mark.parametrize("command", ["split", "inject", "calibrate"])
@pytest.mark.parametrize("where", ["replace", "write"])
def test_cli_failure_mid_save(folder: Path, monkeypatch, capsys, command: str, where: str) -> None:
    """Through the CLI: one error line, exit 1, the folder exactly as before."""
    np.savez(folder / "data.npz", input=images(16))
    before = _fingerprint(folder)
    if where == "replace":
        monkeypatch.setattr(nabn_save.os, "replace", _disk_full)
    else:
        real_open = open
        monkeypatch.setattr(nabn_save, "open", lambda *a, **k: _HalfWriter(real_open(*a, **k)), raising=False)
    argv = [command, str(folder / "model.onnx"), "-o", str(folder / "out.onnx")]
    if command == "inject":
        argv += ["--noise", "add", "--eta", "0.001"]
    if command == "calibrate":
        argv += ["--data", str(folder / "data.npz"), "--batch-size", "8", "--noise", "mul", "--eta", "0.1"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"nabn-onnx {command}: error: cannot write"), err
    assert _fingerprint(folder) == before


@pytest.mark.parametrize("external", EXTERNAL)
def test_successful_save_leaves_only_the_outputs(folder: Path, external: bool) -> None:
    model = load_model(folder / "model.onnx")
    before = set(_fingerprint(folder))
    save_model(model, folder / "out.onnx", external_data=external)
    added = set(_fingerprint(folder)) - before
    assert added == ({"out.onnx", "out.onnx.data"} if external else {"out.onnx"})
    assert load_model(folder / "out.onnx").graph.initializer[0].raw_data == model.graph.initializer[0].raw_data
    # the model in memory still holds its weights after an external save
    assert all(not onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)
