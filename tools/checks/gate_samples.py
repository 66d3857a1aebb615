"""The robustness gate on the sample models: verdicts with and without calibration.

Runs ``nabn_onnx.check`` (top-1 >= a bound on every chip, a few chips per eta) on the four
digits models (MUL noise) and on the third-party PP-OCR classifier (MUL and ADD noise), and
prints one markdown row per (model, noise, eta): the worst chip's top-1 as it is and after
calibration, and the gate's verdict for each. The README's table comes from::

    python -m tools.checks.gate_samples

(18 minutes on two cores shared with other jobs, 5 of them for the digits models).
``--models resnet_fused,ppocr_cls`` runs a subset;
``--seeds``, ``--etas``, ``--bound`` and ``--method`` change the gate.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from nabn_onnx import check

ROOT = Path(__file__).resolve().parents[2]

SAMPLES = ROOT / "sample_models"
DIGITS = (SAMPLES / "digits_calib.npz", SAMPLES / "digits_test.npz")
OCR = (SAMPLES / "third_party" / "ocr_calib.npz", SAMPLES / "third_party" / "ocr_test.npz")
#: (model file, (calibration data, test data), noise, etas)
CASES = [
    *[
        (SAMPLES / f"{name}.onnx", DIGITS, "mul", (0.05, 0.1, 0.3))
        for name in ("resnet_fused", "resnet_bn", "mobilenet_fused", "mobilenet_bn")
    ],
    (SAMPLES / "third_party" / "ppocr_cls.onnx", OCR, "mul", (0.1,)),
    (SAMPLES / "third_party" / "ppocr_cls.onnx", OCR, "add", (0.01, 0.03)),
]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated model names to run (default: all)")
    parser.add_argument("--seeds", type=int, default=3, help="chips per eta (default 3)")
    parser.add_argument("--bound", type=float, default=0.95, help="top-1 every chip must reach (default 0.95)")
    parser.add_argument("--method", default="auto", help="calibration method (default auto)")
    parser.add_argument("--etas", help="comma-separated etas to run (default: each case's own)")
    args = parser.parse_args(argv)
    only_etas = {float(e) for e in args.etas.split(",")} if args.etas else None
    wanted = set(args.models.split(",")) if args.models else None
    started = time.perf_counter()
    print(f"{args.seeds} chips per eta, gate: top1 >= {args.bound:g} on every chip, method {args.method}\n")
    print("| model | noise | eta | clean | worst chip, uncalibrated | gate | worst chip, calibrated | gate |")
    print("|---|---|---:|---:|---:|---|---:|---|")
    for model, (calib, test), noise, etas in CASES:
        if wanted is not None and model.stem not in wanted:
            continue
        if only_etas is not None:
            etas = tuple(e for e in etas if e in only_etas)
            if not etas:
                continue
        reports = [
            check(
                str(model),
                str(calib),
                str(test),
                [f"top1>={args.bound}"],
                calibrated=calibrated,
                noise=noise,
                etas=list(etas),
                seeds=args.seeds,
                method=args.method,
            )
            for calibrated in (False, True)
        ]
        for eta in etas:
            cells = [f"{100 * reports[0].clean['top1']:.1f}%"]
            for report in reports:
                results = [r for r in report.results if r.eta == eta]
                failed = sum(not r.passed for r in results)
                cells += [f"{100 * min(r.value for r in results):.1f}%", f"FAIL ({failed} chips)" if failed else "pass"]
            print(f"| {model.stem} | {noise.upper()} | {eta:g} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
