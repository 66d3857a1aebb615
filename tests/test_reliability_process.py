"""Reliability, processes and memory (issue items 12 and 14).

* What a killed run leaves behind (a session's model copy, a parallel sweep's shared folder,
  a partial output) is named after its owner process, and a later run removes it once the
  owner is gone and it is old, and nothing else; the workers of a parallel sweep end when
  their parent is killed.
* A batch that cannot fit in memory is refused in one line before any data is read.

Runs that get killed, or that would eat the machine's memory on a regression, run in child
processes with a time limit (and an address-space bound).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import onnx
import pytest
from test_reliability import _bounded_cli

from nabn_onnx.cli import main
from nabn_onnx.memory import MEMORY_ENV, sample_memory
from nabn_onnx.processes import Owner, this_process
from nabn_onnx.tempfiles import PARTIAL_PREFIX, STALE_AGE, clean_stale, owner_of

from builders import images, small_cnn

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = 32
#: Seconds the workers of a killed sweep may take to end (they end within a second).
WORKERS_GONE_WITHIN = 10.0


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    onnx.save(small_cnn(seed=3), tmp_path / "model.onnx")
    np.savez(tmp_path / "data.npz", input=images(SAMPLES))
    np.savez(tmp_path / "test.npz", input=images(SAMPLES, seed=2), labels=np.arange(SAMPLES) % 4)
    (tmp_path / "tmp").mkdir()
    return tmp_path


def _env(temp: Path) -> Dict[str, str]:
    """The environment of a child run: this checkout's package, ``temp`` as the system temporary folder."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(temp), NABN_INTRA_OP_THREADS="1")
    env.pop(MEMORY_ENV, None)
    return env


def _children(pid: int) -> List[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rpartition(")")[2].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _running(pids: List[int]) -> List[int]:
    """The processes of ``pids`` that still run (a zombie waiting to be reaped has ended)."""
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rpartition(")")[2].split()[0] != "Z":
                    alive.append(pid)
        except OSError:
            continue
    return alive


def _wait_until_gone(pids: List[int], seconds: float) -> List[int]:
    deadline = time.monotonic() + seconds
    while _running(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _running(pids)


def _a_dead_owner() -> Owner:
    """An owner of this host whose process has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return Owner(child.pid, 12345, this_process().host)


def _age(path: Path, seconds: float) -> None:
    """Make ``path`` (and, for a folder, everything directly in it) last written ``seconds`` ago."""
    when = time.time() - seconds
    if path.is_dir():
        for child in path.iterdir():
            os.utime(child, (when, when), follow_symlinks=False)
    os.utime(path, (when, when), follow_symlinks=False)


def _make(path: Path, folder: bool = True, age: float = 0.0) -> Path:
    if folder:
        path.mkdir()
        (path / "model.onnx").write_bytes(b"x" * 100)
    else:
        path.write_bytes(b"x" * 100)
    if age:
        _age(path, age)
    return path


# --------------------------------------------------------------------------- 14: workers and leftovers


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_sweeps_workers_end_and_its_folder_is_removed_by_the_next_run(ws: Path):
    temp = ws / "tmp"
    results = ws / "r.jsonl"
    argv = [sys.executable, "-m", "nabn_onnx.cli", "sweep", ws / "model.onnx", "--calib", ws / "data.npz"]
    argv += ["--test", ws / "test.npz", "--noise", "mul", "--eta", "0.05,0.1", "--seeds", "200", "--batch-size", "8"]
    argv += ["--jobs", "2", "-q", "--results", results]
    parent = subprocess.Popen([str(a) for a in argv], cwd=ROOT, env=_env(temp), stderr=subprocess.PIPE)
    workers: List[int] = []
    try:
        deadline = time.monotonic() + 120
        # a row in the results file: a worker finished a chip, so the workers are up and running chips
        while not (results.exists() and len(results.read_text().splitlines()) >= 2):
            assert parent.poll() is None, parent.stderr.read().decode() if parent.stderr else ""
            assert time.monotonic() < deadline, "the sweep finished no chip in two minutes"
            time.sleep(0.05)
        workers = _children(parent.pid)
        assert len(workers) >= 2
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert not _wait_until_gone(workers, WORKERS_GONE_WITHIN), "the workers outlived their killed parent"
    finally:
        for pid in _running(workers):  # a regression must not leave them computing
            os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
        parent.wait()
    left = [p for p in temp.iterdir() if p.name.startswith("nabn-sweep-")]
    assert len(left) == 1, left
    owner = owner_of(left[0].name, ["nabn-sweep-"])
    assert owner is not None and (owner.pid, owner.host) == (parent.pid, this_process().host), left[0].name
    _age(left[0], 2 * STALE_AGE)
    done = _bounded_cli(["evaluate", ws / "model.onnx", "--data", ws / "test.npz", "-q"], memory=None, env=_env(temp))
    assert done.returncode == 0, done.stderr
    assert not left[0].exists(), "the next run kept the folder of the killed sweep"


@pytest.mark.skipif(os.name != "posix", reason="process liveness is only read on POSIX")
def test_the_next_run_removes_only_old_leftovers_of_ended_processes(ws: Path):
    temp = ws / "tmp"
    dead, me = _a_dead_owner(), this_process()
    reused = Owner(me.pid, me.start + 1, me.host)  # this pid, another start time: the owner ended
    elsewhere = Owner(dead.pid, dead.start, "000000" if me.host != "000000" else "111111")
    old = 2 * STALE_AGE
    removed = [
        _make(temp / f"nabn-session-{dead.tag()}-a1b2c3d4", age=old),
        _make(temp / f"nabn-sweep-{dead.tag()}-e5f6g7h8", age=old),
        _make(temp / f"nabn-spool-{reused.tag()}-i9j0k1l2", age=old),
    ]
    kept = [
        _make(temp / f"nabn-session-{dead.tag()}-fresh000"),  # too recent
        _make(temp / f"nabn-sweep-{me.tag()}-alive000", age=old),  # its owner runs
        _make(temp / f"nabn-session-{elsewhere.tag()}-remote00", age=old),  # another host: cannot tell
        _make(temp / "nabn-3chzjrk4", age=old),  # an older version's name: not ours to judge
        _make(temp / "nabn-session-notatag-x", age=old),
        _make(temp / "notes.txt", folder=False, age=old),
    ]
    target = _make(ws / "target", age=old)
    link = temp / f"nabn-session-{dead.tag()}-link0000"
    link.symlink_to(target)
    done = _bounded_cli(["evaluate", ws / "model.onnx", "--data", ws / "test.npz", "-q"], memory=None, env=_env(temp))
    assert done.returncode == 0, done.stderr
    assert [p.name for p in removed if p.exists()] == []
    assert [p.name for p in kept if not p.exists()] == []
    assert link.is_symlink() and (target / "model.onnx").exists()
    # and the run's own session folder is gone: of our names, only what was kept remains
    ours = sorted(p.name for p in temp.iterdir() if p.name.startswith("nabn-"))
    assert ours == sorted(n for n in [link.name, *(p.name for p in kept)] if n.startswith("nabn-"))


def test_stale_partial_outputs_of_our_naming_are_removed_and_nothing_else(tmp_path: Path):
    dead, me = _a_dead_owner(), this_process()
    old = 2 * STALE_AGE
    removed = [
        _make(tmp_path / f"{PARTIAL_PREFIX}{dead.tag()}-x1y2z3w4.onnx", folder=False, age=old),
        _make(tmp_path / f"{PARTIAL_PREFIX}{dead.tag()}-q1w2e3r4", age=old),  # save_model's folder
    ]
    kept = [
        _make(tmp_path / f"{PARTIAL_PREFIX}{dead.tag()}-fresh123.onnx", folder=False),
        _make(tmp_path / f"{PARTIAL_PREFIX}{me.tag()}-mine1234.onnx", folder=False, age=old),
        _make(tmp_path / ".nabn-k3j4h5g6.onnx", folder=False, age=old),  # mkstemp's name without an owner
        _make(tmp_path / "model.onnx", folder=False, age=old),
        _make(tmp_path / f"nabn-session-{dead.tag()}-other000", age=old),  # another prefix than asked
    ]
    assert sorted(clean_stale(tmp_path, [PARTIAL_PREFIX])) == sorted(removed)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in removed)


@pytest.mark.skipif(os.name != "posix", reason="POSIX process tree")
def test_a_worker_without_the_death_signal_still_ends_with_its_parent():
    """The portable fallback: the worker's watch thread sees it was handed to another parent."""
    worker = (
        "import os, time\n"
        "from nabn_onnx.processes import exit_with_parent\n"
        "exit_with_parent(os.getppid(), death_signal=False, interval=0.1)\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = (
        "import subprocess, sys, time\n"
        f"w = subprocess.Popen([sys.executable, '-c', {worker!r}], stdout=subprocess.PIPE, text=True)\n"
        "assert w.stdout.readline().strip() == 'ready'\n"
        "print(w.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    pid = None
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.strip().isdigit(), "the worker did not start"
        pid = int(line)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + WORKERS_GONE_WITHIN
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        assert not _alive(pid), "the worker outlived its parent"
    finally:
        if proc.poll() is None:
            proc.kill()
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    if os.path.exists(f"/proc/{pid}/stat"):
        return bool(_running([pid]))
    return True


# --------------------------------------------------------------------------- 12: batches that cannot fit


def test_the_estimate_follows_the_live_activations():
    """small_cnn at 8x8: the input is 256 bytes a sample; conv2's and conv3's outputs and relu1's (kept for the
    skip connection) are alive at once, 3 x 8 channels x 64 pixels x 4 bytes."""
    for model in (small_cnn(), _fixed(small_cnn(), 4)):
        memory = sample_memory(model)
        assert memory is not None and (memory.data, memory.activations) == (256, 6144)


def _fixed(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = batch
    return model


def test_a_batch_over_the_memory_is_refused_naming_the_batch_that_fits(ws: Path, capsys, monkeypatch):
    # a sample: 2 x 256 bytes of data + 2 x 6144 bytes of activations = 12,800 bytes
    monkeypatch.setenv(MEMORY_ENV, "100K")
    np.savez(ws / "many.npz", input=images(128), labels=np.arange(128) % 4)
    code = main(["evaluate", str(ws / "model.onnx"), "--data", str(ws / "many.npz"), "--batch-size", "64"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith("nabn-onnx evaluate: error: a batch of 64 sample(s) needs about 1 MB"), err
    assert "largest batch size that fits is 8" in err
    # fewer samples than the batch size make one smaller batch, which fits
    assert main(["evaluate", str(ws / "model.onnx"), "--data", str(ws / "test.npz"), "--batch-size", "64"]) == 1
    np.savez(ws / "few.npz", input=images(6), labels=np.arange(6) % 4)
    assert main(["evaluate", str(ws / "model.onnx"), "--data", str(ws / "few.npz"), "--batch-size", "64", "-q"]) == 0
    monkeypatch.setenv(MEMORY_ENV, "off")
    assert main(["evaluate", str(ws / "model.onnx"), "--data", str(ws / "many.npz"), "--batch-size", "64", "-q"]) == 0


@pytest.mark.parametrize(
    "command, fixed",
    [("calibrate", True), ("evaluate", False), ("sweep", False)],
)
def test_a_huge_declared_input_is_refused_in_one_line_before_reading_data(tmp_path: Path, command: str, fixed: bool):
    """Issue item 12: a model declaring 8192x8192 images, batches of 64 from an image folder."""
    image = pytest.importorskip("PIL.Image")
    model = small_cnn(size=8192)
    onnx.save(_fixed(model, 1) if fixed else model, tmp_path / "huge.onnx")
    for cls in ("a", "b"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(3):
            image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "images" / cls / f"{i}.png")
    (tmp_path / "tmp").mkdir()
    data = tmp_path / "images"
    argv: List[object] = {
        "calibrate": [
            "calibrate",
            tmp_path / "huge.onnx",
            "--data",
            data,
            "--noise",
            "mul",
            "--eta",
            "0.1",
            "-o",
            tmp_path / "o.onnx",
        ],
        "evaluate": ["evaluate", tmp_path / "huge.onnx", "--data", data],
        "sweep": [
            "sweep",
            tmp_path / "huge.onnx",
            "--calib",
            data,
            "--test",
            data,
            "--noise",
            "mul",
            "--eta",
            "0.1",
            "--seeds",
            "1",
        ],
    }[command]
    done = _bounded_cli([*argv, "--batch-size", "64"], env=_env(tmp_path / "tmp"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith(f"nabn-onnx {command}: error: a batch of "), lines[0]
    assert "needs about" in lines[0] and "of memory available" in lines[0] and "1x1x8192x8192" in lines[0]
