"""How many scored samples a task metric needs to tell two of ``auto``'s candidates apart.

For one chip of one task of :mod:`tools.results.auto_grid` (the same models, data and
batches), both candidates' statistics (from the whole calibration set) are written and the
task metric is computed on the whole test set and on every test sample alone. It prints
both whole-set figures, the per-sample differences ``b - a`` (mean +- standard deviation,
in points) and the samples a paired test at 2 standard errors would need to see that mean
difference: ``(2 sd / mean)^2``. When the per-sample mean is far below the whole-set
difference, the gain comes from something no single sample shows (a detector's ranking of
detections across pages), and scoring on the task metric cannot find it from held-out
samples.

Usage (from the repository root; DBNet and PicoDet need the real-model cache)::

    python -m tools.results.per_sample_gain --task picodet --noise mul --eta 0.1 --seed 0 [--a delta --b blend]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np

from tools.common import write_bn_stats
from tools.results.auto_grid import CACHE, COLUMNS, TASKS, CleanJob, TestRun, _cut, _path


def per_sample(run: TestRun, metric: str) -> np.ndarray:
    """The task metric of every test sample on its own (a model's outputs as :class:`TestRun` kept them)."""
    from nabn_onnx.evaluation import make_metric

    values: List[float] = []
    for outputs, labels in zip(run.batches, run.labels):
        for i in range(len(labels)):
            measure = make_metric(metric)
            mine = [o[i : i + 1] for o in outputs]
            measure.update(mine if getattr(measure, "all_outputs", False) else mine[0], labels[i : i + 1])
            result = measure.result()
            values.append(float(next(iter(result.values())) if isinstance(result, dict) else result))
    return np.asarray(values)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="picodet")
    parser.add_argument("--noise", choices=["mul", "add"], default="mul")
    parser.add_argument("--eta", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--a", choices=COLUMNS, default="delta", help="the candidate compared with (default delta)")
    parser.add_argument("--b", choices=COLUMNS, default="blend", help="the candidate compared (default blend)")
    parser.add_argument("--test-samples", type=int, help="the first N test samples only")
    args = parser.parse_args(argv)

    import nabn_onnx as nb
    from nabn_onnx.calibration import new_stats

    task = TASKS[args.task]
    cache = Path(os.environ.get("NABN_REAL_CACHE", CACHE))
    files = [task.calib, task.test, task.models.get(args.noise, task.model)]
    missing = [str(_path(f, cache)) for f in files if not _path(f, cache).exists()]
    if missing:
        print(f"{args.task}: {', '.join(missing)} missing (python -m tools.samples.make_real_models)")
        return 1
    calib = _cut(_path(task.calib, cache), task.calib_samples)
    test = _cut(_path(task.test, cache), args.test_samples or task.test_samples)
    model = _path(task.models.get(args.noise, task.model), cache)
    clean = CleanJob(model, calib, test, task.metric, task.batch_size)
    calibrator, job = clean.chip(nb.make_noise(args.noise, args.eta, seed=args.seed))
    calibrator.measure_noisy(job, calib)
    assert job.noisy_run is not None and job.clean_run is not None
    runs = {}
    for name in (args.a, args.b):
        write_bn_stats(job.model, new_stats(name, job.names, job.reference, job.noisy_run.stats, job.clean_run.stats))
        runs[name] = TestRun(job.model, test, task.metric, task.batch_size)
    a, b = (per_sample(runs[n], task.metric) for n in (args.a, args.b))
    diff = 100 * (b - a)
    mean, sd = float(diff.mean()), float(diff.std(ddof=1)) if diff.size > 1 else 0.0
    needed = (2 * sd / mean) ** 2 if mean else float("inf")
    print(f"{args.task} {task.metric}, {args.noise} eta {args.eta:g} chip {args.seed}, {diff.size} test samples")
    print(
        f"whole set: {args.a} {100 * runs[args.a].value:.2f}, {args.b} {100 * runs[args.b].value:.2f} "
        f"({100 * (runs[args.b].value - runs[args.a].value):+.2f} points)"
    )
    print(
        f"per sample: {args.b} - {args.a} = {mean:+.2f} +- {sd:.2f} points; "
        f"a paired test at 2 standard errors needs about {needed:.0f} samples"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
