"""Where the time and memory of ``calibrate`` and ``split --data`` go, step by step.

Runs one calibration (or ``nabn_onnx.split`` with data) in this process through the public
API only: a :class:`nabn_onnx.Calibrator` whose named steps (``check``, ``prepare``,
``plan_holdout``, ``measure_inserted``, ``measure_clean``, ``clean_session``, ``put_noise``,
``measure_noisy``, ``choose``, ``write_back``, ``report``) are wrapped on the instance, and
onnxruntime's ``InferenceSession`` wrapped to count the sessions built and time their
``run`` calls. For each step: its wall time, the process's peak RSS during the step (the
kernel's high-water mark, reset at each step's start through ``/proc/self/clear_refs``;
Linux only), the sessions it built and how long ``session.run`` took in it. Steps nest (the
whole job contains its steps); a parent's peak includes its children's. The save at the end
(``--output``) is the job's time not spent in any step.

Session-option experiments (``--arena off``, ``--mem-pattern off``, ``--opt basic``,
``--threads N``) change every onnxruntime session this process builds, to measure what an
option would do before it goes into ``nabn_onnx/runtime.py``.

Usage (from the repository root)::

    python -m tools.bench.profile_calibrate MODEL DATA [--split] [--method auto] [--arena off]
        [--mem-pattern off] [--opt all|extended|basic|disable] [--max-batches N]

Run each variant in its own process (the peak of a process never goes down).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import onnxruntime as ort

import nabn_onnx as nb
from nabn_onnx.calibration import METHODS

#: The calibrator's steps, in the order ``Calibrator.__call__`` runs them.
STEPS = (
    "check",
    "prepare",
    "plan_holdout",
    "measure_inserted",
    "measure_clean",
    "clean_session",
    "put_noise",
    "measure_noisy",
    "choose",
    "write_back",
    "report",
)

OPT_LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


@dataclass
class Step:
    name: str
    depth: int
    seconds: float = 0.0
    peak_kb: int = 0
    rss_after_kb: int = 0
    sessions: int = 0
    session_seconds: float = 0.0
    run_seconds: float = 0.0
    runs: int = 0


class Profiler:
    def __init__(self):
        self.stack: List[Step] = []
        self.steps: List[Step] = []
        self.live_sessions = 0
        self.max_live_sessions = 0

    def _fold_peak(self) -> None:
        """Credit the peak reached so far to every open step, then reset the high-water mark."""
        peak = _status_kb("VmHWM")
        for step in self.stack:
            step.peak_kb = max(step.peak_kb, peak)
        _reset_peak()

    @contextmanager
    def step(self, name: str):
        self._fold_peak()
        step = Step(name, len(self.stack))
        self.steps.append(step)
        self.stack.append(step)
        started = time.perf_counter()
        try:
            yield step
        finally:
            step.seconds = time.perf_counter() - started
            self._fold_peak()
            step.rss_after_kb = _status_kb("VmRSS")
            self.stack.pop()

    def add(self, **counts) -> None:
        for step in self.stack:
            for key, value in counts.items():
                setattr(step, key, getattr(step, key) + value)

    def wrap(self, owner, attr: str, label: Optional[str] = None) -> None:
        """Time every call of ``owner.attr`` as a step (set on ``owner``: an instance keeps its class intact)."""
        original = getattr(owner, attr)
        profiler = self

        def wrapped(*args, **kwargs):
            with profiler.step(label or attr):
                return original(*args, **kwargs)

        setattr(owner, attr, wrapped)


class _TimedSession:
    """An onnxruntime session whose ``run`` calls are timed into the open steps."""

    def __init__(self, session, profiler: Profiler):
        self._session, self._profiler = session, profiler
        profiler.live_sessions += 1
        profiler.max_live_sessions = max(profiler.max_live_sessions, profiler.live_sessions)

    def run(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self._session.run(*args, **kwargs)
        finally:
            self._profiler.add(run_seconds=time.perf_counter() - started, runs=1)

    def __getattr__(self, name):
        return getattr(self._session, name)

    def __del__(self):
        self._profiler.live_sessions -= 1


def install(
    profiler: Profiler, arena: Optional[bool], mem_pattern: Optional[bool], opt: Optional[str], threads: int
) -> None:
    """Wrap ``onnxruntime.InferenceSession``: count and time the sessions built, apply the option experiments."""
    original_session = ort.InferenceSession

    def session_factory(path, sess_options=None, providers=None, **kwargs):
        options = sess_options or ort.SessionOptions()
        if arena is not None:
            options.enable_cpu_mem_arena = arena
        if mem_pattern is not None:
            options.enable_mem_pattern = mem_pattern
        if opt is not None:
            options.graph_optimization_level = OPT_LEVELS[opt]
        if threads:
            options.intra_op_num_threads = threads
        started = time.perf_counter()
        with profiler.step("InferenceSession"):
            session = _TimedSession(original_session(path, options, providers=providers, **kwargs), profiler)
        profiler.add(sessions=1, session_seconds=time.perf_counter() - started)
        return session

    ort.InferenceSession = session_factory  # type: ignore[misc]


def profiled_calibrator(profiler: Profiler, config: nb.CalibrationConfig) -> nb.Calibrator:
    """A calibrator whose named steps are each timed as a step of ``profiler``."""
    calibrator = nb.Calibrator(config)
    for name in STEPS:
        if hasattr(calibrator, name):  # a step a later version renames is left out, not an error
            profiler.wrap(calibrator, name)
    return calibrator


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the clean model (.onnx)")
    parser.add_argument("data", help="calibration data (.npz)")
    parser.add_argument("--split", action="store_true", help="profile split --data instead of calibrate")
    parser.add_argument("--method", default="auto", choices=sorted(METHODS))
    parser.add_argument("--no-noise", action="store_true", help="calibrate the model as the chip (no --noise)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-batches", type=int)
    parser.add_argument("--arena", choices=["on", "off"], help="CPU memory arena (default: as runtime.py sets it)")
    parser.add_argument("--mem-pattern", choices=["on", "off"], help="memory patterns (default: as runtime.py)")
    parser.add_argument("--opt", choices=sorted(OPT_LEVELS), help="graph optimization level for every session")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    profiler = Profiler()

    def flag(value: Optional[str]) -> Optional[bool]:
        return None if value is None else value == "on"

    install(profiler, flag(args.arena), flag(args.mem_pattern), args.opt, args.threads)
    data = nb.DataSettings(batch_size=args.batch_size, max_batches=args.max_batches)
    with tempfile.TemporaryDirectory(prefix="nabn-profile-") as tmp:
        out = Path(tmp) / f"{Path(args.model).stem}.onnx"
        if args.split:
            with profiler.step("split --data"):
                nb.split(args.model, args.data, batch_size=args.batch_size, max_batches=args.max_batches, output=out)
        else:
            noise = None if args.no_noise else nb.make_noise("mul", 0.1, seed=0)
            calibrator = profiled_calibrator(profiler, nb.CalibrationConfig(method=args.method, noise=noise, data=data))
            with profiler.step(f"calibrate --method {args.method} (save: the rest)"):
                calibrator(args.model, args.data, output=out)
    print(
        f"options: arena {args.arena or 'as runtime.py'}, mem pattern {args.mem_pattern or 'as runtime.py'}, "
        f"optimization {args.opt or 'as runtime.py'}; "
        f"at most {profiler.max_live_sessions} sessions alive at once"
    )
    print(
        f"{'step':48} {'seconds':>8} {'peak GB':>8} {'RSS after':>9} {'runs':>7} {'sessions':>8} "
        f"{'build s':>7} {'run s':>7}"
    )
    for step in profiler.steps:
        if step.name == "InferenceSession":
            continue  # counted into the steps that built them
        name = "  " * step.depth + step.name
        print(
            f"{name[:48]:48} {step.seconds:8.2f} {step.peak_kb / 2**20:8.2f} {step.rss_after_kb / 2**20:9.2f} "
            f"{step.runs:7d} {step.sessions:8d} {step.session_seconds:7.2f} {step.run_seconds:7.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
