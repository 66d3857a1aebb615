"""Sweeps at scale: the same rows serially, in local processes and on Ray; a killed worker or
sweep loses only chips in flight; resuming writes the rows of an uninterrupted sweep."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from nabn_onnx import NabnError
from nabn_onnx.cli import build_parser, main
from nabn_onnx.evaluation.executors import CRASH_HOOK_ENV, ProcessExecutor, RayExecutor
from nabn_onnx.evaluation.results import ResultsFile
from nabn_onnx.evaluation.sweep import SweepPlan, SweepSettings, run_sweep
from nabn_onnx.progress import Progress

from test_sweep import trained_classifier

ROOT = Path(__file__).resolve().parent.parent
#: Chips whose numbers differ from seed to seed, so equal rows mean equal computations.
PLAN = SweepPlan.of("mul", [0.5, 0.8], [0, 1, 2])
SETTINGS = SweepSettings(method="paper", batch_size=64)
ROW_KEYS = ("noise", "eta", "seed", "vanilla", "nabn")


def _rows(rows):
    return [{k: r[k] for k in ROW_KEYS} for r in rows]


def _file_rows(path: Path):
    """Chip rows of a results file, in plan order, without timings."""
    _, rows = ResultsFile.read(path)
    order = {t.key: i for i, t in enumerate(PLAN.tasks())}
    return sorted(_rows(rows), key=lambda r: order[(r["noise"], r["eta"], r["seed"])])


@pytest.fixture(scope="module")
def classifier():
    return trained_classifier()


@pytest.fixture(scope="module")
def files(classifier, tmp_path_factory):
    folder = tmp_path_factory.mktemp("scale")
    model, calib, test = classifier
    onnx.save(model, folder / "m.onnx")
    np.savez(folder / "calib.npz", **calib)
    np.savez(folder / "test.npz", **test)
    return folder / "m.onnx", folder / "calib.npz", folder / "test.npz"


@pytest.fixture(scope="module")
def serial(classifier):
    """The reference: every chip in this process."""
    model, calib, test = classifier
    report = run_sweep(model, calib, test, PLAN, SETTINGS)
    rows = _rows(report.rows)
    assert len({(r["vanilla"], r["nabn"]) for r in rows}) > 3, "chips must differ for equality to mean anything"
    return rows


def test_two_local_processes_give_the_serial_rows_and_survive_a_killed_worker(
    classifier, serial, tmp_path, monkeypatch
):
    model, calib, test = classifier
    monkeypatch.setenv(CRASH_HOOK_ENV, f"1:{tmp_path / 'crashed'}")
    report = run_sweep(model, calib, test, PLAN, SETTINGS, executor=ProcessExecutor(2), results=tmp_path / "r.jsonl")
    assert (tmp_path / "crashed").exists()  # a worker did die, running seed 1
    assert _rows(report.rows) == serial
    assert _file_rows(tmp_path / "r.jsonl") == serial
    workers = {r["worker"] for r in ResultsFile.read(tmp_path / "r.jsonl")[1]}
    assert len(workers) >= 2 and f":{os.getpid()}" not in " ".join(workers)  # chips ran in other processes


def test_local_processes_give_the_serial_rows_of_several_methods_and_test_sets(classifier):
    """Several test sets travel to the workers one by one (map_shared), methods in the settings."""
    model, calib, test = classifier
    tests = {"a": test, "b": {k: v[:128] for k, v in test.items()}}
    settings = SweepSettings(method=("paper", "delta"), batch_size=64)
    plan = SweepPlan.of("mul", [0.8], [0, 1])
    serial_rows = run_sweep(model, calib, None, plan, settings, tests=tests).rows
    parallel = run_sweep(model, calib, None, plan, settings, tests=tests, executor=ProcessExecutor(2))
    assert parallel.rows == serial_rows and len(serial_rows) == 2 * 2 * 2


def test_a_sweep_that_dies_resumes_to_the_uninterrupted_rows(classifier, serial, tmp_path, monkeypatch):
    model, calib, test = classifier
    results = tmp_path / "r.jsonl"
    monkeypatch.setenv(CRASH_HOOK_ENV, f"2:{tmp_path / 'crashed'}")
    with pytest.raises(NabnError, match="died"):
        run_sweep(model, calib, test, PLAN, SETTINGS, executor=ProcessExecutor(2, max_retries=0), results=results)
    kept = _file_rows(results)
    assert 0 < len(kept) < len(serial) and all(r in serial for r in kept)
    monkeypatch.delenv(CRASH_HOOK_ENV)
    report = run_sweep(model, calib, test, PLAN, SETTINGS, results=results, resume=True)
    assert report.resumed == len(kept)
    assert _rows(report.rows) == serial
    assert _file_rows(results) == serial
    again = run_sweep(model, calib, test, PLAN, SETTINGS, results=results, resume=True)
    assert again.resumed == len(serial) and _rows(again.rows) == serial  # nothing left to run


def test_killed_cli_sweep_resumes_and_extends(files, serial, tmp_path):
    """The whole sweep process is killed (os._exit) mid-sweep; --resume finishes it; more seeds extend it."""
    model, calib, test = files
    results = tmp_path / "r.jsonl"
    args = [
        sys.executable,
        "-m",
        "nabn_onnx.cli",
        "sweep",
        str(model),
        "--calib",
        str(calib),
        "--test",
        str(test),
        "--noise",
        "mul",
        "--eta",
        "0.5,0.8",
        "--seeds",
        "2",
        "--method",
        "paper",
        "--results",
        str(results),
        "-q",
    ]
    env = {
        **os.environ,
        CRASH_HOOK_ENV: f"1:{tmp_path / 'crashed'}",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    killed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == 70, killed.stderr
    assert [(r["eta"], r["seed"]) for r in _file_rows(results)] == [(0.5, 0)]
    with open(results, "ab") as handle:
        handle.write(b'{"kind": "chip", "noise": "mul", "eta": 0.5, "se')  # a line torn by the kill
    assert main([*args[3:-1], "--resume", "--seeds", "0,1,2", "--report", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["resumed"] == 1
    assert _rows(report["rows"]) == serial  # dict data in memory and .npz files give the same numbers
    assert _file_rows(results) == serial


def test_results_file_refuses_another_sweep(classifier, tmp_path):
    model, calib, test = classifier
    results = tmp_path / "r.jsonl"
    plan = SweepPlan.of("mul", [0.5], [0])
    run_sweep(model, calib, test, plan, SETTINGS, results=results)
    with pytest.raises(NabnError, match="--resume"):
        run_sweep(model, calib, test, plan, SETTINGS, results=results)
    with pytest.raises(NabnError, match="noise settings"):
        run_sweep(
            model, calib, test, SweepPlan.of("mul", [0.5], [0], sigma_s=0.2), SETTINGS, results=results, resume=True
        )
    with pytest.raises(NabnError, match="another method"):
        run_sweep(model, calib, test, plan, SweepSettings(method="delta"), results=results, resume=True)
    with pytest.raises(NabnError, match="calibration or evaluation settings"):
        run_sweep(model, calib, test, plan, SweepSettings(method="paper", batch_size=32), results=results, resume=True)
    other = trained_classifier(seed=3)[0]
    with pytest.raises(NabnError, match="another model"):
        run_sweep(other, calib, test, plan, SETTINGS, results=results, resume=True)
    fewer = {k: v[:128] for k, v in test.items()}
    with pytest.raises(NabnError, match="other test data"):
        run_sweep(model, calib, fewer, plan, SETTINGS, results=results, resume=True)
    (tmp_path / "bad.jsonl").write_text('{"kind": "header"}\n')
    with pytest.raises(NabnError, match="not a nabn-onnx sweep results file"):
        run_sweep(model, calib, test, plan, SETTINGS, results=tmp_path / "bad.jsonl", resume=True)


def test_progress_shows_chips_done_and_eta():
    class Tty:
        text = ""

        def isatty(self):
            return True

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    stream = Tty()
    bar = Progress("sweep mul", 10, stream=stream, initial=4)
    assert bar.eta() is None  # nothing timed yet: resumed chips do not count
    bar.start -= 6.0
    bar.update(2)  # 2 chips in 6 s, 4 left
    assert bar.eta() == pytest.approx(12.0, abs=0.1)
    assert "6/10" in stream.text and "ETA 12s" in stream.text


# ---------------------------------------------------------------- providers


def test_every_session_command_takes_providers():
    parser = build_parser()
    for argv in (
        ["split", "m.onnx"],
        ["calibrate", "m.onnx", "--data", "d.npz"],
        ["evaluate", "m.onnx", "--data", "t"],
        ["sweep", "m.onnx", "--calib", "c", "--test", "t", "--noise", "mul", "--eta", "0.1"],
        ["diagnose", "m.onnx", "--data", "d", "--noise", "mul", "--eta", "0.1"],
    ):
        assert parser.parse_args([*argv, "--providers", "CPUExecutionProvider"]).providers == "CPUExecutionProvider"
    with pytest.raises(SystemExit):
        parser.parse_args(["inject", "m.onnx", "--noise", "mul", "--eta", "0.1", "--providers", "X"])


def test_unknown_or_missing_provider_is_one_line_and_fallback_warns(files, capsys, caplog):
    import onnxruntime as ort

    model, _, test = files
    assert main(["evaluate", str(model), "--data", str(test), "--providers", "NoSuchExecutionProvider"]) == 1
    err = capsys.readouterr().err
    assert "unknown execution provider 'NoSuchExecutionProvider'" in err and len(err.strip().splitlines()) == 1
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: nothing is missing")
    assert main(["evaluate", str(model), "--data", str(test), "--providers", "CUDAExecutionProvider"]) == 1
    assert "not available" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                str(model),
                "--data",
                str(test),
                "--json",
                "--providers",
                "CUDAExecutionProvider,CPUExecutionProvider",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["value"] > 0.7
    assert "CUDAExecutionProvider is not available" in caplog.text


# ---------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def test_ray_gives_the_serial_rows_and_survives_a_killed_worker(ray_runtime, classifier, serial, tmp_path, monkeypatch):
    model, calib, test = classifier
    monkeypatch.setenv(CRASH_HOOK_ENV, f"2:{tmp_path / 'crashed'}")
    report = run_sweep(model, calib, test, PLAN, SETTINGS, executor=RayExecutor(), results=tmp_path / "r.jsonl")
    assert (tmp_path / "crashed").exists()  # the worker running seed 2 died; Ray ran that chip again
    assert _rows(report.rows) == serial
    assert _file_rows(tmp_path / "r.jsonl") == serial
    assert ray_runtime.is_initialized()  # a runtime the sweep did not start is left running


def test_cli_joins_a_running_ray_cluster(ray_runtime, files, serial, tmp_path):
    model, calib, test = files
    address = ray_runtime.get_runtime_context().gcs_address
    args = [
        sys.executable,
        "-m",
        "nabn_onnx.cli",
        "sweep",
        str(model),
        "--calib",
        str(calib),
        "--test",
        str(test),
        "--noise",
        "mul",
        "--eta",
        "0.5,0.8",
        "--seeds",
        "3",
        "--method",
        "paper",
        "--ray",
        address,
        "--report",
        str(tmp_path / "r.json"),
        "-q",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["executor"] == f"Ray ({address})"
    assert _rows(report["rows"]) == serial


def test_scale_options_fail_in_one_line(files, tmp_path, capsys, monkeypatch):
    model, calib, test = files
    args = [
        "sweep",
        str(model),
        "--calib",
        str(calib),
        "--test",
        str(test),
        "--noise",
        "mul",
        "--eta",
        "0.5",
        "--seeds",
        "1",
    ]
    assert main([*args, "--jobs", "0"]) == 1
    assert "--jobs must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a usage error: --resume without a file to resume
        main([*args, "--resume"])
    assert "--resume needs --results" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main([*args, "--ray"]) == 1
    err = capsys.readouterr().err
    assert "pip install 'nabn-onnx[ray]'" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- results files that cannot be mixed or torn


def test_resume_with_other_calibration_or_test_data_is_refused(files, tmp_path, capsys):
    """The header fingerprints the calibration and test data: rows of two data sets are never mixed."""
    model, calib, test = files
    args = ["sweep", str(model), "--test", str(test), "--noise", "mul", "--eta", "0.5", "--seeds", "1", "-q"]
    args += ["--method", "paper", "--results", str(tmp_path / "r.jsonl")]
    assert main([*args, "--calib", str(calib)]) == 0
    with np.load(calib) as f:
        other = {k: f[k] for k in f.files}
    other["input"] = other["input"][::-1].copy()  # the same samples in another order: other batches
    np.savez(tmp_path / "other.npz", **other)
    shutil.copy(calib, tmp_path / "copy.npz")
    lines = (tmp_path / "r.jsonl").read_bytes()
    assert main([*args, "--calib", str(tmp_path / "other.npz"), "--resume", "--seeds", "2"]) == 1
    err = capsys.readouterr().err
    assert "another calibration data" in err and err.count("\n") == 1
    assert (tmp_path / "r.jsonl").read_bytes() == lines  # nothing appended
    # the same bytes under another name are the same data: the resume goes on
    assert main([*args, "--calib", str(tmp_path / "copy.npz"), "--resume", "--seeds", "2"]) == 0
    assert len(ResultsFile.read(tmp_path / "r.jsonl")[1]) == 2


def test_a_results_file_in_use_by_another_sweep_is_refused(files, tmp_path, capsys):
    """Two sweeps on one results file: the second is refused at once, the first's file stays whole."""
    model, calib, test = files
    path = tmp_path / "r.jsonl"
    args = ["sweep", str(model), "--calib", str(calib), "--test", str(test), "--noise", "mul", "--eta", "0.5"]
    args += ["--seeds", "1", "--method", "paper", "-q", "--results", str(path)]
    assert main(args) == 0
    before = path.read_bytes()
    with ResultsFile.open(path, ResultsFile.read(path)[0], resume=True) as held:  # a sweep holding the file
        assert main([*args, "--resume", "--seeds", "2"]) == 1
        err = capsys.readouterr().err
        assert "in use by another sweep" in err and err.count("\n") == 1
        assert held.rows  # the holder still sees its rows
    assert path.read_bytes() == before
    assert main([*args, "--resume", "--seeds", "2"]) == 0  # the lock goes with the holder
    assert len(ResultsFile.read(path)[1]) == 2


def test_results_lines_are_appended_with_o_append(tmp_path):
    """Each line lands at the end of the file even when the file grew behind the writer's back."""
    path = tmp_path / "r.jsonl"
    with ResultsFile.open(path, {"model": "m"}, resume=False) as store:
        with open(path, "ab") as other:  # an append by someone else (not a sweep: no lock)
            other.write(b'{"kind": "note"}\n')
        store.append({"noise": "mul", "eta": 0.1, "seed": 0, "vanilla": 0.5, "nabn": 0.9})
    lines = path.read_bytes().splitlines()
    assert json.loads(lines[1]) == {"kind": "note"} and json.loads(lines[2])["kind"] == "chip"
