"""Where a sweep's chips run: in this process, in local worker processes, or on a Ray cluster.

A sweep is a list of tasks (one :class:`~nabn_onnx.evaluation.sweep.ChipTask` per chip,
a plain picklable description) and one set of inputs shared by every task (the models,
the data and how a chip is measured). Every executor runs the same function on each task
and yields ``(task, row)`` as tasks finish, in the order they finish; only where the
function runs differs:

* :class:`SerialExecutor`: here, one chip after the other.
* :class:`ProcessExecutor` (``--jobs N``): ``N`` local processes (``spawn``, so no
  onnxruntime thread pool is forked; a script that starts one needs the usual
  ``if __name__ == "__main__":`` guard). The inputs are written once to a temporary folder
  (models as ``.onnx``, arrays as ``.npy`` that workers memory-map) and read from there.
* :class:`RayExecutor` (``--ray [ADDRESS]``): Ray tasks, one CPU each; models and
  in-memory data go to Ray's object store once, paths (``.npz`` files, image folders)
  are read by the workers from the same path, which on a cluster must be shared.

Each worker's sessions get ``cores / N`` threads per operator (one per CPU a Ray task
holds), so N workers do not each start one thread per core; onnxruntime's results do not
depend on it (the tests compare rows exactly).

A worker process ends when its parent does (a parent killed with ``kill -9`` leaves no
worker computing chips nobody reads: :func:`nabn_onnx.processes.exit_with_parent`), and the
shared folder a killed parent leaves is removed by a later run (:mod:`nabn_onnx.tempfiles`).

A worker process that dies (killed, out of memory, a crashing native library) costs
only the chips it was running: Ray retries them (``max_retries``, a system failure such
as :class:`ray.exceptions.WorkerCrashedError`), and :class:`ProcessExecutor` rebuilds its
pool and resubmits them, each chip at most ``max_retries`` more times. A chip that raises
an exception is not retried: it is an error in the inputs, and is raised here.

How the inputs reach the workers (files in a temporary folder, loaded once per worker) is
:mod:`nabn_onnx.evaluation.shipping`.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
from onnx import ModelProto

from ..errors import NabnError
from ..processes import exit_with_parent
from .shipping import (
    LOADED,
    ArrayFiles,
    BatchFiles,
    ModelFile,
    Workspace,
    absolute,
    feed_dicts,
    is_path_like_data,
    loaded,
    resolve_local,
)

__all__ = [
    "Executor",
    "SerialExecutor",
    "ProcessExecutor",
    "RayExecutor",
    "make_executor",
    "CRASH_HOOK_ENV",
    "DEFAULT_MAX_RETRIES",
    "crash_hook",
    "feed_dicts",
    "resolve_local",
    "ModelFile",
    "ArrayFiles",
    "BatchFiles",
]

logger = logging.getLogger(__name__)

#: Times a chip whose worker died is run again (Ray's own default for tasks).
DEFAULT_MAX_RETRIES = 3
#: Test hook: ``"SEED:MARKER"`` makes the first worker that starts a chip with seed SEED
#: exit abruptly (``os._exit``), once: it creates MARKER, and skips the crash when MARKER exists.
CRASH_HOOK_ENV = "NABN_SWEEP_CRASH_ONCE"

Task = TypeVar("Task")
Row = Dict[str, Any]  # a chip's JSON-able result
ChipFunction = Callable[[Any, Any], Row]  # (task, inputs) -> row; executors pass both through untouched


def crash_hook(seed: int) -> None:
    """Exit this process abruptly if :data:`CRASH_HOOK_ENV` asks for it for ``seed`` (tests only)."""
    value = os.environ.get(CRASH_HOOK_ENV)
    if not value:
        return
    wanted, _, marker = value.partition(":")
    if int(wanted) != int(seed):
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os._exit(70)


# ---------------------------------------------------------------- executors


class Executor:
    """Runs ``fn(task, inputs)`` for every task; yields ``(task, row)`` as each finishes.

    ``inputs`` has a ``key`` naming the sweep and a method ``map_shared(f)`` returning a
    copy whose models and data are replaced by ``f(value)``: that is how an executor ships
    them to its workers, which load them once per sweep (by ``key``), not once per chip.
    """

    name = "executor"

    def run(self, fn: ChipFunction, tasks: Sequence[Task], inputs) -> Iterator[Tuple[Task, Row]]:
        """Yield ``(task, fn(task, inputs))`` for every task, in any order."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line saying where the chips run."""
        return self.name


class SerialExecutor(Executor):
    """Every chip in this process, one after the other."""

    name = "serial"

    def run(self, fn, tasks, inputs):
        """Run the tasks one after the other, in order."""
        for task in tasks:
            yield task, fn(task, inputs)


def _init_worker(threads: int, parent: Optional[int] = None, death_signal: bool = False) -> None:
    """Set up a local worker: its sessions use ``threads`` threads per operator, and it ends with process ``parent``.

    A worker left running after its parent is killed would go on computing chips nobody
    reads (see :func:`nabn_onnx.processes.exit_with_parent`; ``death_signal`` only when the
    pool was made by the main thread, which lives as long as the parent process).
    """
    from ..runtime import THREADS_ENV

    if parent is not None:
        exit_with_parent(parent, death_signal=death_signal)
    os.environ.setdefault(THREADS_ENV, str(threads))


#: Names this module had before :mod:`nabn_onnx.evaluation.shipping` took them (tests use them here).
_Workspace = Workspace
_LOADED = LOADED


def _run_local(fn, task, inputs):
    """Worker side of :class:`ProcessExecutor`."""
    return fn(task, loaded(inputs, resolve_local))


class ProcessExecutor(Executor):
    """``jobs`` local worker processes; a pool that loses a worker is rebuilt and its chips resubmitted.

    Args:
        jobs: worker processes (at most this many chips in flight).
        max_retries: times a chip whose worker died is run again before the sweep fails.
    """

    name = "processes"

    def __init__(self, jobs: int, max_retries: int = DEFAULT_MAX_RETRIES):
        if jobs < 1:
            raise NabnError(f"--jobs must be at least 1, got {jobs}")
        self.jobs, self.max_retries = jobs, max_retries

    def describe(self) -> str:
        """One line saying where the chips run."""
        return f"{self.jobs} local processes"

    def run(self, fn, tasks, inputs):
        """Run the tasks in local worker processes, sharing the inputs through a temporary folder."""
        workspace = Workspace()
        try:
            shared = inputs.map_shared(workspace.share)
            yield from self._run(fn, list(tasks), shared)
        finally:
            workspace.close()

    def _run(self, fn, tasks, shared):
        queue = list(range(len(tasks)))
        deaths: Dict[int, int] = {}
        context = multiprocessing.get_context("spawn")
        while queue:
            threads = max(1, (os.cpu_count() or 1) // self.jobs)
            # Workers are started by the thread that submits (this one, in run_sweep's loop), so the
            # kernel's parent-death signal fires when the process ends only if this is the main thread.
            main = threading.current_thread() is threading.main_thread()
            pool = ProcessPoolExecutor(
                max_workers=self.jobs,
                mp_context=context,
                initializer=_init_worker,
                initargs=(threads, os.getpid(), main),
            )
            running: Dict[Future, int] = {}
            broken = finished = False
            try:
                while queue or running:
                    while queue and len(running) < self.jobs:
                        try:
                            running[pool.submit(_run_local, fn, tasks[queue[0]], shared)] = queue[0]
                        except BrokenProcessPool:  # a worker died since the last chip finished
                            broken = True
                            break
                        queue.pop(0)
                    if broken:
                        break
                    done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                    for future in done:
                        index = running.pop(future)
                        try:
                            row = future.result()
                        except BrokenProcessPool:
                            broken = True
                            running[future] = index
                            continue
                        yield tasks[index], row
                    if broken:
                        break
                finished = True
            finally:
                if not finished:  # an error or an interrupt: chips in flight are lost anyway, do not wait
                    _terminate(pool)
                pool.shutdown(wait=finished, cancel_futures=True)
            if broken:
                lost = []
                for future, index in running.items():
                    if future.done() and not future.cancelled() and future.exception() is None:
                        yield tasks[index], future.result()  # finished before the pool broke
                        continue
                    deaths[index] = deaths.get(index, 0) + 1
                    if deaths[index] > self.max_retries:
                        raise NabnError(
                            f"a worker process died while running chip {tasks[index]!r} "
                            f"{deaths[index]} times (a script that starts a parallel sweep needs "
                            "an `if __name__ == '__main__':` guard); finished chips are in the "
                            "results file, if one was given"
                        )
                    lost.append(index)
                logger.warning("a worker process died; running its %d chip(s) again", len(lost))
                queue = sorted(lost) + queue
            else:
                queue = []


def _terminate(pool: ProcessPoolExecutor) -> None:
    stop = getattr(pool, "terminate_workers", None)  # Python 3.14
    if stop is not None:
        stop()
        return
    for process in list(getattr(pool, "_processes", {}).values()):
        process.terminate()


class RayExecutor(Executor):
    """Ray tasks, one CPU each, on a local runtime or a running cluster.

    Args:
        address: a cluster to join (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``),
            or None to start a local runtime (or use the one this process already runs).
        num_cpus: CPUs of a local runtime (None: all cores).
        max_retries: times Ray runs a chip again when its worker dies.
    """

    name = "ray"

    def __init__(
        self, address: Optional[str] = None, num_cpus: Optional[int] = None, max_retries: int = DEFAULT_MAX_RETRIES
    ):
        self.address, self.num_cpus, self.max_retries = address, num_cpus, max_retries

    def describe(self) -> str:
        """One line saying where the chips run."""
        return f"Ray ({self.address or 'local'})"

    def run(self, fn, tasks, inputs):
        """Run the tasks as Ray tasks, starting (and later stopping) a local runtime when none is up."""
        ray = _import_ray()
        started = False
        if not ray.is_initialized():
            try:
                ray.init(
                    address=self.address,
                    num_cpus=None if self.address else self.num_cpus,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                )
            except (ConnectionError, ValueError, RuntimeError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise NabnError(f"cannot start or join Ray at {self.address or 'a local runtime'}: {first}") from None
            started = True
        try:
            yield from self._run(ray, fn, list(tasks), inputs)
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray, fn, tasks, inputs):
        def share(value):
            if isinstance(value, ModelProto):
                if value.ByteSize() >= 2**31:
                    raise NabnError(
                        "the model is over protobuf's 2 GB limit: run the sweep with --jobs, which hands workers a file"
                    )
                return ray.put(value.SerializeToString())
            if value is None or is_path_like_data(value):
                return None if value is None else absolute(value)
            if isinstance(value, Mapping):
                return ray.put({k: np.asarray(v) for k, v in value.items()})
            if isinstance(value, Iterable) or hasattr(value, "get_next"):
                return ray.put(list(feed_dicts(value)))
            return value

        shared = inputs.map_shared(share)
        options: Dict[str, object] = {"max_retries": self.max_retries, "num_cpus": 1}
        hook = os.environ.get(CRASH_HOOK_ENV)
        if hook:
            options["runtime_env"] = {"env_vars": {CRASH_HOOK_ENV: hook}}
        remote = ray.remote(_run_ray).options(**options)
        pending = {remote.remote(fn, task, shared): task for task in tasks}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    task = pending.pop(ref)
                    try:
                        row = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        cause = getattr(exc, "cause", None)
                        if isinstance(cause, NabnError):
                            raise cause from None
                        raise
                    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as exc:
                        raise NabnError(
                            f"Ray workers died running chip {task!r} {self.max_retries + 1} times "
                            f"({type(exc).__name__}); finished chips are in the results file, "
                            "if one was given"
                        ) from None
                    yield task, row
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)


def _run_ray(fn, task, inputs):
    """Worker side of :class:`RayExecutor`: fetch the shared inputs from the object store, then run the chip."""
    import ray

    from ..runtime import THREADS_ENV

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    os.environ.setdefault(THREADS_ENV, str(max(1, int(cpus))))

    def resolve(value):
        if isinstance(value, ray.ObjectRef):
            value = ray.get(value)
        return resolve_local(value)

    return fn(task, loaded(inputs, resolve))


def _import_ray():
    try:
        import ray
    except ImportError:
        raise NabnError("--ray needs Ray: pip install 'nabn-onnx[ray]'") from None
    return ray


def make_executor(
    jobs: int = 1, ray: Union[bool, str, None] = None, max_retries: int = DEFAULT_MAX_RETRIES
) -> Executor:
    """The executor for ``--jobs`` and ``--ray``.

    Ray when ``ray`` is given (True or "local": a local runtime with ``jobs`` CPUs when
    ``jobs`` > 1; else a cluster address), else local processes when ``jobs`` > 1, else serial.
    """
    if ray not in (None, False):
        _import_ray()  # fail before any work when Ray is missing
        address = None if ray in (True, "local") else str(ray)
        return RayExecutor(address, num_cpus=jobs if jobs > 1 else None, max_retries=max_retries)
    if jobs > 1:
        return ProcessExecutor(jobs, max_retries=max_retries)
    if jobs < 1:
        raise NabnError(f"--jobs must be at least 1, got {jobs}")
    return SerialExecutor()
