"""Compare the statistic estimators that calibration can use, to choose the default.

For each sample model and noise setting, prints test accuracy (mean over chip seeds) after
Algorithm 1 calibration (``method="paper"``, where the estimate is written as is) with:
cumulative average + total variance (the default), cumulative + mean of batch variances
(PyTorch's momentum=None), the paper's EMA (m = 0.999) + mean of batch variances, and
biased batch variances.

Usage::

    python -m tools.results.compare_estimators [--seeds 3] [--models resnet_fused] [--settings mul:0.3,add:0.01]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import nabn_onnx as nb

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
ESTIMATORS = {
    "cumulative+total (default)": nb.Estimator(),
    "cumulative+mean (PyTorch)": nb.Estimator(variance="mean"),
    "ema 0.999+mean (paper)": nb.Estimator(kind="ema", variance="mean"),
    "cumulative+total, biased": nb.Estimator(unbiased=False),
}
SETTINGS = [("mul", 0.3), ("mul", 0.5), ("add", 0.005), ("add", 0.01), ("add", 0.02)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--models", default="resnet_fused,mobilenet_fused")
    parser.add_argument(
        "--settings",
        default=",".join(f"{kind}:{eta:g}" for kind, eta in SETTINGS),
        help="comma-separated noise:eta (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    settings = [(kind, float(eta)) for kind, eta in (s.split(":") for s in args.settings.split(","))]
    test = str(SAMPLES / "digits_test.npz")
    print("| model | noise | eta | " + " | ".join(ESTIMATORS) + " |")
    print("|---|---|---:|" + "---:|" * len(ESTIMATORS))
    for name in args.models.split(","):
        path = SAMPLES / f"{name}.onnx"
        for kind, eta in settings:
            cells = []
            for estimator in ESTIMATORS.values():
                accs = []
                for seed in range(args.seeds):
                    model = nb.calibrate(
                        path,
                        SAMPLES / "digits_calib.npz",
                        noise=nb.make_noise(kind, eta, seed=seed),
                        method="paper",
                        estimator=estimator,
                    ).model
                    accs.append(100 * nb.evaluate(model, test))
                cells.append(f"{np.mean(accs):.1f}")
            print(f"| {name} | {kind} | {eta:g} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
