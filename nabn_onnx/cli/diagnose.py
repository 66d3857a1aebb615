"""``nabn-onnx diagnose``: per-layer divergence of noisy from clean activations.

The call behind it: :func:`nabn_onnx.evaluation.diagnose`.
"""

from __future__ import annotations

import argparse

from .groups import ImageFolderGroup, MethodGroup, NoiseGroup, RuntimeGroup, calibration_config, say
from .paths import FILE_SUFFIXES, report_suffix, report_suffixes

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the command's parser; ``common`` holds the options every command shares."""
    p = subparsers.add_parser(
        "diagnose", parents=[common], help="per-layer KL/JS divergence of noisy from clean activations"
    )
    p.add_argument("model", help="input .onnx model (BatchNorm kept or fused)")
    p.add_argument("--data", required=True, help="calibration data (.npz or image folder)")
    NoiseGroup.add(p, required=True)
    MethodGroup.add(p)
    p.add_argument(
        "--at",
        choices=["bn", "activation"],
        default="bn",
        help="measure each BatchNorm's output (default) or the activation after it",
    )
    p.add_argument("--bins", type=int, default=200, help="histogram bins in the clean range (default 200)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-batches", type=int)
    p.add_argument("--report", help="write the table (.json or .md)")
    p.add_argument("--plot", help="bar chart with the ratio line (.png, .svg or .pdf; needs matplotlib)")
    ImageFolderGroup.add(p)
    RuntimeGroup.add(p)
    p.set_defaults(func=run, subparser=p)


def run(args: argparse.Namespace) -> int:
    """Run the command on parsed ``args``; returns the exit code."""
    parser = args.subparser
    from ..evaluation import DiagnoseReport, diagnose

    noise = NoiseGroup.parse(args, parser)
    report_path = report_suffix(args.report, report_suffixes(DiagnoseReport))
    plot_path = report_suffix(args.plot, FILE_SUFFIXES["plot"])
    report = diagnose(
        args.model,
        ImageFolderGroup.parse(args.data, args),
        calibration_config(args, noise),
        at=args.at,
        bins=args.bins,
    )
    if report_path:
        report.write(report_path)
    if plot_path:
        from ..evaluation.plots import plot_diagnose

        plot_diagnose(report, plot_path)
    if not args.quiet:
        print(report.to_markdown(), end="")
    say(args, report.summary())
    return 0
