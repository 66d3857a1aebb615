"""``nabn-onnx split``: insert a BatchNormalization after each analog layer (:func:`nabn_onnx.split`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .groups import ImageFolderGroup, LayerSelectionGroup, ModelOutputGroup, RuntimeGroup, say
from .paths import default_output, guard_paths

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the command's parser; ``common`` holds the options every command shares."""
    p = subparsers.add_parser("split", parents=[common], help="insert a BatchNormalization after each analog layer")
    p.add_argument("model", help="input .onnx model")
    p.add_argument(
        "--data",
        help="calibration .npz or image folder: measure clean statistics for the inserted BatchNorms",
    )
    p.add_argument("--batch-size", type=int, default=64)
    ModelOutputGroup.add(p, default="MODEL.split.onnx")
    LayerSelectionGroup.add(p)
    ImageFolderGroup.add(p)
    RuntimeGroup.add(p)
    p.set_defaults(func=run, subparser=p)


def run(args: argparse.Namespace) -> int:
    """Run the command on parsed ``args``; returns the exit code."""
    from ..api import split

    output = Path(args.output) if args.output else default_output(Path(args.model), ".split")
    guard_paths(args, output)
    started = time.perf_counter()
    result = split(
        args.model,
        data=ImageFolderGroup.parse_each(args, args.data)[0],
        include=args.include,
        exclude=args.exclude,
        batch_size=args.batch_size,
        output=output,
        show_progress=not args.quiet,
        external_data=args.external_data,
        providers=RuntimeGroup.parse(args),
    )
    inserted = result.details.get("inserted", [])
    skipped = result.details.get("skipped", {})
    say(
        args,
        f"split {len(inserted)} layer(s), {len(skipped)} skipped, "
        f"{'measured statistics' if args.data else 'identity placeholders'}, "
        f"wrote {output} in {time.perf_counter() - started:.2f}s",
    )
    return 0
