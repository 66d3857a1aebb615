"""What each further chip of a sweep costs, with the clean side reused, against one inference pass.

Issue 19's target for a sweep: each chip, with the clean model's side measured once and
reused, at most 3x one plain inference pass over the same data. This runs in one process:

1. ``plain``: one onnxruntime inference pass over the calibration data (session build
   included, the data read with ``numpy.load`` beforehand, batches of ``--batch-size``);
2. ``--chips`` calibrations of one :class:`nabn_onnx.Calibrator` with ``reuse_clean=True``
   (what ``sweep`` runs per worker), each chip a new seed of ``--noise``/``--eta``: the first
   measures the clean side, the others reuse it;

and prints every chip's seconds, its steps, and the ratio of the later chips' mean to the
plain pass. ``--split`` first splits a fused model with the data (as ``sweep`` does), so the
chips see BatchNorms that hold statistics; without it the calibrator inserts and measures
them itself on the first chip (both reuse the clean side).

Usage (from the repository root)::

    python -m tools.bench.bench_chip_reuse MODEL DATA [--chips 4] [--split] [--method auto]
        [--noise mul --eta 0.1] [--batch-size 64] [--max-batches N]
"""

from __future__ import annotations

import argparse
import time
from typing import List, Optional

import numpy as np
import onnxruntime as ort

import nabn_onnx as nb
from nabn_onnx.calibration import METHODS

#: Issue 19: each chip with the clean side reused, at most this many plain inference passes.
TARGET = 3.0


def plain_pass(model: str, data: str, batch_size: int, max_batches: Optional[int]) -> float:
    """Seconds of one plain inference pass (session build and every batch), the data already in memory."""
    with np.load(data) as arrays:
        feeds = {k: arrays[k] for k in arrays.files if k != "labels"}
    started = time.perf_counter()
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if len(names) == 1 and len(feeds) == 1:
        feeds = {names[0]: next(iter(feeds.values()))}
    count = len(next(iter(feeds.values())))
    batches = range(0, count, batch_size)
    for index, lo in enumerate(batches):
        if max_batches is not None and index >= max_batches:
            break
        session.run(None, {name: feeds[name][lo : lo + batch_size] for name in names})
    return time.perf_counter() - started


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("data", help="calibration .npz")
    parser.add_argument("--chips", type=int, default=4, help="chips to calibrate (the first measures the clean side)")
    parser.add_argument("--split", action="store_true", help="split --data first, as sweep does")
    parser.add_argument("--method", choices=METHODS, default="auto")
    parser.add_argument("--noise", choices=["mul", "add"], default="mul")
    parser.add_argument("--eta", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-batches", type=int)
    args = parser.parse_args(argv)
    if args.chips < 2:
        parser.error("--chips must be at least 2: the first chip measures the clean side, the others reuse it")

    plain = plain_pass(args.model, args.data, args.batch_size, args.max_batches)
    model: object = nb.load_model(args.model)
    if args.split:
        model = nb.split(model, args.data, batch_size=args.batch_size, max_batches=args.max_batches).model
    config = nb.CalibrationConfig(method=args.method, data=nb.DataSettings(args.batch_size, args.max_batches))
    calibrator = nb.Calibrator(config, reuse_clean=True)
    seconds: List[float] = []
    print(f"plain inference pass: {plain:.2f} s")
    for seed in range(args.chips):
        started = time.perf_counter()
        result = calibrator.with_noise(nb.make_noise(args.noise, args.eta, seed=seed))(model, args.data)
        seconds.append(time.perf_counter() - started)
        steps = ", ".join(f"{name} {value:.2f}" for name, value in result.report.steps.items() if value >= 0.005)
        print(f"chip {seed}: {seconds[-1]:.2f} s, chose {result.report.chosen} ({steps})")
    later = float(np.mean(seconds[1:]))
    verdict = "PASS" if later <= TARGET * plain else "FAIL"
    print(
        f"chips after the first: {later:.2f} s each = {later / plain:.2f}x the plain pass "
        f"(issue 19 target <= {TARGET:g}x: {verdict}); the first chip: {seconds[0] / plain:.2f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
