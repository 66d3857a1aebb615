"""``nabn-onnx inspect``: list analog layers and their BatchNorms (:func:`nabn_onnx.inspect_model`)."""

from __future__ import annotations

import argparse

from .groups import LayerSelectionGroup

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the command's parser; ``common`` holds the options every command shares."""
    p = subparsers.add_parser("inspect", parents=[common], help="list analog layers and their BatchNorms")
    p.add_argument("model", help="input .onnx model")
    LayerSelectionGroup.add(p)
    p.set_defaults(func=run, subparser=p)


def run(args: argparse.Namespace) -> int:
    """Run the command on parsed ``args``; returns the exit code."""
    from ..api import inspect_model

    print(inspect_model(args.model, include=args.include, exclude=args.exclude))
    return 0
