"""``nabn-onnx inject``: write one simulated chip's noisy weights (:func:`nabn_onnx.inject`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .groups import ModelOutputGroup, NoiseGroup, noise_suffix, say
from .paths import default_output, guard_paths

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the command's parser; ``common`` holds the options every command shares."""
    p = subparsers.add_parser("inject", parents=[common], help="write one simulated chip's noisy weights")
    p.add_argument("model", help="input .onnx model")
    NoiseGroup.add(p, required=True)
    p.add_argument("--include", metavar="REGEX", help="only layers whose name matches get noise")
    p.add_argument("--exclude", metavar="REGEX", help="layers whose name matches stay clean")
    ModelOutputGroup.add(p, default="MODEL.<noise><eta>.seed<S>.onnx")
    p.set_defaults(func=run, subparser=p)


def run(args: argparse.Namespace) -> int:
    """Run the command on parsed ``args``; returns the exit code."""
    parser = args.subparser
    from ..api import inject

    noise = NoiseGroup.parse(args, parser)
    assert noise is not None  # inject requires --noise: NoiseGroup.parse exits otherwise
    output = Path(args.output) if args.output else default_output(Path(args.model), noise_suffix(noise))
    guard_paths(args, output)
    started = time.perf_counter()
    result = inject(
        args.model, noise, include=args.include, exclude=args.exclude, output=output, external_data=args.external_data
    )
    say(
        args,
        f"injected {noise.label()} noise into "
        f"{len(result.details['tensors'])} weight tensor(s), wrote {output} in "
        f"{time.perf_counter() - started:.2f}s",
    )
    return 0
