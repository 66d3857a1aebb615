"""Benchmark: one onnxruntime session fed per chip against a session per chip, in a sweep.

Run from the repository root::

    python tools/bench_sweep.py [--model sample_models/resnet_fused.onnx] [--chips 3]

Prints, measured in this run:

1. the parts: a session build, one test batch with constant weights, one with the weights
   fed as overridable initializers;
2. the evaluation time of a whole sweep (vanilla and NaBN, ``--chips`` seeds x 3 etas) with
   both strategies, and the ratio per-chip / reuse (> 1: reuse is faster).

The two sweeps must give the same accuracies (checked).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
from onnx import numpy_helper

from nabn_onnx import load_model, make_noise, sweep
from nabn_onnx.evaluation.evaluate import with_overridable
from nabn_onnx.passes.inject import InjectWeightNoisePass, noisy_tensor_names
from nabn_onnx.runtime import SERVE, make_session

ROOT = Path(__file__).resolve().parent.parent
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
    print(f"session build {1e3 * build:.1f} ms; one batch of {batch}: constant weights {1e3 * timings['constant']:.1f} ms, "
          f"fed weights {1e3 * timings['fed']:.1f} ms ({timings['fed'] / timings['constant']:.2f}x)")
    print(f"break-even: reuse pays when a chip's test set is under "
          f"{build / max(timings['fed'] - timings['constant'], 1e-9):.1f} batches")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "sample_models/resnet_fused.onnx"))
    parser.add_argument("--calib", default=str(ROOT / "sample_models/digits_calib.npz"))
    parser.add_argument("--test", default=str(ROOT / "sample_models/digits_test.npz"))
    parser.add_argument("--chips", type=int, default=3, help="seeds per eta")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    _per_batch(Path(args.model), Path(args.test), args.batch_size)
    reports = {}
    for reuse in (False, True):
        reports[reuse] = sweep(args.model, args.calib, args.test, noise="mul", etas=ETAS, seeds=args.chips,
                               batch_size=args.batch_size, reuse_sessions=reuse)
    for a, b in zip(reports[False].rows, reports[True].rows):
        assert abs(a["vanilla"] - b["vanilla"]) <= AGREEMENT and abs(a["nabn"] - b["nabn"]) <= AGREEMENT, (a, b)
    chips = len(reports[True].rows)
    print(f"sweep of {chips} chips ({Path(args.model).name}, {len(ETAS)} etas x {args.chips} seeds), seconds:")
    print(f"{'':24}{'per-chip':>10}{'reuse':>10}{'ratio':>8}")
    for part in ("vanilla", "nabn", "sessions", "calibrate", "total"):
        per_chip, reuse = reports[False].seconds[part], reports[True].seconds[part]
        print(f"{part:24}{per_chip:10.2f}{reuse:10.2f}{per_chip / max(reuse, 1e-9):8.2f}")
    evaluation = {r: reports[r].seconds["vanilla"] + reports[r].seconds["nabn"] for r in (False, True)}
    print(f"evaluation (vanilla + NaBN): per-chip {evaluation[False]:.2f}s, reuse {evaluation[True]:.2f}s, "
          f"ratio per-chip/reuse {evaluation[False] / evaluation[True]:.2f} "
          f"({'reuse' if evaluation[True] < evaluation[False] else 'per-chip sessions'} is faster)")


if __name__ == "__main__":
    main()
