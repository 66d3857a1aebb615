"""Argument groups shared by the commands: each declares its options once and parses them once.

As in Polygraphy's ``tools/args``: a group is a class whose ``add(parser, ...)`` adds its
options and whose ``parse(args, ...)`` turns the parsed options into the object the library
call takes (``NoiseGroup.parse`` a noise model, ``ChipGridGroup.parse`` the chips of a sweep,
``DeviceGroup.parse`` device parameters, ``ImageFolderGroup.parse`` a data source,
``RuntimeGroup.parse`` the providers, ``MetricReadingGroup.parse`` the output a metric reads).
The groups are stateless (static methods): the parsed values live on the argparse namespace.

The module is above 450 lines because it holds every shared group, most of it option
declarations with their help texts; the noise, device and chip-grid groups share their checks
(:func:`check_kind`, :func:`refuse_device_options`, :func:`refuse_paper_only`) and belong together.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

from ..errors import NabnError
from ..noise import DEVICE_MODELS, NOISE_MODELS, NoiseModel, make_noise

if TYPE_CHECKING:
    from ..calibration.config import CalibrationConfig
    from ..data import ImageFolder

__all__ = [
    "DEVICE_CHOICES",
    "DEVICE_FLAGS",
    "NOISE_CHOICES",
    "NOISE_DEFAULTS",
    "PAPER_ONLY",
    "CalibBatchesGroup",
    "ChipGridGroup",
    "RenamedFlag",
    "DeviceGroup",
    "ImageFolderGroup",
    "LayerSelectionGroup",
    "MethodGroup",
    "MetricGroup",
    "MetricReadingGroup",
    "ModelOutputGroup",
    "NoiseGroup",
    "ParallelGroup",
    "RuntimeGroup",
    "calibration_config",
    "check_kind",
    "noise_suffix",
    "parse_seeds",
    "refuse_device_options",
    "refuse_paper_only",
    "say",
]

#: the --noise choices: every model nabn_onnx.noise registers (the paper's mul/add, then the device models)
NOISE_CHOICES = list(NOISE_MODELS)
#: the device models (drift's --noise choices)
DEVICE_CHOICES = list(DEVICE_MODELS)
#: noise settings of the paper's mul/add models only; a device model refuses them
PAPER_ONLY = ("sigma_t", "sigma_s", "temporal")


def check_kind(kind: str) -> None:
    """Refuse a noise model nabn_onnx.noise does not know (one named by a --device file)."""
    if kind not in NOISE_CHOICES:
        raise NabnError(f"unknown noise model {kind!r}; choose one of {', '.join(NOISE_CHOICES)}")


def refuse_device_options(kind: str, options: dict) -> None:
    """Refuse device parameters given to the paper's mul/add noise."""
    if kind not in DEVICE_MODELS and options:
        raise NabnError(
            f"{', '.join(sorted(options))} apply to device models ({', '.join(DEVICE_MODELS)}), not to {kind.upper()}"
        )


def refuse_paper_only(args: argparse.Namespace, kind: str, parser: argparse.ArgumentParser) -> None:
    """The paper's spreads have no meaning for a device model: refuse them rather than ignore them."""
    given = [name for name in PAPER_ONLY if getattr(args, name) is not None]
    if kind in DEVICE_MODELS and given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        parser.error(f"{flags} apply to the paper's mul/add noise, not to the device model {kind!r}")


#: Noise settings and their defaults; each needs --noise.
NOISE_DEFAULTS = {"eta": None, "sigma_t": 0.2, "sigma_s": 0.1, "seed": 0, "temporal": "element", "include_bias": False}


DEVICE_FLAGS = ("t_inference", "compensation", "levels", "stuck_min", "stuck_max", "clip_sigma")


def noise_suffix(noise: Any) -> str:
    """The default output name's part that names the chip, e.g. ``.mul0.04.seed0``."""
    t = getattr(noise, "t_inference", None)
    scale = f"{noise.eta:g}" if t is None else f".t{t:g}" + ("" if noise.eta == 1 else f".eta{noise.eta:g}")
    return f".{noise.kind}{scale}.seed{noise.seed}"


def parse_seeds(text: str) -> Union[int, List[int]]:
    """``--seeds``: a count K (seeds 0..K-1) or a comma-separated list (sweep, drift and check)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise NabnError(f"--seeds must be a count or comma-separated integers, got {text!r}") from None
    if not values:
        raise NabnError("--seeds is empty")
    return values if "," in text else values[0]


def calibration_config(args: argparse.Namespace, noise: Optional[NoiseModel], **fields: Any) -> CalibrationConfig:
    """The :class:`CalibrationConfig` of the calibrate and diagnose commands' argument groups."""
    from ..calibration.config import CalibrationConfig
    from ..settings import DataSettings, LayerSelection, RuntimeSettings

    return CalibrationConfig(
        method=args.method,
        noise=noise,
        data=DataSettings(args.batch_size, args.max_batches),
        layers=LayerSelection(getattr(args, "include", None), getattr(args, "exclude", None)),
        runtime=RuntimeSettings(RuntimeGroup.parse(args), show_progress=not args.quiet),
        **fields,
    )


def say(args: argparse.Namespace, line: str) -> None:
    """Print a summary line unless -q."""
    if not args.quiet:
        print(line)


class DeviceGroup:
    """A device model's parameters: --device FILE, the device flags and --set KEY=VALUE."""

    @staticmethod
    def add(parser: argparse.ArgumentParser) -> None:
        """A device model's parameters: --device FILE, the device flags and --set KEY=VALUE."""
        group = parser.add_argument_group("device models (pcm, rram, rram-cmo, ideal)")
        group.add_argument(
            "--device",
            metavar="FILE",
            help='device parameters (.json, or .toml on Python 3.11+); may name the model as "noise"; '
            "flags override it",
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

    @staticmethod
    def parse(args: argparse.Namespace) -> Tuple[Any, Dict[str, Any]]:
        """``(kind or None, {parameter: value})`` from --device, the device flags and --set."""
        from ..noise import load_device_file

        options = dict(load_device_file(args.device)) if getattr(args, "device", None) else {}
        kind = options.pop("noise", None)
        for flag in DEVICE_FLAGS:
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


class NoiseGroup:
    """One simulated chip's noise (inject, calibrate, diagnose): --noise, --eta, the paper's spreads, --seed."""

    @staticmethod
    def add(parser: argparse.ArgumentParser, required: bool) -> None:
        """One chip's noise: --noise, --eta, the paper's spreads, --seed, and the device options."""
        group = parser.add_argument_group("noise (the paper's device model, or a device model: see nabn-onnx devices)")
        # required is checked in NoiseGroup.parse, since a --device file may name the model instead
        parser.set_defaults(noise_required=required)
        group.add_argument(
            "--noise",
            choices=NOISE_CHOICES,
            help="MUL: W + W*N_T*N_S; ADD: W + N_T*N_S; pcm, rram, rram-cmo: aihwkit's device models; "
            "ideal: only faults and quantization",
        )
        group.add_argument(
            "--eta",
            type=float,
            help="noise scale eta (mean of N_T); for device models a multiplier of their noise (default 1)",
        )
        # Defaults are filled in by NoiseGroup.parse, so that a setting given without --noise is caught.
        group.add_argument("--sigma-t", type=float, help="temporal spread relative to eta (default 0.2)")
        group.add_argument("--sigma-s", type=float, help="spatial spread of N_S (default 0.1)")
        group.add_argument("--seed", type=int, help="chip instance: the same seed gives the same weights (default 0)")
        group.add_argument(
            "--temporal", choices=["element", "layer"], help="draw N_T per weight element (default) or once per layer"
        )
        group.add_argument(
            "--include-bias", action="store_true", default=None, help="also put noise on analog layers' biases"
        )
        DeviceGroup.add(parser)

    @staticmethod
    def parse(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Optional[NoiseModel]:
        """The noise model the flags describe, or None; a noise setting without --noise is a usage error."""
        file_kind, options = DeviceGroup.parse(args)
        kind = args.noise or file_kind
        if kind is None and getattr(args, "noise_required", False):
            parser.error(f'{args.command} needs --noise (or a --device file naming the model as "noise")')
        if kind is None:
            given = [name for name in NOISE_DEFAULTS if getattr(args, name) is not None]
            if given:
                flags = ", ".join("--" + name.replace("_", "-") for name in given)
                parser.error(
                    f"{flags} need(s) --noise: without it no chip is simulated and the setting would be ignored"
                )
            if options:
                parser.error('device parameters need --noise (or "noise" in the --device file)')
            return None
        refuse_paper_only(args, kind, parser)
        for name, default in NOISE_DEFAULTS.items():
            if getattr(args, name) is None and name != "eta":
                setattr(args, name, default)
        check_kind(kind)
        if kind in DEVICE_MODELS:
            return make_noise(kind, args.eta, seed=args.seed, include_bias=args.include_bias, **options)
        refuse_device_options(kind, options)
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


class ChipGridGroup:
    """The chips a sweep or a gate simulates: a noise model, several etas, several seeds."""

    @staticmethod
    def add(parser: argparse.ArgumentParser, default_seeds: int) -> None:
        """The chips a sweep or a gate simulates: a noise model, several etas, several seeds (declared once)."""
        group = parser.add_argument_group("chips (every eta x seed is one simulated chip)")
        group.add_argument(
            "--noise",
            choices=NOISE_CHOICES,
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
        # defaults filled in by ChipGridGroup.parse, so that a setting a device model ignores is caught
        group.add_argument("--sigma-t", type=float, help="temporal spread relative to eta (default 0.2)")
        group.add_argument("--sigma-s", type=float, help="spatial spread of N_S (default 0.1)")
        group.add_argument("--temporal", choices=["element", "layer"], help="N_T per weight element (default) or layer")
        group.add_argument("--include-bias", action="store_true", help="also put noise on analog layers' biases")
        DeviceGroup.add(parser)

    @staticmethod
    def parse(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Tuple[str, Dict[str, Any], List[float]]:
        """``(noise kind, device parameters, etas)`` of a sweep or a gate, checked."""
        from ..evaluation.sweep import parse_floats

        file_kind, device = DeviceGroup.parse(args)
        kind = args.noise or file_kind
        if kind is None:
            parser.error(f'{args.command} needs --noise (or "noise" in the --device file)')
        check_kind(kind)
        refuse_device_options(kind, device)
        if args.eta is None and kind not in DEVICE_MODELS:
            parser.error(f"--noise {kind} needs --eta")
        refuse_paper_only(args, kind, parser)
        for name in PAPER_ONLY:
            if getattr(args, name) is None:
                setattr(args, name, NOISE_DEFAULTS[name])
        return kind, device, parse_floats(args.eta or "1", "eta")


class ModelOutputGroup:
    """Where a command writes its model: -o/--output and --external-data."""

    @staticmethod
    def add(parser: argparse.ArgumentParser, default: str) -> None:
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


class MethodGroup:
    """--method: the calibration method."""

    @staticmethod
    def add(parser: argparse.ArgumentParser) -> None:
        """--method: the calibration method."""
        from ..calibration import METHODS

        parser.add_argument(
            "--method",
            choices=list(METHODS),
            default="auto",
            help="calibration method: auto (default) takes whichever of delta, paper or their blend keeps "
            "outputs closest to the clean model's on held-out batches; paper: Algorithm 1 (what the "
            "paper's tables use); delta: reference statistics plus the noise-induced shift",
        )


class RuntimeGroup:
    """Where sessions run (--providers), on every command that builds onnxruntime sessions."""

    @staticmethod
    def add(parser: argparse.ArgumentParser) -> None:
        """Where sessions run: one group, on every command that builds onnxruntime sessions."""
        group = parser.add_argument_group("runtime (onnxruntime)")
        group.add_argument(
            "--providers",
            metavar="LIST",
            help="execution providers in order of preference, comma-separated, e.g. "
            "CUDAExecutionProvider,CPUExecutionProvider (default CPUExecutionProvider)",
        )

    @staticmethod
    def parse(args: argparse.Namespace) -> Any:
        """The execution providers --providers names (None: the default)."""
        from ..runtime import parse_providers

        return parse_providers(getattr(args, "providers", None))


class ParallelGroup:
    """Where chips run (--jobs, --ray) and, for a sweep, --results and --resume."""

    @staticmethod
    def add(parser: argparse.ArgumentParser, resumable: bool = True) -> None:
        """Where chips run (--jobs, --ray) and, when ``resumable``, --results and --resume."""
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
            "--resume",
            action="store_true",
            help="continue the sweep in --results: chips already there are not run again",
        )


class LayerSelectionGroup:
    """--include / --exclude: the analog layers a command works on."""

    @staticmethod
    def add(parser: argparse.ArgumentParser) -> None:
        """--include / --exclude: which analog layers a command works on."""
        parser.add_argument("--include", metavar="REGEX", help="only split analog layers whose name matches")
        parser.add_argument("--exclude", metavar="REGEX", help="do not split analog layers whose name matches")


class ImageFolderGroup:
    """How a data path that is a folder of class subfolders is read."""

    @staticmethod
    def add(parser: argparse.ArgumentParser) -> None:
        """How an image folder is read (see :meth:`ImageFolderGroup.parse`)."""
        group = parser.add_argument_group("image folders (when a data path is a folder of class subfolders)")
        group.add_argument(
            "--resize", type=int, help="resize the shorter side to this (default: the crop's longer side)"
        )
        group.add_argument("--crop", help="center crop, N or HxW (default: the model's input size)")
        group.add_argument("--mean", help="per-channel mean after scaling to [0, 1], e.g. 0.485,0.456,0.406")
        group.add_argument("--std", help="per-channel std, e.g. 0.229,0.224,0.225")
        group.add_argument("--layout", choices=["NCHW", "NHWC"], help="input layout (default: guessed from the model)")

    @staticmethod
    def parse(path: str, args: argparse.Namespace) -> Union[str, ImageFolder]:
        """``path`` as given, or an :class:`ImageFolder` with the image options when it is a folder."""
        return ImageFolderGroup.parse_each(args, path)[0]

    @staticmethod
    def parse_each(args: argparse.Namespace, *paths: Optional[str]) -> Tuple[Any, ...]:
        """Each of ``paths`` as given (None stays None), or an :class:`ImageFolder` where it is a folder.

        The image options apply to every folder among them (calibration images in a folder
        and a labelled test ``.npz`` is a usual pair); given with no folder at all, they are
        refused in one line.
        """
        options: Dict[str, Any] = {"resize": args.resize, "layout": args.layout}
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
        given = [f"--{k}" for k, v in options.items() if v is not None]
        present = [p for p in paths if p is not None]
        if given and not any(Path(p).is_dir() for p in present):
            if not present:
                where = "no data was given"
            elif len(present) == 1:
                where = f"{present[0]} is not a folder"
            else:
                where = f"none of {', '.join(present)} is a folder"
            raise NabnError(f"{', '.join(given)} apply to image folders only, and {where}")
        from ..data import ImageFolder

        chosen = {k: v for k, v in options.items() if v is not None}
        return tuple(ImageFolder(p, **chosen) if p is not None and Path(p).is_dir() else p for p in paths)


class MetricGroup:
    """--metric and how it reads the model's outputs and the labels."""

    @staticmethod
    def add(parser: argparse.ArgumentParser, several: bool) -> None:
        """--metric (one, or ``several`` comma-separated) and how it reads the outputs."""
        parser.add_argument(
            "--metric",
            default="top1",
            help="top1 (default), top5, miou, pixel-acc, map50, mar50, or DECODER:METRIC for raw detector "
            "outputs (picodet:map50, picodet:mar50, dbnet:miou, dbnet:pixel-acc)"
            + (", or several comma-separated" if several else ""),
        )
        MetricReadingGroup.add(parser)


class MetricReadingGroup:
    """How a metric reads the model's outputs and the labels (evaluate, sweep, check)."""

    @staticmethod
    def add(parser: argparse.ArgumentParser) -> None:
        """How a metric reads the model's outputs and the labels (declared once for evaluate, sweep and check)."""
        parser.add_argument("--output-name", help="model output the metric reads: name or index (default: the first)")
        parser.add_argument(
            "--ignore-index", type=int, default=255, help="segmentation label never counted (default 255)"
        )
        parser.add_argument(
            "--ignore-background",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="drop background (class 0) pixels (default: yes for miou, as the paper; no for pixel-acc)",
        )
        parser.add_argument("--batch-size", type=int, default=64)

    @staticmethod
    def parse(args: argparse.Namespace) -> Union[int, str, None]:
        """--output-name as the metric takes it: an index when it is a number, else a name."""
        name = args.output_name
        return int(name) if name is not None and name.lstrip("-").isdigit() else name


class RenamedFlag(argparse.Action):
    """An old spelling of a flag: it still works, stores into the new flag's dest, and says the new name once."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        """Store the value under the new flag's dest and log the new spelling."""
        logging.getLogger(__name__).warning(
            "%s is renamed %s; the old spelling goes in a later release", option_string, self.new
        )
        setattr(namespace, self.dest, values)


class CalibBatchesGroup:
    """``--calib-batches`` (the library's ``calib_batches``) of the commands with calibration and test data.

    ``--max-batches`` is its former spelling on these commands and keeps working (with a
    warning); commands with one data set keep ``--max-batches`` (the library's ``max_batches``).
    """

    @staticmethod
    def add(parser: argparse.ArgumentParser) -> None:
        """Declare ``--calib-batches`` and the hidden old spelling."""
        parser.add_argument("--calib-batches", type=int, help="calibrate on at most this many batches")
        parser.add_argument(
            "--max-batches",
            dest="calib_batches",
            type=int,
            action=RenamedFlag,
            new="--calib-batches",
            help=argparse.SUPPRESS,
        )
