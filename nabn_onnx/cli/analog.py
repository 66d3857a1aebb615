"""``nabn-onnx analog``: insert or strip the analog periphery (:mod:`nabn_onnx.analog`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..analog import insert_analog_io, strip_analog_io
from ..passes.analog_io import AnalogIO
from .groups import ImageFolderGroup, LayerSelectionGroup, say
from .paths import default_output, guard_paths

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the command's parser; ``common`` holds the options every command shares."""
    p = subparsers.add_parser(
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
    LayerSelectionGroup.add(p)
    ImageFolderGroup.add(p)
    p.set_defaults(func=run, subparser=p)


def run(args: argparse.Namespace) -> int:
    """Run the command on parsed ``args``; returns the exit code."""
    parser = args.subparser
    default = ".digital" if args.strip else ".analog"
    output = Path(args.output) if args.output else default_output(Path(args.model), default)
    guard_paths(args, output)
    started = time.perf_counter()
    if args.strip:
        if any(v is not None for v in (args.data, args.out_noise, args.adc_bits, args.dac_bits)):
            parser.error("--strip takes no periphery settings")
        result = strip_analog_io(args.model, output=output, external_data=args.external_data)
        say(
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
    result = insert_analog_io(
        args.model,
        ImageFolderGroup.parse(args.data, args),
        settings,
        include=args.include,
        exclude=args.exclude,
        batch_size=args.batch_size,
        max_batches=args.max_batches,
        output=output,
        external_data=args.external_data,
    )
    stages = [
        f"output noise {settings.out_noise:g}u" if settings.out_noise else "",
        f"{settings.adc_bits}-bit ADC at {settings.out_bound:g}u" if settings.adc_bits else "",
        f"{settings.dac_bits}-bit DAC at {settings.inp_bound:g} max|x|" if settings.dac_bits else "",
    ]
    say(
        args,
        f"inserted {', '.join(x for x in stages if x)} around {len(result.details['layers'])} analog layer(s) "
        f"({len(result.details.get('skipped', {}))} skipped), wrote {output} in "
        f"{time.perf_counter() - started:.2f}s",
    )
    return 0
