"""The robustness gate on the sample models: verdicts with and without calibration.

Runs ``nabn_onnx.check`` (top-1 >= a bound, MUL noise, a few chips per eta) on the four
digits models and prints one markdown row per (model, eta): the worst chip's top-1 as it
is and after calibration, and the gate's verdict for each. The README's table comes from::

    python tools/gate_samples.py

(about 40 s on two cores). Options: ``--etas``, ``--seeds``, ``--bound``, ``--method``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nabn_onnx import check  # noqa: E402

MODELS = ("resnet_fused", "resnet_bn", "mobilenet_fused", "mobilenet_bn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--etas", default="0.05,0.1,0.3", help="MUL noise scales (default 0.05,0.1,0.3)")
    parser.add_argument("--seeds", type=int, default=3, help="chips per eta (default 3)")
    parser.add_argument("--bound", type=float, default=0.95, help="top-1 every chip must reach (default 0.95)")
    parser.add_argument("--method", default="auto", help="calibration method (default auto)")
    args = parser.parse_args()
    etas = [float(e) for e in args.etas.split(",")]
    samples = ROOT / "sample_models"
    calib, test = samples / "digits_calib.npz", samples / "digits_test.npz"
    started = time.perf_counter()
    print(f"MUL noise, {args.seeds} chips per eta, gate: top1 >= {args.bound:g} on every chip, method {args.method}\n")
    print("| model | eta | worst chip, uncalibrated | gate | worst chip, calibrated | gate |")
    print("|---|---:|---:|---|---:|---|")
    for name in MODELS:
        reports = [
            check(
                str(samples / f"{name}.onnx"),
                str(calib),
                str(test),
                [f"top1>={args.bound}"],
                calibrated=calibrated,
                noise="mul",
                etas=etas,
                seeds=args.seeds,
                method=args.method,
            )
            for calibrated in (False, True)
        ]
        for eta in etas:
            cells = []
            for report in reports:
                results = [r for r in report.results if r.eta == eta]
                failed = sum(not r.passed for r in results)
                cells += [f"{100 * min(r.value for r in results):.1f}%", f"FAIL ({failed} chips)" if failed else "pass"]
            print(f"| {name} | {eta:g} | " + " | ".join(cells) + " |")
    print(f"\n{time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
