"""Command line: ``nabn-onnx <command>``; each command maps onto one library call.

One module per command (``split``, ``inject``, ... each with ``add_parser(subparsers, common)``
and ``run(args) -> int``), the options several commands share in :mod:`.groups`, the path
guard in :mod:`.paths`.

Exit codes: 0 success, 1 a problem with the user's input (one line on stderr), 2 a
command-line usage error (argparse). Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from .. import __version__
from ..errors import NabnError
from .analog import add_parser as add_analog
from .calibrate import add_parser as add_calibrate
from .check import add_parser as add_check
from .devices import add_parser as add_devices
from .diagnose import add_parser as add_diagnose
from .drift import add_parser as add_drift
from .evaluate import add_parser as add_evaluate
from .inject import add_parser as add_inject
from .inspect import add_parser as add_inspect
from .paths import guard_paths
from .split import add_parser as add_split
from .sweep import add_parser as add_sweep

__all__ = ["build_parser", "main", "COMMANDS"]

logger = logging.getLogger("nabn_onnx")

#: each command module's ``add_parser``, in the order ``nabn-onnx --help`` lists the commands
COMMANDS = (
    add_split,
    add_inject,
    add_calibrate,
    add_inspect,
    add_analog,
    add_devices,
    add_evaluate,
    add_sweep,
    add_drift,
    add_diagnose,
    add_check,
)


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
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_parser in COMMANDS:
        add_parser(subparsers, common)
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
        guard_paths(args)
        return args.func(args)
    except NabnError as exc:
        print(f"nabn-onnx {args.command}: error: {exc}", file=sys.stderr)
        return 2 if args.command == "check" else 1  # check: 1 means a chip missed a threshold


if __name__ == "__main__":
    sys.exit(main())
