"""The worker side of the sweep executors, run in this process so that what workers do is checked line by line.

The process and Ray tests (tests/test_sweep_scale.py) run these functions in other
processes, where coverage does not see them; here the same functions run in-process on
the sample data and their results are compared with the originals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from nabn_onnx.evaluation import executors
from nabn_onnx.evaluation.executors import (
    ArrayFiles,
    BatchFiles,
    ModelFile,
    SerialExecutor,
    _run_local,
    _Workspace,
    feed_dicts,
    make_executor,
    resolve_local,
)
from nabn_onnx.model import load_model

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


class _Reader:
    def __init__(self, batches):
        self.items = iter(batches)

    def get_next(self):
        return next(self.items, None)


def test_workspace_shares_models_arrays_and_one_shot_batches_as_files_that_load_back_equal():
    model = load_model(SAMPLES / "resnet_fused.onnx")
    arrays = {"input": np.arange(24, dtype=np.float32).reshape(2, 1, 3, 4), "labels": np.array([3, 5])}
    batches = [{"input": np.ones((2, 1, 3, 4), np.float32), "labels": np.array([1, 2])}]
    space = _Workspace()
    try:
        shared_model = space.share(model)
        shared_arrays = space.share(arrays)
        shared_batches = space.share(_Reader([dict(b) for b in batches]))
        assert isinstance(shared_model, ModelFile) and Path(shared_model.path).is_file()
        assert isinstance(shared_arrays, ArrayFiles) and isinstance(shared_batches, BatchFiles)
        loaded = resolve_local(shared_model)
        assert [n.op_type for n in loaded.graph.node] == [n.op_type for n in model.graph.node]
        mapped = resolve_local(shared_arrays)
        assert all(np.array_equal(mapped[k], v) for k, v in arrays.items())
        (replayed,) = list(shared_batches)
        assert np.array_equal(replayed["input"], batches[0]["input"])
        assert np.array_equal(replayed["labels"], batches[0]["labels"])
        assert space.share(None) is None
        assert Path(space.share("data.npz")).is_absolute()  # paths travel as absolute paths
    finally:
        space.close()
    assert not space.folder.exists()


def test_resolve_local_turns_serialized_models_back_into_protos():
    model = onnx.load(str(SAMPLES / "resnet_fused.onnx"))
    assert resolve_local(model.SerializeToString()).graph.name == model.graph.name
    assert resolve_local(7) == 7


def test_feed_dicts_keeps_labels_of_readers_and_iterables():
    x, y = np.zeros((2, 1), np.float32), np.array([0, 1])
    for source in (_Reader([{"input": x, "labels": y}]), [{"input": x, "labels": y}]):
        (feeds,) = list(feed_dicts(source))
        assert set(feeds) == {"input", "labels"} and np.array_equal(feeds["labels"], y)


class _Inputs:
    """What a sweep hands its workers: a key and the shared values, resolved once per worker."""

    def __init__(self, key, values):
        self.key, self.values, self.resolved = key, values, 0

    def map_shared(self, resolve):
        self.resolved += 1
        return {k: resolve(v) for k, v in self.values.items()}


def test_a_worker_loads_a_sweeps_inputs_once_and_again_for_the_next_sweep():
    inputs = _Inputs("sweep-1", {"n": 3})
    seen = [_run_local(lambda task, loaded: (task, loaded["n"]), task, inputs) for task in ("a", "b")]
    assert seen == [("a", 3), ("b", 3)] and inputs.resolved == 1
    other = _Inputs("sweep-2", {"n": 4})
    assert _run_local(lambda task, loaded: loaded["n"], "c", other) == 4 and other.resolved == 1
    executors._LOADED.clear()


def test_serial_executor_yields_each_task_with_its_row_in_order():
    rows = list(SerialExecutor().run(lambda task, inputs: {"chip": task, "n": inputs}, ["t1", "t2"], 5))
    assert rows == [("t1", {"chip": "t1", "n": 5}), ("t2", {"chip": "t2", "n": 5})]
    assert "serial" in SerialExecutor().describe()


def test_make_executor_picks_by_jobs_and_refuses_zero():
    from nabn_onnx import NabnError

    assert isinstance(make_executor(1), SerialExecutor)
    assert make_executor(2).describe() != SerialExecutor().describe()
    with pytest.raises(NabnError, match="at least 1"):
        make_executor(0)


def test_crash_hook_fires_once_for_its_seed_only(tmp_path, monkeypatch):
    marker = tmp_path / "crashed"
    exits = []
    monkeypatch.setattr(executors.os, "_exit", lambda code: exits.append(code))
    monkeypatch.delenv(executors.CRASH_HOOK_ENV, raising=False)
    executors.crash_hook(3)  # no hook set: nothing happens
    monkeypatch.setenv(executors.CRASH_HOOK_ENV, f"3:{marker}")
    executors.crash_hook(4)  # another seed
    assert exits == [] and not marker.exists()
    executors.crash_hook(3)
    assert exits == [70] and marker.exists()
    executors.crash_hook(3)  # the marker is there: a retried chip runs
    assert exits == [70]


def test_local_workers_split_the_cores_between_them(monkeypatch):
    import os

    from nabn_onnx.runtime import THREADS_ENV

    monkeypatch.delenv(THREADS_ENV, raising=False)
    try:
        executors._init_worker(1)
        assert os.environ[THREADS_ENV] == "1"
    finally:
        os.environ.pop(THREADS_ENV, None)  # the rest of the session keeps onnxruntime's default threads
