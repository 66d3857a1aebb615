"""Command line: ``nabn-onnx <command>``; each command maps onto one library call.

Exit codes: 0 success, 1 a problem with the user's input (one line on stderr), 2 a
command-line usage error (argparse). Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

from . import __version__
from .errors import NabnError
from .io import check_output, check_output_folder
from .progress import Progress

__all__ = ["main"]

logger = logging.getLogger("nabn_onnx")


def _noise_args(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_argument_group("noise (the paper's device model)")
    group.add_argument("--noise", choices=["mul", "add"], required=required,
                       help="MUL: W + W*N_T*N_S; ADD: W + N_T*N_S")
    group.add_argument("--eta", type=float, help="noise scale eta (mean of N_T)")
    group.add_argument("--sigma-t", type=float, default=0.2, help="temporal spread relative to eta (default 0.2)")
    group.add_argument("--sigma-s", type=float, default=0.1, help="spatial spread of N_S (default 0.1)")
    group.add_argument("--seed", type=int, default=0, help="chip instance: the same seed gives the same weights")
    group.add_argument("--temporal", choices=["element", "layer"], default="element",
                       help="draw N_T per weight element (default) or once per layer")
    group.add_argument("--include-bias", action="store_true", help="also put noise on analog layers' biases")


def _make_noise(args, parser):
    from .noise import make_noise

    if args.noise is None:
        for flag in ("eta",):
            if getattr(args, flag) is not None:
                parser.error("--eta needs --noise")
        return None
    if args.eta is None:
        parser.error("--noise needs --eta")
    return make_noise(args.noise, args.eta, sigma_t=args.sigma_t, sigma_s=args.sigma_s, seed=args.seed,
                      temporal=args.temporal, include_bias=args.include_bias)


def _method_arg(parser: argparse.ArgumentParser) -> None:
    from .calibration.engine import METHODS

    parser.add_argument("--method", choices=list(METHODS), default="auto",
                        help="calibration method: auto (default) takes whichever of delta, paper or their blend keeps "
                             "outputs closest to the clean model's on held-out batches; paper: Algorithm 1 (what the "
                             "paper's tables use); delta: reference statistics plus the noise-induced shift")


def _selection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--include", metavar="REGEX", help="only split analog layers whose name matches")
    parser.add_argument("--exclude", metavar="REGEX", help="do not split analog layers whose name matches")


def _default_output(model: Path, suffix: str) -> Path:
    return model.with_name(model.stem + suffix + ".onnx")


def _cmd_split(args, parser) -> int:
    from .api import split

    output = Path(args.output) if args.output else _default_output(Path(args.model), ".split")
    check_output(args.model, output)
    started = time.perf_counter()
    result = split(args.model, data=args.data, include=args.include, exclude=args.exclude,
                   batch_size=args.batch_size, output=output, show_progress=not args.quiet,
                   external_data=args.external_data)
    inserted = result.details.get("inserted", [])
    skipped = result.details.get("skipped", {})
    _say(args, f"split {len(inserted)} layer(s), {len(skipped)} skipped, "
               f"{'measured statistics' if args.data else 'identity placeholders'}, "
               f"wrote {output} in {time.perf_counter() - started:.2f}s")
    return 0


def _cmd_inject(args, parser) -> int:
    from .api import inject

    noise = _make_noise(args, parser)
    output = Path(args.output) if args.output else _default_output(
        Path(args.model), f".{args.noise}{args.eta:g}.seed{args.seed}")
    check_output(args.model, output)
    started = time.perf_counter()
    result = inject(args.model, noise, include=args.include, exclude=args.exclude, output=output,
                    external_data=args.external_data)
    _say(args, f"injected {noise.kind.upper()} noise eta={noise.eta:g} seed={noise.seed} into "
               f"{len(result.details['tensors'])} weight tensor(s), wrote {output} in "
               f"{time.perf_counter() - started:.2f}s")
    return 0


def _cmd_calibrate(args, parser) -> int:
    from .calibration import Estimator, calibrate
    from .io import save_model

    noise = _make_noise(args, parser)
    output = Path(args.output) if args.output else _default_output(Path(args.model), ".nabn")
    check_output(args.model, output)
    if args.report:
        check_output_folder(Path(args.report))
    estimator = Estimator(kind=args.estimator, variance=args.variance, unbiased=not args.biased,
                          momentum=args.momentum)
    result = calibrate(args.model, args.data, noise=noise, method=args.method, estimator=estimator,
                       batch_size=args.batch_size, max_batches=args.max_batches, include=args.include,
                       exclude=args.exclude, reference=args.reference, show_progress=not args.quiet)
    gain = None
    if args.test:
        from .api import measure_gain

        gain = measure_gain(args.model, result.model, args.test, noise=noise, reference=args.reference,
                            metric=args.metric, batch_size=args.batch_size)
    # saved only once everything that can fail on the user's input has run, so an error leaves no file
    save_model(result.model, output, external_data=args.external_data)
    if args.report:
        _write_report(Path(args.report), result.report, gain)
    _say(args, result.report.summary() + f"; wrote {output}")
    if gain is not None:
        clean = "n/a" if gain["clean"] is None else f"{100 * gain['clean']:.1f}%"
        _say(args, f"{gain['metric']} on {Path(args.test).name}: clean {clean}, noisy chip {100 * gain['noisy']:.1f}%, "
                   f"calibrated {100 * gain['calibrated']:.1f}%")
    return 0


def _write_report(path: Path, report, gain=None) -> None:
    from .io import atomic_write_text

    if path.suffix == ".md":
        text = report.to_markdown()
        if gain is not None:
            text += "\n| model | " + gain["metric"] + " |\n|---|---:|\n" + "".join(
                f"| {k} | {'n/a' if gain[k] is None else f'{100 * gain[k]:.2f}%'} |\n"
                for k in ("clean", "noisy", "calibrated"))
        atomic_write_text(path, text)
    else:
        payload = report.to_dict()
        if gain is not None:
            payload["test"] = gain
        atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def _cmd_inspect(args, parser) -> int:
    from .api import inspect_model

    print(inspect_model(args.model, include=args.include, exclude=args.exclude))
    return 0


def _say(args, line: str) -> None:
    if not args.quiet:
        print(line)


def _image_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("image folders (when a data path is a folder of class subfolders)")
    group.add_argument("--resize", type=int, help="resize the shorter side to this (default: the crop's longer side)")
    group.add_argument("--crop", help="center crop, N or HxW (default: the model's input size)")
    group.add_argument("--mean", help="per-channel mean after scaling to [0, 1], e.g. 0.485,0.456,0.406")
    group.add_argument("--std", help="per-channel std, e.g. 0.229,0.224,0.225")
    group.add_argument("--layout", choices=["NCHW", "NHWC"], help="input layout (default: guessed from the model)")


def _data_source(path: str, args):
    """``path`` as given, or an :class:`ImageFolder` with the image options when it is a folder."""
    options = {"resize": args.resize, "layout": args.layout}
    if args.crop:
        height, _, width = args.crop.lower().partition("x")
        try:
            options["crop"] = (int(height), int(width or height))
        except ValueError:
            raise NabnError(f"--crop must be N or HxW, got {args.crop!r}") from None
    from .evaluation.sweep import parse_floats

    for name in ("mean", "std"):
        if getattr(args, name):
            options[name] = tuple(parse_floats(getattr(args, name), name))
    if not Path(path).is_dir():
        given = [f"--{k}" for k, v in options.items() if v is not None]
        if given:
            raise NabnError(f"{', '.join(given)} apply to image folders only, and {path} is not a folder")
        return path
    from .images import ImageFolder

    return ImageFolder(path, **{k: v for k, v in options.items() if v is not None})


def _metric_args(parser: argparse.ArgumentParser, several: bool) -> None:
    parser.add_argument("--metric", default="top1",
                        help="top1 (default), top5, miou, pixel-acc, map50, mar50, or DECODER:METRIC for raw detector "
                             "outputs (picodet:map50, picodet:mar50, dbnet:miou, dbnet:pixel-acc)"
                             + (", or several comma-separated" if several else ""))
    parser.add_argument("--output-name", help="model output the metric reads: name or index (default: the first)")
    parser.add_argument("--ignore-index", type=int, default=255, help="segmentation label never counted (default 255)")
    parser.add_argument("--ignore-background", action=argparse.BooleanOptionalAction, default=None,
                        help="drop background (class 0) pixels (default: yes for miou, as the paper; no for pixel-acc)")
    parser.add_argument("--batch-size", type=int, default=64)


def _output_arg(args):
    name = args.output_name
    return int(name) if name is not None and name.lstrip("-").isdigit() else name


def _report_suffix(path: Optional[str], allowed: Sequence[str]) -> Optional[Path]:
    if path is None:
        return None
    out = Path(path)
    if out.suffix not in allowed:
        raise NabnError(f"report must end in {', '.join(allowed)}, got {out.name}")
    check_output_folder(out)
    return out


def _cmd_evaluate(args, parser) -> int:
    from .evaluation import Evaluator

    evaluator = Evaluator(args.model, output=_output_arg(args))
    with Progress("evaluating", None, enabled=not args.quiet) as bar:
        result = evaluator.run(_data_source(args.data, args), args.metric, batch_size=args.batch_size,
                               max_batches=args.max_batches, ignore_index=args.ignore_index,
                               ignore_background=args.ignore_background, progress=bar)
    if args.json:
        print(json.dumps({"value": result.value, "samples": result.samples, "seconds": round(result.seconds, 3)}))
    else:
        _say(args, result.summary())
    return 0


def _cmd_sweep(args, parser) -> int:
    from .evaluation import sweep
    from .evaluation.sweep import parse_floats

    etas = parse_floats(args.eta, "eta")
    try:
        seed_values = [int(v) for v in args.seeds.split(",") if v.strip()]
    except ValueError:
        raise NabnError(f"--seeds must be a count or comma-separated integers, got {args.seeds!r}") from None
    seeds = seed_values if "," in args.seeds else seed_values[0] if seed_values else 0
    report_path = _report_suffix(args.report, (".json", ".md", ".csv"))
    plot_path = _report_suffix(args.plot, (".png", ".svg", ".pdf"))
    report = sweep(args.model, _data_source(args.calib, args), _data_source(args.test, args), noise=args.noise,
                   etas=etas, seeds=seeds, method=args.method, metric=args.metric, sigma_t=args.sigma_t,
                   sigma_s=args.sigma_s, temporal=args.temporal, include_bias=args.include_bias,
                   batch_size=args.batch_size, calib_batches=args.max_batches, output=_output_arg(args),
                   ignore_index=args.ignore_index, ignore_background=args.ignore_background,
                   reuse_sessions=args.reuse_sessions, show_progress=not args.quiet)
    if report_path:
        report.write(report_path)
    if plot_path:
        from .evaluation.plots import plot_sweep

        plot_sweep(report, plot_path)
    if not args.quiet:
        print(report.table())
    _say(args, report.summary())
    return 0


def _cmd_diagnose(args, parser) -> int:
    from .evaluation import diagnose

    noise = _make_noise(args, parser)
    report_path = _report_suffix(args.report, (".json", ".md"))
    plot_path = _report_suffix(args.plot, (".png", ".svg", ".pdf"))
    report = diagnose(args.model, _data_source(args.data, args), noise=noise, method=args.method, at=args.at,
                      bins=args.bins, batch_size=args.batch_size, max_batches=args.max_batches,
                      show_progress=not args.quiet)
    if report_path:
        report.write(report_path)
    if plot_path:
        from .evaluation.plots import plot_diagnose

        plot_diagnose(report, plot_path)
    if not args.quiet:
        print(report.to_markdown(), end="")
    _say(args, report.summary())
    return 0


def _add_evaluation_commands(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("evaluate", parents=[common], help="measure a model's accuracy (or mIoU) on labelled data")
    p.add_argument("model", help="input .onnx model")
    p.add_argument("--data", required=True, help="labelled test data: .npz with 'labels', or an image folder")
    _metric_args(p, several=True)
    p.add_argument("--max-batches", type=int)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _image_args(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("sweep", parents=[common], help="vanilla vs NaBN accuracy over noise scales and chips")
    p.add_argument("model", help="input .onnx model (BatchNorm kept or fused)")
    p.add_argument("--calib", required=True, help="calibration data (.npz or image folder)")
    p.add_argument("--test", required=True, help="labelled test data (.npz with 'labels' or image folder)")
    p.add_argument("--noise", choices=["mul", "add"], required=True, help="MUL: W + W*N_T*N_S; ADD: W + N_T*N_S")
    p.add_argument("--eta", required=True, help="noise scales, comma-separated (e.g. 0.02,0.04,0.06)")
    p.add_argument("--seeds", default="5", help="chips per eta: a count K (seeds 0..K-1) or a list 3,7,11 (default 5)")
    p.add_argument("--sigma-t", type=float, default=0.2, help="temporal spread relative to eta (default 0.2)")
    p.add_argument("--sigma-s", type=float, default=0.1, help="spatial spread of N_S (default 0.1)")
    p.add_argument("--temporal", choices=["element", "layer"], default="element")
    p.add_argument("--include-bias", action="store_true", help="also put noise on analog layers' biases")
    _method_arg(p)
    _metric_args(p, several=False)
    p.add_argument("--max-batches", type=int, help="calibrate on at most this many batches")
    p.add_argument("--reuse-sessions", action="store_true",
                   help="one onnxruntime session for all chips, weights fed per chip (slower per run; "
                        "pays only for tiny test sets)")
    p.add_argument("--report", help="write the results (.json, .md or .csv)")
    p.add_argument("--plot", help="accuracy against eta (.png, .svg or .pdf; needs matplotlib)")
    _image_args(p)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("diagnose", parents=[common], help="per-layer KL/JS divergence of noisy from clean activations")
    p.add_argument("model", help="input .onnx model (BatchNorm kept or fused)")
    p.add_argument("--data", required=True, help="calibration data (.npz or image folder)")
    _noise_args(p, required=True)
    _method_arg(p)
    p.add_argument("--at", choices=["bn", "activation"], default="bn",
                   help="measure each BatchNorm's output (default) or the activation after it")
    p.add_argument("--bins", type=int, default=200, help="histogram bins in the clean range (default 200)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-batches", type=int)
    p.add_argument("--report", help="write the table (.json or .md)")
    p.add_argument("--plot", help="bar chart with the ratio line (.png, .svg or .pdf; needs matplotlib)")
    _image_args(p)
    p.set_defaults(func=_cmd_diagnose)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``nabn-onnx``."""
    parser = argparse.ArgumentParser(
        prog="nabn-onnx",
        description="Noise-Aware BatchNorm for ONNX models on analog processing-in-memory hardware.",
    )
    parser.add_argument("--version", action="version", version=f"nabn-onnx {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    common.add_argument("-v", "--verbose", action="store_true", help="log details (DEBUG)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("split", parents=[common], help="insert a BatchNormalization after each analog layer")
    p.add_argument("model", help="input .onnx model")
    p.add_argument("--data", help="calibration .npz: measure clean statistics for the inserted BatchNorms")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("-o", "--output", help="output model (default MODEL.split.onnx)")
    p.add_argument("--external-data", action="store_const", const=True, default=None,
                   help="store the output's weights in OUTPUT.data beside it (automatic above 2 GB)")
    _selection_args(p)
    p.set_defaults(func=_cmd_split)

    p = sub.add_parser("inject", parents=[common], help="write one simulated chip's noisy weights")
    p.add_argument("model", help="input .onnx model")
    _noise_args(p, required=True)
    p.add_argument("--include", metavar="REGEX", help="only layers whose name matches get noise")
    p.add_argument("--exclude", metavar="REGEX", help="layers whose name matches stay clean")
    p.add_argument("-o", "--output", help="output model (default MODEL.<noise><eta>.seed<S>.onnx)")
    p.add_argument("--external-data", action="store_const", const=True, default=None,
                   help="store the output's weights in OUTPUT.data beside it (automatic above 2 GB)")
    p.set_defaults(func=_cmd_inject)

    p = sub.add_parser("calibrate", parents=[common], help="re-estimate BatchNorm statistics on a noisy chip")
    p.add_argument("model", help="input .onnx model (BatchNorm kept or fused)")
    p.add_argument("--data", required=True, help="calibration data (.npz keyed by input name)")
    _noise_args(p, required=False)
    _method_arg(p)
    p.add_argument("--estimator", choices=["cumulative", "ema"], default="cumulative",
                   help="combine batch statistics by average (default) or the paper's EMA")
    p.add_argument("--variance", choices=["total", "mean"], default="total",
                   help="pool variance as total variance (default) or mean of batch variances")
    p.add_argument("--biased", action="store_true", help="no Bessel correction of batch variances")
    p.add_argument("--momentum", type=float, default=0.999, help="EMA momentum m (default 0.999, the paper's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-batches", type=int)
    p.add_argument("--reference", help="the clean model, when MODEL is already noisy")
    p.add_argument("--report", help="write the per-layer report (.json or .md)")
    p.add_argument("--test", help="labelled test .npz: report the metric of the clean, noisy and calibrated model")
    p.add_argument("--metric", default="top1",
                   help="metric for --test (top1, top5, miou, pixel-acc, map50, mar50, or DECODER:METRIC such as "
                        "picodet:map50 or dbnet:miou; default top1)")
    p.add_argument("-o", "--output", help="output model (default MODEL.nabn.onnx)")
    p.add_argument("--external-data", action="store_const", const=True, default=None,
                   help="store the output's weights in OUTPUT.data beside it (automatic above 2 GB)")
    _selection_args(p)
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("inspect", parents=[common], help="list analog layers and their BatchNorms")
    p.add_argument("model", help="input .onnx model")
    _selection_args(p)
    p.set_defaults(func=_cmd_inspect)

    _add_evaluation_commands(sub, common)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``nabn-onnx`` with ``argv`` (``sys.argv[1:]`` when None); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("nabn_onnx").setLevel(logging.WARNING)
    try:
        return args.func(args, parser)
    except NabnError as exc:
        print(f"nabn-onnx {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
