"""The one base of every report: a dict form, JSON, and ``write(path)`` in the format its suffix names.

A report type lists the formats it writes in :attr:`Report.FORMATS` (suffix -> method that
renders it); :meth:`Report.write` picks the method by the path's suffix and writes the text
atomically, and the command line checks a ``--report`` path against the same table before
any work, so a suffix the report cannot write is refused up front, in one line.

Which reports there are: :class:`~nabn_onnx.CalibrationReport` (``calibrate``),
:class:`~nabn_onnx.evaluation.sweep.SweepReport` (``sweep``), the diagnose and drift
reports, and :class:`~nabn_onnx.CheckReport` (``check``, with JUnit XML).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Dict, Sequence, Union

from .errors import NabnError
from .model import atomic_write_text

__all__ = ["Report", "check_report_path"]


class Report:
    """Base of the reports: :meth:`to_dict` (each report's own), :meth:`to_json` and :meth:`write`.

    Attributes:
        FORMATS: suffix -> name of the method that renders the report in that format.
        NAME: what the report is called in an error message.
    """

    FORMATS: ClassVar[Dict[str, str]] = {".json": "to_json"}
    NAME: ClassVar[str] = "report"

    def to_dict(self) -> Dict[str, object]:
        """The report as JSON-able data."""
        raise NotImplementedError

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def suffixes(cls) -> Sequence[str]:
        """The suffixes :meth:`write` takes."""
        return tuple(cls.FORMATS)

    def write(self, path: Union[str, Path]) -> Path:
        """Write the report in the format ``path``'s suffix names, atomically.

        Raises:
            NabnError: a suffix this report does not write, or the file cannot be written
                (nothing is left at ``path`` then: the write is atomic).
        """
        path = check_report_path(path, self.suffixes(), self.NAME)
        text = getattr(self, self.FORMATS[path.suffix])()
        try:
            return atomic_write_text(path, text)
        except OSError as exc:  # a full disk, a read-only folder: the user's to fix, in one line
            raise NabnError(f"cannot write {self.NAME} {path}: {exc.strerror or exc}") from None


def check_report_path(path: Union[str, Path], suffixes: Sequence[str], name: str = "report") -> Path:
    """``path`` as a :class:`Path` when its suffix is one of ``suffixes``.

    Raises:
        NabnError: another suffix (the message lists the ones accepted).
    """
    path = Path(path)
    if path.suffix not in suffixes:
        joined = ", ".join(suffixes[:-1]) + " or " + suffixes[-1] if len(suffixes) > 1 else suffixes[0]
        raise NabnError(f"{'a ' + name if name != 'report' else 'report'} must end in {joined}, got {path.name}")
    return path
