"""The path guard: no output may name an input or another output; default output names; report suffixes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from ..errors import NabnError
from ..model import check_output_folder, check_paths
from ..reports import Report

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
    """Refuse any output (``output``, the default model output, and every output option) that names an input."""
    inputs = {label: getattr(args, name, None) for name, label in INPUT_OPTIONS.items()}
    outputs = {label: getattr(args, name, None) for name, label in OUTPUT_OPTIONS.items()}
    if output is not None:
        outputs["-o/--output"] = output
    check_paths(inputs, outputs)


def default_output(model: Path, suffix: str) -> Path:
    """``MODEL<suffix>.onnx`` beside the input model."""
    return model.with_name(model.stem + suffix + ".onnx")


#: What each file option may end in, in one place, for the files whose type does not name its
#: own formats: a report on :class:`nabn_onnx.reports.Report` answers for itself
#: (:func:`report_suffixes`), the others are listed here by class name until they move onto it.
FILE_SUFFIXES: Dict[str, Tuple[str, ...]] = {
    "SweepReport": (".json", ".md", ".csv"),
    "DriftReport": (".json", ".md", ".csv"),
    "DiagnoseReport": (".json", ".md"),
    # check --report is JSON only, whatever else CheckReport writes (--junit's XML)
    "check --report": (".json",),
    "check --junit": (".xml",),
    "plot": (".png", ".svg", ".pdf"),
}


def report_suffixes(report_type: type) -> Tuple[str, ...]:
    """The suffixes a report type writes: its ``FORMATS`` when a :class:`Report`, else :data:`FILE_SUFFIXES`."""
    if issubclass(report_type, Report):
        return tuple(report_type.suffixes())
    return FILE_SUFFIXES[report_type.__name__]


def report_suffix(path: Optional[str], allowed: Sequence[str]) -> Optional[Path]:
    """``path`` as a Path once its suffix is one of ``allowed`` and its folder exists (None stays None)."""
    if path is None:
        return None
    out = Path(path)
    if out.suffix not in allowed:
        raise NabnError(f"report must end in {', '.join(allowed)}, got {out.name}")
    check_output_folder(out)
    return out
