"""Compare calibration methods (vanilla, paper, delta, auto) on every model in the repo.

For each model, noise kind and eta (negligible to severe) and chip seeds 0..K-1, prints
test accuracy (mean over seeds) of the noisy model without calibration ("vanilla") and
calibrated by each method, plus ``auto - max(vanilla, paper)``, the guarantee the README
states for ``auto``. The models are the six sample exports and the exported variants of
``sample_models/variants`` (fixed batch, float16, initializers as inputs); ``--max-batches``
adds rows calibrated on only that many batches (a few hundred samples, where ``auto``
once chose blindly). Writes the Markdown table to docs/generated/results_methods.md.

Usage::

    python -m tools.results.compare_methods [--seeds 3] [--models resnet_fused,variants/resnet_fused_b8,...]
        [--max-batches 3] [--grid mul:0.1,add:0.01] [--out docs/generated/results_methods.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import nabn_onnx as nb

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
GRIDS = {
    "mul": [0.0, 0.02, 0.05, 0.1, 0.3, 0.5],
    "add": [0.0005, 0.001, 0.002, 0.005, 0.01],
}
METHODS = ("paper", "delta", "auto")


def method_means(report) -> dict:
    """Mean test accuracy (%) per eta: ``{eta: {"vanilla", "paper", "delta", "auto"}}`` and auto's picks."""
    means, picks = {}, {}
    for eta in dict.fromkeys(row["eta"] for row in report.rows):
        rows = [row for row in report.rows if row["eta"] == eta]
        acc = {"vanilla": [100.0 * r["vanilla"] for r in rows if r["method"] == METHODS[0]]}
        for method in METHODS:
            acc[method] = [100.0 * r["nabn"] for r in rows if r["method"] == method]
        means[eta] = {m: float(np.mean(v)) for m, v in acc.items()}
        picks[eta] = [r["chosen"] for r in rows if r["method"] == "auto"]
    return means, picks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--grid", help="comma-separated noise:eta to run instead of the full grid (a quick check)")
    parser.add_argument(
        "--models",
        default="resnet_fused,mobilenet_fused,resnet_bn,mobilenet_bn,"
        "variants/resnet_fused_b8,variants/resnet_bn_b1,variants/resnet_fused_fp16,"
        "variants/resnet_bn_initializers_as_inputs",
    )
    parser.add_argument(
        "--max-batches", default="3", help="comma-separated calibration batch limits for extra rows (empty: none)"
    )
    parser.add_argument("--calib", default=str(SAMPLES / "digits_calib.npz"))
    parser.add_argument("--test", default=str(SAMPLES / "digits_test.npz"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "generated" / "results_methods.md"))
    args = parser.parse_args(argv)
    grids = GRIDS
    if args.grid:
        grids = {}
        for kind, eta in (item.split(":") for item in args.grid.split(",")):
            grids.setdefault(kind, []).append(float(eta))
    lines = [
        (
            "| model | noise | eta | batches | clean | vanilla | paper | delta | auto | auto chose "
            "| auto - max(vanilla, paper) |"
        ),
        "|---|---|---:|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    worst = np.inf
    started = time.perf_counter()
    limits = [None] + [int(v) for v in args.max_batches.split(",") if v.strip()]
    for name in args.models.split(","):
        path = SAMPLES / f"{name}.onnx"
        for kind, etas, limit in [(k, e, m) for m in limits for k, e in grids.items()]:
            # one sweep per (model, noise kind, batch limit): split once, every method on each chip
            report = nb.sweep(
                path,
                args.calib,
                args.test,
                noise=kind,
                etas=etas,
                seeds=args.seeds,
                method=METHODS,
                calib_batches=limit,
            )
            clean = 100.0 * report.clean["test"]
            means, chose_by_eta = method_means(report)
            for eta in etas:
                mean, chose = means[float(eta)], chose_by_eta[float(eta)]
                margin = mean["auto"] - max(mean["vanilla"], mean["paper"])
                worst = min(worst, margin)
                picks = ", ".join(f"{c} x{chose.count(c)}" for c in sorted(set(chose)))
                batches = "all 8" if limit is None else limit
                lines.append(
                    f"| {name} | {kind} | {eta:g} | {batches} | {clean:.1f} | {mean['vanilla']:.1f} "
                    f"| {mean['paper']:.1f} | {mean['delta']:.1f} | {mean['auto']:.1f} | {picks} "
                    f"| {margin:+.1f} |"
                )
                print(lines[-1], flush=True)
    table = "\n".join(lines)
    command = (
        "python -m tools.results.compare_methods --seeds "
        + str(args.seeds)
        + (f" --max-batches {args.max_batches}" if args.max_batches else "")
    )
    text = (
        f"# Calibration methods compared\n\nMade by `{command}` ({time.perf_counter() - started:.0f} s). "
        f"Test accuracy (%) on `{Path(args.test).name}`, mean over chip seeds 0..{args.seeds - 1}; calibration on "
        f"`{Path(args.calib).name}`. Worst `auto - max(vanilla, paper)`: {worst:+.1f} points.\n\n{table}\n"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"worst auto - max(vanilla, paper): {worst:+.1f} points; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
