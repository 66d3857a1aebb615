"""Reliability (issue 20) in the model layer: output folders that cannot be written (item 4),
external data through symbolic links (item 6), external-data claims that do not fit the
tensor or the file (item 9), and text too large to copy (item 13).

Each case builds its own small inputs in a temporary folder: gigabyte files are sparse, and
the text limits are lowered for the test rather than filled. Where a regression would read
gigabytes, the CLI runs in a child process with an address-space bound (``_bounded_cli``).
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import List, Optional

import numpy as np
import onnx
import onnxruntime
import pytest
from test_reliability import _bounded_cli, _one_line

from nabn_onnx.cli import main

from builders import images, small_cnn

SAMPLES = 32
BATCH = 8


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    onnx.save(small_cnn(seed=3, with_bn=True), tmp_path / "model.onnx")
    np.savez(tmp_path / "data.npz", input=images(SAMPLES))
    np.savez(tmp_path / "test.npz", input=images(SAMPLES, seed=2), labels=np.arange(SAMPLES) % 4)
    return tmp_path


@pytest.fixture
def sessions(monkeypatch) -> List[str]:
    """Every onnxruntime session a command builds (none: it did no work)."""
    built: List[str] = []
    real = onnxruntime.InferenceSession

    def spy(path, *args, **kwargs):
        built.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    return built


def _run(capsys, argv: List[object]):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _calibrate(ws: Path, model: Optional[Path] = None) -> List[object]:
    argv: List[object] = ["calibrate", model or ws / "model.onnx", "--data", ws / "data.npz", "--noise", "mul"]
    return [*argv, "--eta", "0.1", "--batch-size", BATCH, "-q"]


def _sweep(ws: Path) -> List[object]:
    argv: List[object] = ["sweep", ws / "model.onnx", "--calib", ws / "data.npz", "--test", ws / "test.npz"]
    return [*argv, "--noise", "mul", "--eta", "0.05", "--seeds", "1", "--batch-size", BATCH, "-q"]


# --------------------------------------------------------------------------- 4: folders that refuse new files


def _read_only(monkeypatch, folder: Path, code: int) -> None:
    """Make creating a file in ``folder`` fail as a read-only mount (EROFS) or a denied folder (EACCES) would.

    Root ignores permission bits, so the folder itself stays writable: the failure is injected
    where a file is first created in it.
    """
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        where = kwargs.get("dir", args[2] if len(args) > 2 else None)
        if where is not None and Path(where).resolve() == folder.resolve():
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("option", ["-o", "--report"])
def test_an_output_folder_that_refuses_files_is_refused_before_any_work(
    ws: Path, capsys, monkeypatch, sessions, code: int, option: str
):
    locked = ws / "locked"
    locked.mkdir()
    _read_only(monkeypatch, locked, code)
    outputs = {"-o": ws / "out.onnx", "--report": ws / "r.json"}
    outputs[option] = locked / outputs[option].name
    argv = [*_calibrate(ws), "-o", outputs["-o"], "--report", outputs["--report"]]
    code_, _out, err = _run(capsys, argv)
    line = _one_line(err, "calibrate")
    assert code_ == 1 and str(locked) in line and os.strerror(code) in line
    assert sessions == [], "the calibration ran before the output folder was checked"
    assert not any(p.exists() for p in outputs.values())
    assert sorted(p.name for p in locked.iterdir()) == [], "the probe left a file behind"


@pytest.mark.parametrize("command", ["split", "sweep --results", "check --junit"])
def test_every_output_option_probes_its_folder(ws: Path, capsys, monkeypatch, sessions, command: str):
    locked = ws / "locked"
    locked.mkdir()
    _read_only(monkeypatch, locked, errno.EROFS)
    if command == "split":
        argv, name = ["split", ws / "model.onnx", "-o", locked / "s.onnx"], "split"
    elif command == "sweep --results":
        argv, name = [*_sweep(ws), "--results", locked / "r.jsonl"], "sweep"
    else:
        argv = ["check", ws / "model.onnx", "--data", ws / "data.npz", "--test", ws / "test.npz", "--noise", "mul"]
        argv += ["--eta", "0.05", "--seeds", "1", "--batch-size", BATCH, "--min", "top1=0", "--junit", locked / "j.xml"]
        name = "check"
    code, _out, err = _run(capsys, argv)
    line = _one_line(err, name)
    assert code == (2 if name == "check" else 1) and "Read-only file system" in line and str(locked) in line
    assert sessions == [] and list(locked.iterdir()) == []


def _unwritable_system_folder() -> Path:
    """``/sys``: no one, root included, may create a file there."""
    folder = Path("/sys")
    if not folder.is_dir():
        pytest.skip("no /sys on this system")
    try:
        fd, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        return folder
    os.close(fd)
    os.unlink(probe)
    pytest.skip("/sys accepts new files here")


def test_a_really_unwritable_folder_is_refused_before_any_work(ws: Path, capsys, sessions):
    folder = _unwritable_system_folder()
    code, _out, err = _run(capsys, [*_calibrate(ws), "-o", ws / "out.onnx", "--report", folder / "nabn-r.json"])
    line = _one_line(err, "calibrate")
    assert code == 1 and f"cannot write to the output folder {folder}" in line
    assert sessions == [] and not (ws / "out.onnx").exists()


def test_a_really_unwritable_folder_through_the_cli_process(ws: Path):
    folder = _unwritable_system_folder()
    done = _bounded_cli(["split", ws / "model.onnx", "-o", folder / "nabn-s.onnx"])
    assert done.returncode == 1 and f"output folder {folder}" in _one_line(done.stderr, "split")
