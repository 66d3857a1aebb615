"""``nabn-onnx evaluate``: measure a model's metric on labelled data (:class:`nabn_onnx.evaluation.Evaluator`)."""

from __future__ import annotations

import argparse
import json

from ..progress import Progress
from .groups import ImageFolderGroup, MetricGroup, MetricReadingGroup, RuntimeGroup, say

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the command's parser; ``common`` holds the options every command shares."""
    p = subparsers.add_parser(
        "evaluate", parents=[common], help="measure a model's accuracy (or mIoU) on labelled data"
    )
    p.add_argument("model", help="input .onnx model")
    p.add_argument("--data", required=True, help="labelled test data: .npz with 'labels', or an image folder")
    MetricGroup.add(p, several=True)
    p.add_argument("--max-batches", type=int)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    ImageFolderGroup.add(p)
    RuntimeGroup.add(p)
    p.set_defaults(func=run, subparser=p)


def run(args: argparse.Namespace) -> int:
    """Run the command on parsed ``args``; returns the exit code."""
    from ..evaluation import Evaluator

    evaluator = Evaluator(args.model, output=MetricReadingGroup.parse(args), providers=RuntimeGroup.parse(args))
    with Progress("evaluating", None, enabled=not args.quiet) as bar:
        result = evaluator.run(
            ImageFolderGroup.parse(args.data, args),
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
        say(args, result.summary())
    return 0
