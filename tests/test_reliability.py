"""Reliability (issue 20): every bad input or failed write ends in one line, with the right exit
code, leaving no output behind; nothing hangs on a FIFO or reads a device file forever.

Each case builds its own small inputs in a temporary folder; CLI cases run ``main`` in this
process (or, where a hang is the defect, in a subprocess with a timeout).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import onnx
import pytest

import nabn_onnx.reports as reports_module
from nabn_onnx.cli import main

from builders import images, small_cnn

SAMPLES = 32
BATCH = 8
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    onnx.save(small_cnn(seed=3), tmp_path / "model.onnx")
    np.savez(tmp_path / "data.npz", input=images(SAMPLES))
    np.savez(tmp_path / "test.npz", input=images(SAMPLES, seed=2), labels=np.arange(SAMPLES) % 4)
    return tmp_path


def _run(capsys, argv: List[object]):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"wanted one stderr line, got {lines!r}"
    assert lines[0].startswith(f"nabn-onnx {command}: error: "), lines[0]
    return lines[0]


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# --------------------------------------------------------------------------- 4, 5: write errors


def test_a_report_that_cannot_be_written_leaves_no_model(ws: Path, capsys, monkeypatch):
    """All of a command's outputs or none: a failed --report write takes the model back out."""
    monkeypatch.setattr(reports_module, "atomic_write_text", _disk_full)
    argv = ["calibrate", ws / "model.onnx", "--data", ws / "data.npz", "--noise", "mul", "--eta", "0.2"]
    code, _out, err = _run(capsys, [*argv, "--batch-size", BATCH, "-o", ws / "out.onnx", "--report", ws / "r.json"])
    line = _one_line(err, "calibrate")
    assert code == 1 and "r.json" in line and "No space left" in line
    assert not (ws / "out.onnx").exists() and not (ws / "r.json").exists()
    assert not [p for p in ws.iterdir() if p.name.startswith(".nabn")], "a temporary file was left"


def test_check_that_cannot_write_its_junit_exits_2_not_1(ws: Path, capsys, monkeypatch):
    """1 means a chip missed a threshold; a gate that cannot report must say it could not run."""
    monkeypatch.setattr(reports_module, "atomic_write_text", _disk_full)
    argv = ["check", ws / "model.onnx", "--data", ws / "data.npz", "--test", ws / "test.npz", "--noise", "mul"]
    argv += ["--eta", "0.05", "--seeds", "1", "--batch-size", BATCH, "--min", "top1=0", "--junit", ws / "j.xml"]
    code, _out, err = _run(capsys, argv)
    assert code == 2, err
    assert "j.xml" in err and "No space left" in err and err.count("\n") == 1


@pytest.mark.parametrize("device", ["/dev/full", "/dev/null"])
def test_results_on_a_device_are_refused_before_the_sweep(ws: Path, capsys, device: str):
    argv = ["sweep", ws / "model.onnx", "--calib", ws / "data.npz", "--test", ws / "test.npz", "--noise", "mul"]
    code, _out, err = _run(capsys, [*argv, "--eta", "0.05", "--seeds", "1", "--results", device])
    line = _one_line(err, "sweep")
    assert code == 1 and "not a regular file" in line


# --------------------------------------------------------------------------- 7: nothing hangs on a FIFO


@pytest.mark.parametrize("where", ["data", "results", "device"])
def test_a_fifo_is_refused_not_waited_on(ws: Path, where: str):
    fifo = ws / {"data": "x.npz", "results": "r.jsonl", "device": "d.json"}[where]
    os.mkfifo(fifo)
    if where == "data":
        argv = ["calibrate", ws / "model.onnx", "--data", fifo, "--noise", "mul", "--eta", "0.1"]
    elif where == "device":
        argv = ["inject", ws / "model.onnx", "--noise", "pcm", "--device", fifo]
    else:
        argv = ["sweep", ws / "model.onnx", "--calib", ws / "data.npz", "--test", ws / "test.npz"]
        argv += ["--noise", "mul", "--eta", "0.05", "--seeds", "1", "--results", fifo]
    done = _bounded_cli(argv)
    assert done.returncode == 1, done.stderr
    assert "not a regular file" in done.stderr and done.stderr.count("\n") == 1


def _bounded_cli(
    argv: List[object], *, memory: Optional[int] = 4 << 30, env: Optional[Dict[str, str]] = None
) -> subprocess.CompletedProcess:
    """The CLI in a child process with ``memory`` bytes of address space (None: no bound) and two minutes.

    A regression fails the test, not the machine.
    """

    def limit() -> None:
        if memory is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return subprocess.run(
        [sys.executable, "-m", "nabn_onnx.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
        preexec_fn=limit,
    )


def test_a_device_file_that_never_ends_is_refused(ws: Path):
    done = _bounded_cli(["inject", ws / "model.onnx", "--noise", "pcm", "--device", "/dev/zero"])
    assert done.returncode == 1 and "not a regular file" in _one_line(done.stderr, "inject")


# --------------------------------------------------------------------------- 6: one line, not a traceback


def test_a_huge_chip_count_is_refused_in_one_line(ws: Path):
    argv = ["sweep", ws / "model.onnx", "--calib", ws / "data.npz", "--test", ws / "test.npz", "--noise", "mul"]
    done = _bounded_cli([*argv, "--eta", "0.05", "--seeds", "1000000000"])
    assert done.returncode == 1 and "chips" in _one_line(done.stderr, "sweep")


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda row: {**row, "seed": 1e400}, "seed"),
        (lambda row: {k: v for k, v in row.items() if k != "vanilla"}, "vanilla"),
        (lambda row: {**row, "vanilla": "high"}, "vanilla"),
    ],
)
def test_damaged_result_rows_are_refused_before_the_sweep_runs(ws: Path, capsys, damage, words):
    results = ws / "r.jsonl"
    argv = ["sweep", ws / "model.onnx", "--calib", ws / "data.npz", "--test", ws / "test.npz", "--noise", "mul"]
    argv += ["--eta", "0.05", "--seeds", "1", "--batch-size", BATCH, "--method", "paper", "-q"]
    assert _run(capsys, [*argv, "--results", results])[0] == 0
    header, row = (json.loads(line) for line in results.read_text().splitlines())
    text = json.dumps(header) + "\n" + json.dumps(damage(row)).replace("Infinity", "1e400") + "\n"
    results.write_text(text)
    code, _out, err = _run(capsys, [*argv, "--results", results, "--resume", "--seeds", "2"])
    line = _one_line(err, "sweep")
    assert code == 1 and words in line and "line 2" in line
    assert results.read_text() == text


def test_a_nul_byte_in_an_external_data_location_is_one_line(ws: Path, capsys):
    model = small_cnn(seed=3)
    tensor = model.graph.initializer[0]
    onnx.external_data_helper.set_external_data(tensor, location="w\x00.bin")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    (ws / "bad.onnx").write_bytes(model.SerializeToString())
    code, _out, err = _run(capsys, ["inspect", ws / "bad.onnx"])
    assert code == 1 and "location" in _one_line(err, "inspect")


# --------------------------------------------------------------------------- 8: warnings do not precede the error


def test_values_near_the_float_limit_give_exactly_one_stderr_line(ws: Path, capsys):
    data = images(SAMPLES).astype(np.float32)
    data[:, :, :2] = 3e38
    np.savez(ws / "huge.npz", input=data)
    argv = ["calibrate", ws / "model.onnx", "--data", ws / "huge.npz", "--noise", "mul", "--eta", "0.1"]
    code, _out, err = _run(capsys, [*argv, "--batch-size", BATCH, "-o", ws / "o.onnx"])
    assert code == 1, err
    _one_line(err, "calibrate")
    assert not (ws / "o.onnx").exists()
