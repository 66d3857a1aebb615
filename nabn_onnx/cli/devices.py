"""``nabn-onnx devices``: list the noise and device models with their parameters (:mod:`nabn_onnx.noise`)."""

from __future__ import annotations

import argparse
import json

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the command's parser; ``common`` holds the options every command shares."""
    p = subparsers.add_parser(
        "devices", parents=[common], help="list the noise and device models with their parameters"
    )
    p.set_defaults(func=run, subparser=p)


def run(args: argparse.Namespace) -> int:
    """Run the command on parsed ``args``; returns the exit code."""
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
