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
from typing import Optional, Sequence

from .. import __version__
from ..errors import NabnError
from ..model import check_output, check_output_folder, check_paths
from ..progress import Progress

__all__ = ["main"]

logger = logging.getLogger("nabn_onnx")


_NOISE_CHOICES = ["mul", "add", "pcm", "rram", "rram-cmo", "ideal"]


def _noise_args(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_argument_group("noise (the paper's device model, or a device model: see nabn-onnx devices)")
    # required is checked in _make_noise, since a --device file may name the model instead
    parser.set_defaults(noise_required=required)
    group.add_argument(
        "--noise",
        choices=_NOISE_CHOICES,
        help="MUL: W + W*N_T*N_S; ADD: W + N_T*N_S; pcm, rram, rram-cmo: aihwkit's device models; "
        "ideal: only faults and quantization",
    )
    group.add_argument(
        "--eta",
        type=float,
        help="noise scale eta (mean of N_T); for device models a multiplier of their noise (default 1)",
    )
    # Defaults are filled in by _make_noise, so that a setting given without --noise is caught.
    group.add_argument("--sigma-t", type=float, help="temporal spread relative to eta (default 0.2)")
    group.add_argument("--sigma-s", type=float, help="spatial spread of N_S (default 0.1)")
    group.add_argument("--seed", type=int, help="chip instance: the same seed gives the same weights (default 0)")
    group.add_argument(
        "--temporal", choices=["element", "layer"], help="draw N_T per weight element (default) or once per layer"
    )
    group.add_argument(
        "--include-bias", action="store_true", default=None, help="also put noise on analog layers' biases"
    )
    _device_args(parser)


#: Noise settings and their defaults; each needs --noise.
_NOISE_DEFAULTS = {"eta": None, "sigma_t": 0.2, "sigma_s": 0.1, "seed": 0, "temporal": "element", "include_bias": False}


def _device_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("device models (pcm, rram, rram-cmo, ideal)")
    group.add_argument(
        "--device",
        metavar="FILE",
        help='device parameters (.json, or .toml on Python 3.11+); may name the model as "noise"; flags override it',
    )
    group.add_argument("--t-inference", type=float, help="seconds since programming (default 0)")
    group.add_argument("--compensation", choices=["none", "global"], help="global drift compensation (aihwkit's)")
    group.add_argument("--levels", type=int, help="quantize conductances to this many levels")
    group.add_argument("--stuck-min", type=float, help="fraction of devices stuck at g_min")
    group.add_argument("--stuck-max", type=float, help="fraction of devices stuck at g_max")
    group.add_argument("--clip-sigma", type=float, help="clip weights at this many standard deviations per layer")
    group.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other device parameter (repeatable), e.g. --set drift_scale=0.5",
    )


_DEVICE_FLAGS = ("t_inference", "compensation", "levels", "stuck_min", "stuck_max", "clip_sigma")


def _device_options(args):
    """``(kind or None, {parameter: value})`` from --device, the device flags and --set."""
    from ..noise import load_device_file

    options = dict(load_device_file(args.device)) if getattr(args, "device", None) else {}
    kind = options.pop("noise", None)
    for flag in _DEVICE_FLAGS:
        value = getattr(args, flag, None)
        if value is not None:
            options[flag] = value
    for item in getattr(args, "set", None) or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise NabnError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        options[key.strip().replace("-", "_")] = value
    return kind, options


def _make_noise(args, parser):
    """The noise model the flags describe, or None; a noise setting without --noise is a usage error."""
    from ..noise import DEVICE_MODELS, make_noise

    file_kind, options = _device_options(args)
    kind = args.noise or file_kind
    if kind is None and getattr(args, "noise_required", False):
        parser.error(f'{args.command} needs --noise (or a --device file naming the model as "noise")')
    if kind is None:
        given = [name for name in _NOISE_DEFAULTS if getattr(args, name) is not None]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            parser.error(f"{flags} need(s) --noise: without it no chip is simulated and the setting would be ignored")
        if options:
            parser.error('device parameters need --noise (or "noise" in the --device file)')
        return None
    if kind in DEVICE_MODELS:
        # the paper's spreads have no meaning for a device model: refuse them rather than ignore them
        given = [name for name in ("sigma_t", "sigma_s", "temporal") if getattr(args, name) is not None]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            parser.error(f"{flags} apply to the paper's mul/add noise, not to the device model {kind!r}")
    for name, default in _NOISE_DEFAULTS.items():
        if getattr(args, name) is None and name != "eta":
            setattr(args, name, default)
    if kind not in _NOISE_CHOICES:
        raise NabnError(f"unknown noise model {kind!r}; choose one of {', '.join(_NOISE_CHOICES)}")
    if kind in DEVICE_MODELS:
        return make_noise(kind, args.eta, seed=args.seed, include_bias=args.include_bias, **options)
    if options:
        raise NabnError(
            f"{', '.join(sorted(options))} apply to device models ({', '.join(DEVICE_MODELS)}), not to {kind.upper()}"
        )
    if args.eta is None:
        parser.error("--noise needs --eta")
    return make_noise(
        kind,
        args.eta,
        sigma_t=args.sigma_t,
        sigma_s=args.sigma_s,
        seed=args.seed,
        temporal=args.temporal,
        include_bias=args.include_bias,
    )


def _noise_suffix(noise) -> str:
    t = getattr(noise, "t_inference", None)
    scale = f"{noise.eta:g}" if t is None else f".t{t:g}" + ("" if noise.eta == 1 else f".eta{noise.eta:g}")
    return f".{noise.kind}{scale}.seed{noise.seed}"


def _model_output_args(parser: argparse.ArgumentParser, default: str) -> None:
    """Where a command writes its model (declared once for split, inject and calibrate)."""
    group = parser.add_argument_group("output model")
    group.add_argument("-o", "--output", help=f"output model (default {default})")
    group.add_argument(
        "--external-data",
        action="store_const",
        const=True,
        default=None,
        help="store the output's weights in OUTPUT.data beside it (automatic above 2 GB)",
    )


def _chip_grid_args(parser: argparse.ArgumentParser, default_seeds: int) -> None:
    """The chips a sweep or a gate simulates: a noise model, several etas, several seeds (declared once)."""
    group = parser.add_argument_group("chips (every eta x seed is one simulated chip)")
    group.add_argument(
        "--noise",
        choices=_NOISE_CHOICES,
        help="MUL: W + W*N_T*N_S; ADD: W + N_T*N_S; pcm, rram, rram-cmo, ideal: device models",
    )
    group.add_argument(
        "--eta",
        help="noise scales, comma-separated (e.g. 0.02,0.04,0.06); for device models "
        "multipliers of their noise (default 1)",
    )
    group.add_argument(
        "--seeds",
        default=str(default_seeds),
        help=f"chips per eta: a count K (seeds 0..K-1) or a list 3,7,11 (default {default_seeds})",
    )
    # defaults filled in by _chip_grid_noise, so that a setting a device model ignores is caught
    group.add_argument("--sigma-t", type=float, help="temporal spread relative to eta (default 0.2)")
    group.add_argument("--sigma-s", type=float, help="spatial spread of N_S (default 0.1)")
    group.add_argument("--temporal", choices=["element", "layer"], help="N_T per weight element (default) or layer")
    group.add_argument("--include-bias", action="store_true", help="also put noise on analog layers' biases")
    _device_args(parser)


def _chip_grid_noise(args, parser):
    """``(noise kind, device parameters, etas)`` of a sweep or a gate, checked."""
    from ..evaluation.sweep import parse_floats
    from ..noise import DEVICE_MODELS

    file_kind, device = _device_options(args)
    kind = args.noise or file_kind
    if kind is None:
        parser.error(f'{args.command} needs --noise (or "noise" in the --device file)')
    if kind not in _NOISE_CHOICES:
        raise NabnError(f"unknown noise model {kind!r}; choose one of {', '.join(_NOISE_CHOICES)}")
    if kind not in DEVICE_MODELS and device:
        raise NabnError(
            f"{', '.join(sorted(device))} apply to device models ({', '.join(DEVICE_MODELS)}), not to {kind.upper()}"
        )
    if args.eta is None and kind not in DEVICE_MODELS:
        parser.error(f"--noise {kind} needs --eta")
    given = [name for name in ("sigma_t", "sigma_s", "temporal") if getattr(args, name) is not None]
    if kind in DEVICE_MODELS and given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        parser.error(f"{flags} apply to the paper's mul/add noise, not to the device model {kind!r}")
    for name in ("sigma_t", "sigma_s", "temporal"):
        if getattr(args, name) is None:
            setattr(args, name, _NOISE_DEFAULTS[name])
    return kind, device, parse_floats(args.eta or "1", "eta")


def _method_arg(parser: argparse.ArgumentParser) -> None:
    from ..calibration import METHODS

    parser.add_argument(
        "--method",
        choices=list(METHODS),
        default="auto",
        help="calibration method: auto (default) takes whichever of delta, paper or their blend keeps "
        "outputs closest to the clean model's on held-out batches; paper: Algorithm 1 (what the "
        "paper's tables use); delta: reference statistics plus the noise-induced shift",
    )


def _runtime_args(parser: argparse.ArgumentParser) -> None:
    """Where sessions run: one group, on every command that builds onnxruntime sessions."""
    group = parser.add_argument_group("runtime (onnxruntime)")
    group.add_argument(
        "--providers",
        metavar="LIST",
        help="execution providers in order of preference, comma-separated, e.g. "
        "CUDAExecutionProvider,CPUExecutionProvider (default CPUExecutionProvider)",
    )


def _providers(args):
    from ..runtime import parse_providers

    return parse_providers(getattr(args, "providers", None))


def _parallel_args(parser: argparse.ArgumentParser, resumable: bool = True) -> None:
    group = parser.add_argument_group("scale (where chips run" + (", and resuming)" if resumable else ")"))
    group.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="run chips in N local processes (default 1: in this process); with --ray, the CPUs "
        "of the local Ray runtime",
    )
    group.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run chips as Ray tasks: alone, on a local Ray runtime; with ADDRESS (auto, "
        "host:6379, ray://host:10001), on that cluster (needs nabn-onnx[ray])",
    )
    if not resumable:
        return
    group.add_argument(
        "--results", metavar="FILE.jsonl", help="append each finished chip to this JSON-lines file as it ends"
    )
    group.add_argument(
        "--resume", action="store_true", help="continue the sweep in --results: chips already there are not run again"
    )


def _selection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--include", metavar="REGEX", help="only split analog layers whose name matches")
    parser.add_argument("--exclude", metavar="REGEX", help="do not split analog layers whose name matches")


#: the command-line options that name an input file, and what each is
_INPUT_OPTIONS = {
    "model": "the input model",
    "reference": "the reference model (--reference)",
    "data": "the data (--data)",
    "calib": "the calibration data (--calib)",
    "test": "the test data (--test)",
    "device": "the device file (--device)",
}
#: the command-line options that name an output file
_OUTPUT_OPTIONS = {
    "output": "-o/--output",
    "report": "--report",
    "plot": "--plot",
    "junit": "--junit",
    "results": "--results",
}


def _check_paths(args, output: Optional[Path] = None) -> None:
    """Refuse any output (``output``, the default model output, and every output option) that names an input."""
    inputs = {label: getattr(args, name, None) for name, label in _INPUT_OPTIONS.items()}
    outputs = {label: getattr(args, name, None) for name, label in _OUTPUT_OPTIONS.items()}
    if output is not None:
        outputs["-o/--output"] = output
    check_paths(inputs, outputs)


def _default_output(model: Path, suffix: str) -> Path:
    return model.with_name(model.stem + suffix + ".onnx")


def _cmd_split(args, parser) -> int:
    from ..api import split

    output = Path(args.output) if args.output else _default_output(Path(args.model), ".split")
    check_output(args.model, output)
    _check_paths(args, output)
    started = time.perf_counter()
    result = split(
        args.model,
        data=args.data,
        include=args.include,
        exclude=args.exclude,
        batch_size=args.batch_size,
        output=output,
        show_progress=not args.quiet,
        external_data=args.external_data,
        providers=_providers(args),
    )
    inserted = result.details.get("inserted", [])
    skipped = result.details.get("skipped", {})
    _say(
        args,
        f"split {len(inserted)} layer(s), {len(skipped)} skipped, "
        f"{'measured statistics' if args.data else 'identity placeholders'}, "
        f"wrote {output} in {time.perf_counter() - started:.2f}s",
    )
    return 0


def _cmd_inject(args, parser) -> int:
    from ..api import inject

    noise = _make_noise(args, parser)
    output = Path(args.output) if args.output else _default_output(Path(args.model), _noise_suffix(noise))
    check_output(args.model, output)
    _check_paths(args, output)
    started = time.perf_counter()
    result = inject(
        args.model, noise, include=args.include, exclude=args.exclude, output=output, external_data=args.external_data
    )
    _say(
        args,
        f"injected {noise.label()} noise into "
        f"{len(result.details['tensors'])} weight tensor(s), wrote {output} in "
        f"{time.perf_counter() - started:.2f}s",
    )
    return 0


def _calibration_config(args, noise, **fields):
    """The :class:`CalibrationConfig` of the calibrate and diagnose commands' argument groups."""
    from ..calibration.config import CalibrationConfig
    from ..settings import DataSettings, LayerSelection, RuntimeSettings

    return CalibrationConfig(
        method=args.method,
        noise=noise,
        data=DataSettings(args.batch_size, args.max_batches),
        layers=LayerSelection(getattr(args, "include", None), getattr(args, "exclude", None)),
        runtime=RuntimeSettings(_providers(args), show_progress=not args.quiet),
        **fields,
    )


def _cmd_calibrate(args, parser) -> int:
    from ..calibration import Estimator, calibrate
    from ..model import save_model

    noise = _make_noise(args, parser)
    output = Path(args.output) if args.output else _default_output(Path(args.model), ".nabn")
    check_output(args.model, output)
    _check_paths(args, output)
    if args.report:
        _report_suffix(args.report, (".json", ".md"))
    if args.momentum is not None and args.estimator != "ema":
        parser.error("--momentum applies to --estimator ema only; the cumulative estimator has no momentum")
    estimator = Estimator(
        kind=args.estimator,
        variance=args.variance,
        unbiased=not args.biased,
        momentum=0.999 if args.momentum is None else args.momentum,
    )
    config = _calibration_config(args, noise, estimator=estimator)
    result = calibrate(args.model, args.data, config, reference=args.reference)
    gain = None
    if args.test:
        from ..evaluation.evaluate import measure_gain

        gain = measure_gain(
            args.model,
            result.model,
            args.test,
            noise=noise,
            reference=args.reference,
            metric=args.metric,
            batch_size=args.batch_size,
            providers=_providers(args),
        )
    # saved only once everything that can fail on the user's input has run, so an error leaves no file
    save_model(result.model, output, external_data=args.external_data)
    if args.report:
        result.report.test = gain
        result.report.write(args.report)
    _say(args, result.report.summary() + f"; wrote {output}")
    if gain is not None:
        clean = "n/a" if gain["clean"] is None else f"{100 * gain['clean']:.1f}%"
        _say(
            args,
            f"{gain['metric']} on {Path(args.test).name}: clean {clean}, noisy chip {100 * gain['noisy']:.1f}%, "
            f"calibrated {100 * gain['calibrated']:.1f}%",
        )
    return 0


def _cmd_inspect(args, parser) -> int:
    from ..api import inspect_model

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
    from ..evaluation.sweep import parse_floats

    for name in ("mean", "std"):
        if getattr(args, name):
            options[name] = tuple(parse_floats(getattr(args, name), name))
    if not Path(path).is_dir():
        given = [f"--{k}" for k, v in options.items() if v is not None]
        if given:
            raise NabnError(f"{', '.join(given)} apply to image folders only, and {path} is not a folder")
        return path
    from ..data import ImageFolder

    return ImageFolder(path, **{k: v for k, v in options.items() if v is not None})


def _metric_args(parser: argparse.ArgumentParser, several: bool) -> None:
    parser.add_argument(
        "--metric",
        default="top1",
        help="top1 (default), top5, miou, pixel-acc, map50, mar50, or DECODER:METRIC for raw detector "
        "outputs (picodet:map50, picodet:mar50, dbnet:miou, dbnet:pixel-acc)"
        + (", or several comma-separated" if several else ""),
    )
    _metric_reading_args(parser)


def _metric_reading_args(parser: argparse.ArgumentParser) -> None:
    """How a metric reads the model's outputs and the labels (declared once for evaluate, sweep and check)."""
    parser.add_argument("--output-name", help="model output the metric reads: name or index (default: the first)")
    parser.add_argument("--ignore-index", type=int, default=255, help="segmentation label never counted (default 255)")
    parser.add_argument(
        "--ignore-background",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="drop background (class 0) pixels (default: yes for miou, as the paper; no for pixel-acc)",
    )
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
    from ..evaluation import Evaluator

    evaluator = Evaluator(args.model, output=_output_arg(args), providers=_providers(args))
    with Progress("evaluating", None, enabled=not args.quiet) as bar:
        result = evaluator.run(
            _data_source(args.data, args),
            args.metric,
            batch_size=args.batch_size,
            max_batches=args.max_batches,
            ignore_index=args.ignore_index,
            ignore_background=args.ignore_background,
            progress=bar,
        )
    if args.json:
        print(json.dumps({"value": result.value, "samples": result.samples, "seconds": round(result.seconds, 3)}))
    else:
        _say(args, result.summary())
    return 0


def _cmd_sweep(args, parser) -> int:
    from ..calibration import DEFAULT_ESTIMATOR
    from ..evaluation.executors import make_executor
    from ..evaluation.sweep import SweepPlan, SweepSettings, run_sweep

    kind, device, etas = _chip_grid_noise(args, parser)
    seeds = _parse_seeds(args.seeds)
    report_path = _report_suffix(args.report, (".json", ".md", ".csv"))
    plot_path = _report_suffix(args.plot, (".png", ".svg", ".pdf"))
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
    providers = _providers(args)
    settings = SweepSettings(
        method=args.method,
        metric=args.metric,
        estimator=DEFAULT_ESTIMATOR,
        batch_size=args.batch_size,
        calib_batches=args.max_batches,
        output=_output_arg(args),
        ignore_index=args.ignore_index,
        ignore_background=args.ignore_background,
        reuse_sessions=args.reuse_sessions,
        providers=tuple(providers) if providers else None,
    )
    report = run_sweep(
        args.model,
        _data_source(args.calib, args),
        _data_source(args.test, args),
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
    _say(args, report.summary())
    return 0


def _cmd_diagnose(args, parser) -> int:
    from ..evaluation import diagnose

    noise = _make_noise(args, parser)
    report_path = _report_suffix(args.report, (".json", ".md"))
    plot_path = _report_suffix(args.plot, (".png", ".svg", ".pdf"))
    report = diagnose(
        args.model,
        _data_source(args.data, args),
        _calibration_config(args, noise),
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
    _say(args, report.summary())
    return 0


def _cmd_analog(args, parser) -> int:
    from ..model import load_model, save_model
    from ..passes.analog_io import AnalogIO, InsertAnalogIOPass, StripAnalogIOPass, measure_input_ranges

    default = ".digital" if args.strip else ".analog"
    output = Path(args.output) if args.output else _default_output(Path(args.model), default)
    check_output(args.model, output)
    _check_paths(args, output)
    started = time.perf_counter()
    model = load_model(args.model)
    if args.strip:
        if any(v is not None for v in (args.data, args.out_noise, args.adc_bits, args.dac_bits)):
            parser.error("--strip takes no periphery settings")
        result = StripAnalogIOPass()(model)
        if not result.modified:
            raise NabnError(f"{args.model} carries no analog periphery ops (nabn.analog): nothing to strip")
        save_model(model, output, external_data=args.external_data)
        _say(
            args,
            f"stripped the analog periphery of {len(result.details['layers'])} layer(s), wrote {output} in "
            f"{time.perf_counter() - started:.2f}s",
        )
        return 0
    if not args.data:
        parser.error("analog needs --data (calibration data, to measure each layer's input range)")
    settings = AnalogIO(
        out_noise=args.out_noise or 0.0,
        adc_bits=args.adc_bits,
        out_bound=args.out_bound,
        dac_bits=args.dac_bits,
        inp_bound=args.inp_bound,
        seed=args.seed,
    )
    ranges = measure_input_ranges(
        model,
        _data_source(args.data, args),
        batch_size=args.batch_size,
        max_batches=args.max_batches,
        include=args.include,
        exclude=args.exclude,
    )
    result = InsertAnalogIOPass(settings, ranges, include=args.include, exclude=args.exclude)(model)
    if not result.modified:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(result.details.get("skipped", {}).items())[:3])
        raise NabnError("no analog layer to put the periphery around" + (f" ({reasons})" if reasons else ""))
    save_model(model, output, external_data=args.external_data)
    stages = [
        f"output noise {settings.out_noise:g}u" if settings.out_noise else "",
        f"{settings.adc_bits}-bit ADC at {settings.out_bound:g}u" if settings.adc_bits else "",
        f"{settings.dac_bits}-bit DAC at {settings.inp_bound:g} max|x|" if settings.dac_bits else "",
    ]
    _say(
        args,
        f"inserted {', '.join(x for x in stages if x)} around {len(result.details['layers'])} analog layer(s) "
        f"({len(result.details.get('skipped', {}))} skipped), wrote {output} in "
        f"{time.perf_counter() - started:.2f}s",
    )
    return 0


def _cmd_devices(args, parser) -> int:
    from ..noise import NOISE_MODELS, DeviceNoise, device_parameters

    for kind, cls in NOISE_MODELS.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{kind}: {doc}")
        source = getattr(cls, "source", "")
        if source:
            print(f"  source: {source}")
        params = device_parameters(kind)
        if issubclass(cls, DeviceNoise):
            params.pop("eta")
            print("  eta = 1.0 (multiplier of the device's programming and read noise)")
        for name, default in params.items():
            print(f"  {name} = {'(required)' if default is None and name == 'eta' else json.dumps(default)}")
    return 0


def _cmd_drift(args, parser) -> int:
    from ..evaluation.drift import drift_sweep, parse_times
    from ..noise import DEVICE_MODELS, DeviceNoise, make_noise

    file_kind, options = _device_options(args)
    kind = args.noise or file_kind or "pcm"
    if kind not in DEVICE_MODELS:
        raise NabnError(f"drift needs a device model ({', '.join(DEVICE_MODELS)}), got {kind!r}")
    options.pop("t_inference", None)
    options.pop("compensation", None)
    device = make_noise(kind, args.eta, include_bias=args.include_bias, **options)
    assert isinstance(device, DeviceNoise)  # kind is one of DEVICE_MODELS
    seeds = _parse_seeds(args.seeds)
    report_path = _report_suffix(args.report, (".json", ".md", ".csv"))
    plot_path = _report_suffix(args.plot, (".png", ".svg", ".pdf"))
    report = drift_sweep(
        args.model,
        _data_source(args.calib, args),
        _data_source(args.test, args),
        device=device,
        times=parse_times(args.times),
        seeds=seeds,
        method=args.method,
        metric=args.metric,
        momentum=args.momentum,
        warmup=args.warmup,
        batch_size=args.batch_size,
        calib_batches=args.max_batches,
        show_progress=not args.quiet,
    )
    if report_path:
        report.write(report_path)
    if plot_path:
        report.plot(plot_path)
    if not args.quiet:
        print(report.table())
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
    _runtime_args(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("sweep", parents=[common], help="vanilla vs NaBN accuracy over noise scales and chips")
    p.add_argument("model", help="input .onnx model (BatchNorm kept or fused)")
    p.add_argument("--calib", required=True, help="calibration data (.npz or image folder)")
    p.add_argument("--test", required=True, help="labelled test data (.npz with 'labels' or image folder)")
    _chip_grid_args(p, default_seeds=5)
    _method_arg(p)
    _metric_args(p, several=False)
    p.add_argument("--max-batches", type=int, help="calibrate on at most this many batches")
    p.add_argument(
        "--reuse-sessions",
        action="store_true",
        help="one onnxruntime session for all chips, weights fed per chip (slower per run; "
        "pays only for tiny test sets)",
    )
    p.add_argument("--report", help="write the results (.json, .md or .csv)")
    p.add_argument("--plot", help="accuracy against eta (.png, .svg or .pdf; needs matplotlib)")
    _parallel_args(p)
    _image_args(p)
    _runtime_args(p)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser(
        "drift",
        parents=[common],
        help="accuracy over time since programming: vanilla, drift compensation, NaBN once/each/dynamic",
    )
    p.add_argument("model", help="input .onnx model (BatchNorm kept or fused)")
    p.add_argument("--calib", required=True, help="calibration data (.npz or image folder)")
    p.add_argument("--test", required=True, help="labelled test data (.npz with 'labels' or image folder)")
    p.add_argument("--noise", choices=["pcm", "rram", "rram-cmo", "ideal"], help="device model (default pcm)")
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
    _device_args(p)
    _method_arg(p)
    p.add_argument("--metric", default="top1", help="top1 (default), top5, ...")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-batches", type=int, help="calibrate on at most this many batches")
    p.add_argument("--report", help="write the results (.json, .md or .csv)")
    p.add_argument("--plot", help="accuracy against time (.png, .svg or .pdf; needs matplotlib)")
    _image_args(p)
    p.set_defaults(func=_cmd_drift)

    p = sub.add_parser("diagnose", parents=[common], help="per-layer KL/JS divergence of noisy from clean activations")
    p.add_argument("model", help="input .onnx model (BatchNorm kept or fused)")
    p.add_argument("--data", required=True, help="calibration data (.npz or image folder)")
    _noise_args(p, required=True)
    _method_arg(p)
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
    _image_args(p)
    _runtime_args(p)
    p.set_defaults(func=_cmd_diagnose)


def _cmd_check(args, parser) -> int:
    """The robustness gate: 0 passed, 1 a chip missed a threshold, 2 the gate could not run."""
    try:
        return _run_check(args, parser)
    except NabnError as exc:
        # a gate that cannot run is a usage error, not a model that failed: CI must tell them apart
        print(f"nabn-onnx check: error: {exc}", file=sys.stderr)
        return 2


def _run_check(args, parser) -> int:
    from ..evaluation import check
    from ..evaluation.check import parse_threshold
    from ..evaluation.executors import make_executor

    thresholds = [parse_threshold(t, "min") for t in args.min or []]
    thresholds += [parse_threshold(t, "max") for t in args.max or []]
    if not thresholds:
        raise NabnError("give at least one threshold: --min top1=0.95 (or --max NAME=VALUE)")
    report_path = _report_suffix(args.report, (".json",))
    junit_path = _report_suffix(args.junit, (".xml",))
    seeds = _parse_seeds(args.seeds)
    kind, device, etas = _chip_grid_noise(args, parser)
    report = check(
        args.model,
        _data_source(args.data, args),
        _data_source(args.test, args),
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
        calib_batches=args.max_batches,
        test_batches=args.test_batches,
        output=_output_arg(args),
        ignore_index=args.ignore_index,
        ignore_background=args.ignore_background,
        show_progress=not args.quiet,
        providers=_providers(args),
        executor=make_executor(args.jobs, args.ray),
    )
    if report_path:
        report.write(report_path)
    if junit_path:
        report.write(junit_path)
    for failure in report.failures:
        # the failing lines go to stdout even with -q: they are the command's answer
        print(failure.line())
    _say(args, report.summary())
    return 0 if report.passed else 1


def _parse_seeds(text: str):
    """``--seeds``: a count K (seeds 0..K-1) or a comma-separated list (sweep, drift and check)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise NabnError(f"--seeds must be a count or comma-separated integers, got {text!r}") from None
    if not values:
        raise NabnError("--seeds is empty")
    return values if "," in text else values[0]


def _add_check_command(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
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
    _chip_grid_args(p, default_seeds=3)
    _method_arg(p)
    _metric_reading_args(p)
    p.add_argument("--max-batches", type=int, help="calibrate on at most this many batches")
    p.add_argument("--test-batches", type=int, help="evaluate on at most this many batches")
    p.add_argument("--report", help="write the verdict and every chip's numbers as JSON")
    p.add_argument("--junit", help="write JUnit XML (one test case per chip and threshold) for CI test reports")
    _image_args(p)
    _runtime_args(p)
    _parallel_args(p, resumable=False)
    p.set_defaults(func=_cmd_check)


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
    real_add = sub.add_parser

    def add_parser(name, **kwargs):  # every subcommand knows its own parser: usage errors print its usage
        sub_parser = real_add(name, **kwargs)
        sub_parser.set_defaults(subparser=sub_parser)
        return sub_parser

    sub.add_parser = add_parser  # type: ignore[method-assign]

    p = sub.add_parser("split", parents=[common], help="insert a BatchNormalization after each analog layer")
    p.add_argument("model", help="input .onnx model")
    p.add_argument("--data", help="calibration .npz: measure clean statistics for the inserted BatchNorms")
    p.add_argument("--batch-size", type=int, default=64)
    _model_output_args(p, default="MODEL.split.onnx")
    _selection_args(p)
    _runtime_args(p)
    p.set_defaults(func=_cmd_split)

    p = sub.add_parser("inject", parents=[common], help="write one simulated chip's noisy weights")
    p.add_argument("model", help="input .onnx model")
    _noise_args(p, required=True)
    p.add_argument("--include", metavar="REGEX", help="only layers whose name matches get noise")
    p.add_argument("--exclude", metavar="REGEX", help="layers whose name matches stay clean")
    _model_output_args(p, default="MODEL.<noise><eta>.seed<S>.onnx")
    p.set_defaults(func=_cmd_inject)

    p = sub.add_parser("calibrate", parents=[common], help="re-estimate BatchNorm statistics on a noisy chip")
    p.add_argument("model", help="input .onnx model (BatchNorm kept or fused)")
    p.add_argument("--data", required=True, help="calibration data (.npz keyed by input name)")
    _noise_args(p, required=False)
    _method_arg(p)
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
    p.add_argument("--test", help="labelled test .npz: report the metric of the clean, noisy and calibrated model")
    p.add_argument(
        "--metric",
        default="top1",
        help="metric for --test (top1, top5, miou, pixel-acc, map50, mar50, or DECODER:METRIC such as "
        "picodet:map50 or dbnet:miou; default top1)",
    )
    _model_output_args(p, default="MODEL.nabn.onnx")
    _selection_args(p)
    _runtime_args(p)
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("inspect", parents=[common], help="list analog layers and their BatchNorms")
    p.add_argument("model", help="input .onnx model")
    _selection_args(p)
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser(
        "analog",
        parents=[common],
        help="insert (or --strip) the analog periphery: output noise, ADC and DAC as graph ops",
    )
    p.add_argument("model", help="input .onnx model")
    p.add_argument("--data", help="calibration data, to measure each analog layer's input range")
    p.add_argument("--out-noise", type=float, help="output noise std in units of max|W| max|x| (aihwkit's 0.06)")
    p.add_argument("--adc-bits", type=int, help="ADC bits (sign included)")
    p.add_argument("--out-bound", type=float, default=12.0, help="ADC range in units of max|W| max|x| (default 12)")
    p.add_argument("--dac-bits", type=int, help="DAC bits (sign included)")
    p.add_argument("--inp-bound", type=float, default=1.0, help="DAC range in units of max|x| (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the output noise")
    p.add_argument("--strip", action="store_true", help="remove the inserted ops: the original graph comes back")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-batches", type=int, default=8, help="batches to measure input ranges on (default 8)")
    p.add_argument(
        "-o", "--output", help="output model (default MODEL.analog.onnx, or MODEL.digital.onnx with --strip)"
    )
    p.add_argument(
        "--external-data",
        action="store_const",
        const=True,
        default=None,
        help="store the output's weights in OUTPUT.data beside it (automatic above 2 GB)",
    )
    _selection_args(p)
    _image_args(p)
    p.set_defaults(func=_cmd_analog)

    p = sub.add_parser("devices", parents=[common], help="list the noise and device models with their parameters")
    p.set_defaults(func=_cmd_devices)

    _add_evaluation_commands(sub, common)
    _add_check_command(sub, common)
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
        _check_paths(args)
        return args.func(args, args.subparser)
    except NabnError as exc:
        print(f"nabn-onnx {args.command}: error: {exc}", file=sys.stderr)
        return 2 if args.command == "check" else 1  # check: 1 means a chip missed a threshold


if __name__ == "__main__":
    sys.exit(main())
