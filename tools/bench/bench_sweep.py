"""Benchmark sweeps: sessions per chip against one fed session; chips per minute serially, in 2 processes, on Ray.

Run from the repository root::

    python -m tools.bench.bench_sweep [--model sample_models/resnet_fused.onnx] [--chips 3] [--scale-chips 4]
        [--etas 0.05,0.1,0.2] [--no-ray]

Prints, measured in this run:

1. the parts: a session build, one test batch with constant weights, one with the weights
   fed as overridable initializers;
2. the evaluation time of a whole sweep (vanilla and NaBN, ``--chips`` seeds x 3 etas) with
   both strategies, and the ratio per-chip / reuse (> 1: reuse is faster);
3. chips per minute of one sweep (``--scale-chips`` seeds x 3 etas) run serially, with
   ``--jobs 2`` (two local processes) and on a local Ray runtime with 2 CPUs, wall time of
   the whole :func:`run_sweep` (split, clean evaluation, process start-up included; Ray's
   runtime start is timed apart, since a cluster is started once for many sweeps), and
   each one's speed-up over serial. A serial run with one thread per operator (what each
   of the two workers gets) tells parallelism apart from onnxruntime's threading.
   ``--no-ray`` skips Ray. Speed-ups are printed against both serial runs.

The two session strategies must give the same accuracies (checked), and the three
executors the same rows exactly (checked).
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import numpy as np
from onnx import numpy_helper

from nabn_onnx import InjectWeightNoisePass, load_model, make_noise, sweep
from nabn_onnx.evaluation import ProcessExecutor, RayExecutor, SerialExecutor, SweepPlan, SweepSettings, run_sweep

# the two session strategies themselves are internals (not public API: see tools/README.md, "Private names")
from nabn_onnx.evaluation.evaluate import with_overridable
from nabn_onnx.passes.inject import noisy_tensor_names
from nabn_onnx.runtime import SERVE, THREADS_ENV, make_session

ROOT = Path(__file__).resolve().parents[2]
ETAS = (0.05, 0.1, 0.2)
REPEATS = 20
#: Accuracies of the two strategies may differ by rounding (pre-packed vs plain kernels).
AGREEMENT = 2 / 500


def _per_batch(model_path: Path, test: Path, batch: int) -> None:
    model = load_model(model_path)
    names = noisy_tensor_names(model)
    noisy = InjectWeightNoisePass(make_noise("mul", 0.1))(copy.deepcopy(model)).model
    weights = {t.name: numpy_helper.to_array(t) for t in noisy.graph.initializer if t.name in names}
    with np.load(test) as data:
        x = data["input"][:batch]
    started = time.perf_counter()
    for _ in range(5):
        constant = make_session(noisy, optimization=SERVE)
    build = (time.perf_counter() - started) / 5
    fed = make_session(with_overridable(model, names), optimization=SERVE)
    timings = {}
    for label, session, feeds in (("constant", constant, {"input": x}), ("fed", fed, {"input": x, **weights})):
        session.run(None, feeds)
        started = time.perf_counter()
        for _ in range(REPEATS):
            session.run(None, feeds)
        timings[label] = (time.perf_counter() - started) / REPEATS
    print(
        f"session build {1e3 * build:.1f} ms; one batch of {batch}: "
        f"constant weights {1e3 * timings['constant']:.1f} ms, "
        f"fed weights {1e3 * timings['fed']:.1f} ms ({timings['fed'] / timings['constant']:.2f}x)"
    )
    print(
        f"break-even: reuse pays when a chip's test set is under "
        f"{build / max(timings['fed'] - timings['constant'], 1e-9):.1f} batches"
    )


def _chips_per_minute(args) -> None:
    plan = SweepPlan.of("mul", args.etas, args.scale_chips)
    settings = SweepSettings(batch_size=args.batch_size)
    chips = len(plan.tasks())
    executors = [("serial", SerialExecutor()), ("serial, 1 thread", SerialExecutor()), ("--jobs 2", ProcessExecutor(2))]
    ray_start = None
    if not args.no_ray:
        import ray

        started = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
        ray_start = time.perf_counter() - started
        executors.append(("Ray, 2 workers", RayExecutor()))
    rows, seconds = {}, {}
    try:
        for label, executor in executors:
            if label == "serial, 1 thread":  # what each of 2 workers gets: tells parallelism from threading
                os.environ[THREADS_ENV] = "1"
            started = time.perf_counter()
            try:
                report = run_sweep(args.model, args.calib, args.test, plan, settings, executor=executor)
            finally:
                os.environ.pop(THREADS_ENV, None)
            seconds[label] = time.perf_counter() - started
            rows[label] = report.rows
    finally:
        if ray_start is not None:
            ray.shutdown()
    for label in rows:
        assert rows[label] == rows["serial"], f"{label} rows differ from the serial rows"
    print(
        f"\nchips per minute, one sweep of {chips} chips ({Path(args.model).name}, {len(args.etas)} etas x "
        f"{args.scale_chips} seeds, method auto), {os.cpu_count()} cores:"
    )
    print(f"{'executor':18}{'seconds':>9}{'chips/min':>11}{'vs serial':>11}{'vs 1 thread':>13}")
    for label, wall in seconds.items():
        print(
            f"{label:18}{wall:9.1f}{60 * chips / wall:11.1f}{seconds['serial'] / wall:11.2f}"
            f"{seconds['serial, 1 thread'] / wall:13.2f}"
        )
    if ray_start is not None:
        print(f"(Ray runtime start, not included above: {ray_start:.1f}s); rows identical on all executors")
    else:
        print("rows identical on all executors")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "sample_models/resnet_fused.onnx"))
    parser.add_argument("--calib", default=str(ROOT / "sample_models/digits_calib.npz"))
    parser.add_argument("--test", default=str(ROOT / "sample_models/digits_test.npz"))
    parser.add_argument("--chips", type=int, default=3, help="seeds per eta")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--scale-chips", type=int, default=4, help="seeds per eta of the chips-per-minute sweep")
    parser.add_argument("--no-ray", action="store_true", help="skip Ray in the chips-per-minute comparison")
    parser.add_argument("--only-scale", action="store_true", help="only the chips-per-minute comparison")
    parser.add_argument("--etas", default=",".join(f"{e:g}" for e in ETAS), help="comma-separated (%(default)s)")
    args = parser.parse_args(argv)
    args.etas = [float(e) for e in args.etas.split(",")]
    if args.only_scale:
        _chips_per_minute(args)
        return

    _per_batch(Path(args.model), Path(args.test), args.batch_size)
    reports = {}
    for reuse in (False, True):
        reports[reuse] = sweep(
            args.model,
            args.calib,
            args.test,
            noise="mul",
            etas=args.etas,
            seeds=args.chips,
            batch_size=args.batch_size,
            reuse_sessions=reuse,
        )
    for a, b in zip(reports[False].rows, reports[True].rows):
        assert abs(a["vanilla"] - b["vanilla"]) <= AGREEMENT and abs(a["nabn"] - b["nabn"]) <= AGREEMENT, (a, b)
    chips = len(reports[True].rows)
    print(f"sweep of {chips} chips ({Path(args.model).name}, {len(args.etas)} etas x {args.chips} seeds), seconds:")
    print(f"{'':24}{'per-chip':>10}{'reuse':>10}{'ratio':>8}")
    for part in ("vanilla", "nabn", "sessions", "calibrate", "total"):
        per_chip, reuse = reports[False].seconds[part], reports[True].seconds[part]
        print(f"{part:24}{per_chip:10.2f}{reuse:10.2f}{per_chip / max(reuse, 1e-9):8.2f}")
    evaluation = {r: reports[r].seconds["vanilla"] + reports[r].seconds["nabn"] for r in (False, True)}
    print(
        f"evaluation (vanilla + NaBN): per-chip {evaluation[False]:.2f}s, reuse {evaluation[True]:.2f}s, "
        f"ratio per-chip/reuse {evaluation[False] / evaluation[True]:.2f} "
        f"({'reuse' if evaluation[True] < evaluation[False] else 'per-chip sessions'} is faster)"
    )
    _chips_per_minute(args)


if __name__ == "__main__":
    main()
