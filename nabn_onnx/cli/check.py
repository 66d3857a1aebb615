"""``nabn-onnx check``: the robustness gate (:func:`nabn_onnx.evaluation.check`).

Exit 0 passed, 1 a chip missed a threshold, 2 the gate could not run.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import NabnError
from .groups import (
    CalibBatchesGroup,
    ChipGridGroup,
    ImageFolderGroup,
    MethodGroup,
    MetricReadingGroup,
    ParallelGroup,
    RuntimeGroup,
    parse_seeds,
    say,
)
from .paths import FILE_SUFFIXES, report_suffix

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the command's parser; ``common`` holds the options every command shares."""
    p = subparsers.add_parser(
        "check",
        parents=[common],
        help="robustness gate: exit 0 when every simulated chip meets every threshold, 1 when not",
    )
    p.add_argument("model", help="input .onnx model (BatchNorm kept or fused)")
    p.add_argument("--data", required=True, help="calibration data (.npz or image folder)")
    p.add_argument("--test", required=True, help="labelled test data (.npz with 'labels' or image folder)")
    p.add_argument(
        "--min",
        action="append",
        metavar="METRIC=VALUE",
        help="every chip must reach at least VALUE (a fraction, or a percentage: top1=95%%); repeatable; "
        "metrics: top1, top5, top<k>, miou, pixel-acc",
    )
    p.add_argument(
        "--max",
        action="append",
        metavar="METRIC=VALUE",
        help="every chip must stay at most VALUE (for metrics where lower is better); repeatable",
    )
    p.add_argument(
        "--calibrated",
        action="store_true",
        help="judge each chip after NaBN calibration on --data (default: the noisy chip as it is)",
    )
    ChipGridGroup.add(p, default_seeds=3)
    MethodGroup.add(p)
    MetricReadingGroup.add(p)
    CalibBatchesGroup.add(p)
    p.add_argument("--test-batches", type=int, help="evaluate on at most this many batches")
    p.add_argument("--report", help="write the verdict and every chip's numbers as JSON")
    p.add_argument("--junit", help="write JUnit XML (one test case per chip and threshold) for CI test reports")
    ImageFolderGroup.add(p)
    RuntimeGroup.add(p)
    ParallelGroup.add(p, resumable=False)
    p.set_defaults(func=run, subparser=p)


def run(args: argparse.Namespace) -> int:
    """The robustness gate: 0 passed, 1 a chip missed a threshold, 2 the gate could not run."""
    try:
        return _run(args)
    except NabnError as exc:
        # a gate that cannot run is a usage error, not a model that failed: CI must tell them apart
        print(f"nabn-onnx check: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    parser = args.subparser
    from ..evaluation import check
    from ..evaluation.check import parse_threshold
    from ..evaluation.executors import make_executor

    thresholds = [parse_threshold(t, "min") for t in args.min or []]
    thresholds += [parse_threshold(t, "max") for t in args.max or []]
    if not thresholds:
        raise NabnError("give at least one threshold: --min top1=0.95 (or --max NAME=VALUE)")
    report_path = report_suffix(args.report, FILE_SUFFIXES["check --report"])
    junit_path = report_suffix(args.junit, FILE_SUFFIXES["check --junit"])
    seeds = parse_seeds(args.seeds)
    kind, device, etas = ChipGridGroup.parse(args, parser)
    calib_data, test_data = ImageFolderGroup.parse_each(args, args.data, args.test)
    report = check(
        args.model,
        calib_data,
        test_data,
        thresholds,
        calibrated=args.calibrated,
        noise=kind,
        etas=etas,
        seeds=seeds,
        device=device or None,
        method=args.method,
        sigma_t=args.sigma_t,
        sigma_s=args.sigma_s,
        temporal=args.temporal,
        include_bias=args.include_bias,
        batch_size=args.batch_size,
        calib_batches=args.calib_batches,
        test_batches=args.test_batches,
        output=MetricReadingGroup.parse(args),
        ignore_index=args.ignore_index,
        ignore_background=args.ignore_background,
        show_progress=not args.quiet,
        providers=RuntimeGroup.parse(args),
        executor=make_executor(args.jobs, args.ray),
    )
    if report_path:
        report.write(report_path)
    if junit_path:
        report.write(junit_path)
    for failure in report.failures:
        # the failing lines go to stdout even with -q: they are the command's answer
        print(failure.line())
    say(args, report.summary())
    return 0 if report.passed else 1
