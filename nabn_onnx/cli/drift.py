"""``nabn-onnx drift``: accuracy over time since programming (:func:`nabn_onnx.evaluation.drift.drift_sweep`)."""

from __future__ import annotations

import argparse

from ..errors import NabnError
from .groups import DEVICE_CHOICES, CalibBatchesGroup, DeviceGroup, ImageFolderGroup, MethodGroup, parse_seeds, say
from .paths import FILE_SUFFIXES, report_suffix, report_suffixes

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the command's parser; ``common`` holds the options every command shares."""
    p = subparsers.add_parser(
        "drift",
        parents=[common],
        help="accuracy over time since programming: vanilla, drift compensation, NaBN once/each/dynamic",
    )
    p.add_argument("model", help="input .onnx model (BatchNorm kept or fused)")
    p.add_argument("--calib", required=True, help="calibration data (.npz or image folder)")
    p.add_argument("--test", required=True, help="labelled test data (.npz with 'labels' or image folder)")
    p.add_argument("--noise", choices=DEVICE_CHOICES, help="device model (default pcm)")
    p.add_argument("--eta", type=float, help="multiplier of the device's programming and read noise (default 1)")
    p.add_argument("--include-bias", action="store_true", help="also put noise on analog layers' biases")
    p.add_argument(
        "--times",
        default="1s,1h,1d,1mo,1y",
        help="times since programming, comma-separated, in s or with a unit (min, h, d, w, mo, y); "
        "the first is when NaBN-once calibrates (default 1s,1h,1d,1mo,1y)",
    )
    p.add_argument("--seeds", default="3", help="chips: a count K (seeds 0..K-1) or a list 3,7,11 (default 3)")
    p.add_argument("--momentum", type=float, default=0.9, help="dynamic NabnSession momentum (default 0.9)")
    p.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="passes over the calibration data the dynamic session serves before the test (default 2)",
    )
    DeviceGroup.add(p)
    MethodGroup.add(p)
    p.add_argument("--metric", default="top1", help="top1 (default), top5, ...")
    p.add_argument("--batch-size", type=int, default=64)
    CalibBatchesGroup.add(p)
    p.add_argument("--report", help="write the results (.json, .md or .csv)")
    p.add_argument("--plot", help="accuracy against time (.png, .svg or .pdf; needs matplotlib)")
    ImageFolderGroup.add(p)
    p.set_defaults(func=run, subparser=p)


def run(args: argparse.Namespace) -> int:
    """Run the command on parsed ``args``; returns the exit code."""
    from ..evaluation.drift import DriftReport, drift_sweep, parse_times
    from ..noise import DEVICE_MODELS, DeviceNoise, make_noise

    file_kind, options = DeviceGroup.parse(args)
    kind = args.noise or file_kind or "pcm"
    if kind not in DEVICE_MODELS:
        raise NabnError(f"drift needs a device model ({', '.join(DEVICE_MODELS)}), got {kind!r}")
    options.pop("t_inference", None)
    options.pop("compensation", None)
    device = make_noise(kind, args.eta, include_bias=args.include_bias, **options)
    assert isinstance(device, DeviceNoise)  # kind is one of DEVICE_MODELS
    seeds = parse_seeds(args.seeds)
    report_path = report_suffix(args.report, report_suffixes(DriftReport))
    plot_path = report_suffix(args.plot, FILE_SUFFIXES["plot"])
    calib_data, test_data = ImageFolderGroup.parse_each(args, args.calib, args.test)
    report = drift_sweep(
        args.model,
        calib_data,
        test_data,
        device=device,
        times=parse_times(args.times),
        seeds=seeds,
        method=args.method,
        metric=args.metric,
        momentum=args.momentum,
        warmup=args.warmup,
        batch_size=args.batch_size,
        calib_batches=args.calib_batches,
        show_progress=not args.quiet,
    )
    if report_path:
        report.write(report_path)
    if plot_path:
        report.plot(plot_path)
    if not args.quiet:
        print(report.table())
    say(args, report.summary())
    return 0
