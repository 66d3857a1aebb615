"""``nabn-onnx calibrate``: re-estimate BatchNorm statistics on a noisy chip (:func:`nabn_onnx.calibrate`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import NabnError
from .groups import (
    ImageFolderGroup,
    LayerSelectionGroup,
    MethodGroup,
    ModelOutputGroup,
    NoiseGroup,
    RuntimeGroup,
    calibration_config,
    say,
)
from .paths import default_output, guard_paths, report_suffix, report_suffixes

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the command's parser; ``common`` holds the options every command shares."""
    p = subparsers.add_parser("calibrate", parents=[common], help="re-estimate BatchNorm statistics on a noisy chip")
    p.add_argument("model", help="input .onnx model (BatchNorm kept or fused)")
    p.add_argument(
        "--data", required=True, help="calibration data: .npz keyed by input name, or an image folder (see below)"
    )
    NoiseGroup.add(p, required=False)
    MethodGroup.add(p)
    p.add_argument(
        "--estimator",
        choices=["cumulative", "ema"],
        default="cumulative",
        help="combine batch statistics by average (default) or the paper's EMA",
    )
    p.add_argument(
        "--variance",
        choices=["total", "mean"],
        default="total",
        help="pool variance as total variance (default) or mean of batch variances",
    )
    p.add_argument("--biased", action="store_true", help="no Bessel correction of batch variances")
    p.add_argument("--momentum", type=float, help="EMA momentum m (default 0.999, the paper's); needs --estimator ema")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-batches", type=int)
    p.add_argument("--reference", help="the clean model, when MODEL is already noisy")
    p.add_argument("--report", help="write the per-layer report (.json or .md)")
    p.add_argument(
        "--test",
        help="labelled test .npz or image folder of class subfolders: report the metric of the clean, noisy and "
        "calibrated model",
    )
    p.add_argument(
        "--metric",
        default="top1",
        help="metric for --test (top1, top5, miou, pixel-acc, map50, mar50, or DECODER:METRIC such as "
        "picodet:map50 or dbnet:miou; default top1)",
    )
    ModelOutputGroup.add(p, default="MODEL.nabn.onnx")
    LayerSelectionGroup.add(p)
    ImageFolderGroup.add(p)
    RuntimeGroup.add(p)
    p.set_defaults(func=run, subparser=p)


def run(args: argparse.Namespace) -> int:
    """Run the command on parsed ``args``; returns the exit code."""
    parser = args.subparser
    from ..calibration import CalibrationReport, Estimator, calibrate
    from ..model import save_model

    noise = NoiseGroup.parse(args, parser)
    output = Path(args.output) if args.output else default_output(Path(args.model), ".nabn")
    guard_paths(args, output)
    if args.report:
        report_suffix(args.report, report_suffixes(CalibrationReport))
    if args.momentum is not None and args.estimator != "ema":
        parser.error("--momentum applies to --estimator ema only; the cumulative estimator has no momentum")
    estimator = Estimator(
        kind=args.estimator,
        variance=args.variance,
        unbiased=not args.biased,
        momentum=0.999 if args.momentum is None else args.momentum,
    )
    config = calibration_config(args, noise, estimator=estimator)
    data, test = ImageFolderGroup.parse_each(args, args.data, args.test)
    result = calibrate(args.model, data, config, reference=args.reference)
    gain = None
    if test is not None:
        from ..evaluation.evaluate import measure_gain

        gain = measure_gain(
            args.model,
            result.model,
            test,
            noise=noise,
            reference=args.reference,
            metric=args.metric,
            batch_size=args.batch_size,
            providers=RuntimeGroup.parse(args),
        )
    # saved only once everything that can fail on the user's input has run, so an error leaves no file
    written = [path for path in (output, output.with_name(output.name + ".data")) if not path.exists()]
    save_model(result.model, output, external_data=args.external_data)
    if args.report:
        result.report.test = gain
        try:
            result.report.write(args.report)
        except NabnError:  # all of the command's outputs or none: the model goes too
            for path in written:
                path.unlink(missing_ok=True)
            raise
    say(args, result.report.summary() + f"; wrote {output}")
    if args.verbose:
        say(args, "time by step:\n" + "\n".join(result.report.step_lines()))
    if gain is not None:
        clean = "n/a" if gain["clean"] is None else f"{100 * gain['clean']:.1f}%"
        say(
            args,
            f"{gain['metric']} on {Path(args.test).name}: clean {clean}, noisy chip {100 * gain['noisy']:.1f}%, "
            f"calibrated {100 * gain['calibrated']:.1f}%",
        )
    return 0
