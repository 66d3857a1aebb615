"""``nabn-onnx sweep``: vanilla vs NaBN accuracy over noise scales and chips.

The call behind it: :func:`nabn_onnx.evaluation.sweep.run_sweep`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..model import check_output_folder
from .groups import (
    CalibBatchesGroup,
    ChipGridGroup,
    ImageFolderGroup,
    MethodGroup,
    MetricGroup,
    MetricReadingGroup,
    ParallelGroup,
    RuntimeGroup,
    parse_seeds,
    say,
)
from .paths import FILE_SUFFIXES, report_suffix, report_suffixes

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the command's parser; ``common`` holds the options every command shares."""
    p = subparsers.add_parser("sweep", parents=[common], help="vanilla vs NaBN accuracy over noise scales and chips")
    p.add_argument("model", help="input .onnx model (BatchNorm kept or fused)")
    p.add_argument("--calib", required=True, help="calibration data (.npz or image folder)")
    p.add_argument("--test", required=True, help="labelled test data (.npz with 'labels' or image folder)")
    ChipGridGroup.add(p, default_seeds=5)
    MethodGroup.add(p)
    MetricGroup.add(p, several=True)
    CalibBatchesGroup.add(p)
    p.add_argument(
        "--reuse-sessions",
        action="store_true",
        help="one onnxruntime session for all chips, weights fed per chip (slower per run; "
        "pays only for tiny test sets)",
    )
    p.add_argument("--report", help="write the results (.json, .md or .csv)")
    p.add_argument("--plot", help="accuracy against eta (.png, .svg or .pdf; needs matplotlib)")
    ParallelGroup.add(p)
    ImageFolderGroup.add(p)
    RuntimeGroup.add(p)
    p.set_defaults(func=run, subparser=p)


def run(args: argparse.Namespace) -> int:
    """Run the command on parsed ``args``; returns the exit code."""
    parser = args.subparser
    from ..calibration import DEFAULT_ESTIMATOR
    from ..evaluation.executors import make_executor
    from ..evaluation.sweep import SweepPlan, SweepReport, SweepSettings, run_sweep

    kind, device, etas = ChipGridGroup.parse(args, parser)
    seeds = parse_seeds(args.seeds)
    report_path = report_suffix(args.report, report_suffixes(SweepReport))
    plot_path = report_suffix(args.plot, FILE_SUFFIXES["plot"])
    if args.resume and not args.results:
        parser.error("--resume needs --results FILE.jsonl")
    if args.results:
        check_output_folder(Path(args.results))
    plan = SweepPlan.of(
        kind,
        etas,
        seeds,
        sigma_t=args.sigma_t,
        sigma_s=args.sigma_s,
        temporal=args.temporal,
        include_bias=args.include_bias,
        device=device or None,
    )
    providers = RuntimeGroup.parse(args)
    settings = SweepSettings(
        method=args.method,
        metric=args.metric,
        estimator=DEFAULT_ESTIMATOR,
        batch_size=args.batch_size,
        calib_batches=args.calib_batches,
        output=MetricReadingGroup.parse(args),
        ignore_index=args.ignore_index,
        ignore_background=args.ignore_background,
        reuse_sessions=args.reuse_sessions,
        providers=tuple(providers) if providers else None,
    )
    calib_data, test_data = ImageFolderGroup.parse_each(args, args.calib, args.test)
    report = run_sweep(
        args.model,
        calib_data,
        test_data,
        plan,
        settings,
        executor=make_executor(args.jobs, args.ray),
        results=args.results,
        resume=args.resume,
        show_progress=not args.quiet,
    )
    if report_path:
        report.write(report_path)
    if plot_path:
        from ..evaluation.plots import plot_sweep

        plot_sweep(report, plot_path)
    if not args.quiet:
        print(report.table())
    say(args, report.summary())
    return 0
