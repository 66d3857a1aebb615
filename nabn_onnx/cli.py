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


def _selection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--include", metavar="REGEX", help="only split analog layers whose name matches")
    parser.add_argument("--exclude", metavar="REGEX", help="do not split analog layers whose name matches")


def _default_output(model: Path, suffix: str) -> Path:
    return model.with_name(model.stem + suffix + ".onnx")


def _check_output(model: Path, output: Path) -> None:
    if model.exists() and output.exists() and model.resolve() == output.resolve():
        raise NabnError(f"refusing to overwrite the input model {model}; choose another -o")


def _cmd_split(args, parser) -> int:
    from .api import split

    output = Path(args.output) if args.output else _default_output(Path(args.model), ".split")
    _check_output(Path(args.model), output)
    started = time.perf_counter()
    result = split(args.model, data=args.data, include=args.include, exclude=args.exclude,
                   batch_size=args.batch_size, output=output, show_progress=not args.quiet)
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
    _check_output(Path(args.model), output)
    started = time.perf_counter()
    result = inject(args.model, noise, include=args.include, exclude=args.exclude, output=output)
    _say(args, f"injected {noise.kind.upper()} noise eta={noise.eta:g} seed={noise.seed} into "
               f"{len(result.details['tensors'])} weight tensor(s), wrote {output} in "
               f"{time.perf_counter() - started:.2f}s")
    return 0


def _cmd_calibrate(args, parser) -> int:
    from .calibration import Estimator, calibrate

    noise = _make_noise(args, parser)
    output = Path(args.output) if args.output else _default_output(Path(args.model), ".nabn")
    _check_output(Path(args.model), output)
    estimator = Estimator(kind=args.estimator, variance=args.variance, unbiased=not args.biased,
                          momentum=args.momentum)
    result = calibrate(args.model, args.data, noise=noise, method=args.method, estimator=estimator,
                       batch_size=args.batch_size, max_batches=args.max_batches, include=args.include,
                       exclude=args.exclude, reference=args.reference, output=output,
                       show_progress=not args.quiet)
    if args.report:
        _write_report(Path(args.report), result.report)
    _say(args, result.report.summary() + f"; wrote {output}")
    return 0


def _write_report(path: Path, report) -> None:
    from .io import atomic_write_text

    if path.suffix == ".md":
        atomic_write_text(path, report.to_markdown())
    else:
        atomic_write_text(path, json.dumps(report.to_dict(), indent=2) + "\n")


def _cmd_inspect(args, parser) -> int:
    from .api import inspect_model

    print(inspect_model(args.model, include=args.include, exclude=args.exclude))
    return 0


def _say(args, line: str) -> None:
    if not args.quiet:
        print(line)


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
    _selection_args(p)
    p.set_defaults(func=_cmd_split)

    p = sub.add_parser("inject", parents=[common], help="write one simulated chip's noisy weights")
    p.add_argument("model", help="input .onnx model")
    _noise_args(p, required=True)
    p.add_argument("--include", metavar="REGEX", help="only layers whose name matches get noise")
    p.add_argument("--exclude", metavar="REGEX", help="layers whose name matches stay clean")
    p.add_argument("-o", "--output", help="output model (default MODEL.<noise><eta>.seed<S>.onnx)")
    p.set_defaults(func=_cmd_inject)

    p = sub.add_parser("calibrate", parents=[common], help="re-estimate BatchNorm statistics on a noisy chip")
    p.add_argument("model", help="input .onnx model (BatchNorm kept or fused)")
    p.add_argument("--data", required=True, help="calibration data (.npz keyed by input name)")
    _noise_args(p, required=False)
    p.add_argument("--method", choices=["paper", "delta"], default="paper",
                   help="paper: Algorithm 1 (default); delta: reference statistics plus the noise-induced shift")
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
    p.add_argument("-o", "--output", help="output model (default MODEL.nabn.onnx)")
    _selection_args(p)
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("inspect", parents=[common], help="list analog layers and their BatchNorms")
    p.add_argument("model", help="input .onnx model")
    _selection_args(p)
    p.set_defaults(func=_cmd_inspect)
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
