"""The path guard: no output may name an input or another output; default output names; report suffixes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Type

from ..model import check_output_folder, check_paths
from ..reports import Report, check_report_path

__all__ = [
    "FILE_SUFFIXES",
    "INPUT_OPTIONS",
    "OUTPUT_OPTIONS",
    "default_output",
    "guard_paths",
    "report_suffix",
    "report_suffixes",
]

#: the command-line options that name an input file, and what each is
INPUT_OPTIONS = {
    "model": "the input model",
    "reference": "the reference model (--reference)",
    "data": "the data (--data)",
    "calib": "the calibration data (--calib)",
    "test": "the test data (--test)",
    "device": "the device file (--device)",
}


#: the command-line options that name an output file
OUTPUT_OPTIONS = {
    "output": "-o/--output",
    "report": "--report",
    "plot": "--plot",
    "junit": "--junit",
    "results": "--results",
}


def guard_paths(args: argparse.Namespace, output: Optional[Path] = None) -> None:
    """Refuse any output (``output``, the model a command writes, and every output option) that names an input.

    ``output`` (the given ``-o`` or the default name) must also go into an existing folder.
    """
    inputs = {label: getattr(args, name, None) for name, label in INPUT_OPTIONS.items()}
    outputs = {label: getattr(args, name, None) for name, label in OUTPUT_OPTIONS.items()}
    if output is not None:
        check_output_folder(output)
        outputs["-o/--output"] = output
    check_paths(inputs, outputs)


def default_output(model: Path, suffix: str) -> Path:
    """``MODEL<suffix>.onnx`` beside the input model."""
    return model.with_name(model.stem + suffix + ".onnx")


#: What the files that are not reports may end in (a report answers for itself: :func:`report_suffixes`).
FILE_SUFFIXES: Dict[str, Tuple[str, ...]] = {
    # check --report is JSON only, whatever else CheckReport writes (--junit's XML)
    "check --report": (".json",),
    "check --junit": (".xml",),
    "plot": (".png", ".svg", ".pdf"),
}


def report_suffixes(report_type: Type[Report]) -> Tuple[str, ...]:
    """The suffixes a report type writes (its ``FORMATS``)."""
    return tuple(report_type.suffixes())


def report_suffix(path: Optional[str], allowed: Sequence[str]) -> Optional[Path]:
    """``path`` as a Path once its suffix is one of ``allowed`` and its folder exists (None stays None)."""
    if path is None:
        return None
    out = check_report_path(path, allowed)
    check_output_folder(out)
    return out
