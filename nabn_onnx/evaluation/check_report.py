"""The verdict of a robustness gate: thresholds, one result per (chip, threshold), and the report.

A :class:`Threshold` is a lower bound (``top1 >= 0.95``, for metrics where higher is better)
or an upper bound (``error <= 0.1``, for a custom metric where lower is better);
:func:`parse_threshold` reads the command line's text form. A :class:`CheckReport` holds one
:class:`ChipResult` per (chip, threshold) and writes JSON and JUnit XML (through the one
report base, :class:`~nabn_onnx.reports.Report`), the format CI systems (GitHub Actions
reporters, GitLab, Jenkins, Azure Pipelines) show natively: ``<testsuites>`` >
``<testsuite>`` > one ``<testcase>`` per chip and threshold, with a ``<failure>`` child when
the chip misses it.
"""

from __future__ import annotations

import json
import math
import platform
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar, Dict, List

from ..errors import NabnError
from ..reports import Report
from .metrics import MetricLike

__all__ = ["CheckReport", "ChipResult", "Threshold", "parse_threshold"]

_KINDS = {"min": ">=", "max": "<="}
_TEXT = re.compile(r"^\s*([^<>=\s]+)\s*(>=|<=|=)\s*([^\s%]+)\s*(%?)\s*$")


@dataclass(frozen=True)
class Threshold:
    """One bound on a metric that every chip must meet.

    Attributes:
        metric: a metric name the other commands accept (``"top1"``, ``"top5"``,
            ``"miou"``, ``"pixel-acc"``), a :class:`~nabn_onnx.evaluation.metrics.Metric`
            or a callable ``f(outputs, labels) -> float``.
        bound: the bound, a fraction like the metric (``0.95`` for 95%).
        kind: ``"min"`` (the value must be at least ``bound``) or ``"max"`` (at most).
    """

    metric: MetricLike
    bound: float
    kind: str = "min"

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise NabnError(f"a threshold is 'min' or 'max', got {self.kind!r}")
        if not math.isfinite(self.bound):
            raise NabnError(f"a threshold's bound must be a finite number, got {self.bound}")

    def holds(self, value: float) -> bool:
        """Whether ``value`` meets this bound (a NaN never does)."""
        return value >= self.bound if self.kind == "min" else value <= self.bound

    def describe(self, name: str) -> str:
        """``"top1 >= 0.95"``."""
        return f"{name} {_KINDS[self.kind]} {self.bound:g}"


def parse_threshold(text: str, kind: str = "min") -> Threshold:
    """``"top1=0.95"`` or ``"top1=95%"`` -> a :class:`Threshold` of ``kind``.

    ``"top1>=0.95"`` and ``"error<=0.1"`` carry their kind in the operator.

    Raises:
        NabnError: text that is not ``NAME=NUMBER``.
    """
    match = _TEXT.match(text)
    if not match:
        raise NabnError(f"a threshold is NAME=VALUE (e.g. top1=0.95 or top1=95%), got {text!r}")
    name, operator, number, percent = match.groups()
    if operator != "=":
        kind = "min" if operator == ">=" else "max"
    try:
        bound = float(number)
    except ValueError:
        raise NabnError(f"the bound of {name!r} must be a number, got {number!r}") from None
    return Threshold(name.lower(), bound / 100 if percent else bound, kind)


@dataclass
class ChipResult:
    """One chip against one threshold.

    Attributes:
        noise: noise kind of the chip (``"mul"``, ``"add"``, ...).
        eta: noise scale.
        seed: chip instance.
        metric: the metric's name.
        kind: ``"min"`` or ``"max"``.
        bound: the threshold.
        value: the chip's metric (calibrated or not, see :attr:`CheckReport.calibrated`).
        passed: whether ``value`` meets ``bound``.
        seconds: the chip's share of its sweep's wall time.
    """

    noise: str
    eta: float
    seed: int
    metric: str
    kind: str
    bound: float
    value: float
    passed: bool
    seconds: float = 0.0

    @property
    def chip(self) -> str:
        """``"mul eta=0.05 seed=0"``."""
        return f"{self.noise} eta={self.eta:g} seed={self.seed}"

    @property
    def condition(self) -> str:
        """``"top1 >= 0.95"``."""
        return f"{self.metric} {_KINDS[self.kind]} {self.bound:g}"

    def line(self) -> str:
        """One line for a log: ``"FAIL mul eta=0.05 seed=0: top1 0.9300, needs >= 0.95"``."""
        verdict = "pass" if self.passed else "FAIL"
        return f"{verdict} {self.chip}: {self.metric} {self.value:.4f}, needs {_KINDS[self.kind]} {self.bound:g}"


@dataclass
class CheckReport(Report):
    """Outcome of a robustness gate.

    Attributes:
        model: the model's name.
        calibrated: whether chips were judged after NaBN calibration (else as they are).
        method: calibration method of the sweep.
        settings: noise settings shared by every chip, with the ``etas`` and ``seeds`` judged.
        clean: each metric of the clean model.
        results: one entry per (chip, threshold).
        sweeps: the underlying sweep reports (as dicts), one per metric.
        seconds: wall time.
        version: the nabn-onnx version that ran the gate.
    """

    FORMATS: ClassVar[Dict[str, str]] = {".json": "to_json", ".xml": "to_junit"}
    NAME: ClassVar[str] = "check report"

    model: str
    calibrated: bool
    method: str
    settings: Dict[str, Any]
    clean: Dict[str, float]
    results: List[ChipResult] = field(default_factory=list)
    sweeps: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    version: str = ""

    @property
    def passed(self) -> bool:
        """True when every chip meets every threshold."""
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> List[ChipResult]:
        """The (chip, threshold) pairs that failed."""
        return [r for r in self.results if not r.passed]

    @property
    def chips(self) -> int:
        """Number of distinct chips judged."""
        return len({(r.noise, r.eta, r.seed) for r in self.results})

    def summary(self) -> str:
        """One line with the verdict and the numbers."""
        judged = "calibrated" if self.calibrated else "uncalibrated"
        conditions = ", ".join(dict.fromkeys(r.condition for r in self.results))
        verdict = "PASSED" if self.passed else f"FAILED ({len(self.failures)} of {len(self.results)} checks)"
        worst = ", ".join(f"worst {name} {value:.4f}" for name, value in self.worst().items())
        return (
            f"check {verdict}: {self.chips} {judged} chip(s) of {self.model} against {conditions}; {worst}; "
            f"in {self.seconds:.1f}s"
        )

    def worst(self) -> Dict[str, float]:
        """Per threshold condition's metric, the worst chip's value (lowest for min, highest for max)."""
        out: Dict[str, float] = {}
        for r in self.results:
            key = f"{r.metric}" if r.kind == "min" else f"{r.metric} (max)"
            pick = min if r.kind == "min" else max
            out[key] = pick(out[key], r.value) if key in out else r.value
        return out

    def to_dict(self) -> Dict[str, Any]:
        """The verdict, every (chip, threshold) result and the sweeps behind them, as JSON-ready data."""
        return {
            "passed": self.passed,
            "model": self.model,
            "calibrated": self.calibrated,
            "method": self.method,
            "settings": self.settings,
            "clean": self.clean,
            "chips": self.chips,
            "checks": len(self.results),
            "failures": len(self.failures),
            "results": [asdict(r) for r in self.results],
            "sweeps": self.sweeps,
            "seconds": round(self.seconds, 3),
            "version": self.version,
        }

    def to_junit(self) -> str:
        """JUnit XML: one ``<testsuite>`` for the model, one ``<testcase>`` per chip and threshold.

        The shape is what JUnit consumers read (Jenkins' ``junit`` step, GitLab's
        ``artifacts:reports:junit``, GitHub Actions test reporters): ``tests`` and
        ``failures`` counts on ``<testsuites>`` and ``<testsuite>``, ``name`` and
        ``classname`` on every ``<testcase>``, and a ``<failure message type>`` on the
        cases that failed.
        """
        tests, failures = str(len(self.results)), str(len(self.failures))
        seconds = f"{self.seconds:.3f}"
        root = ET.Element(
            "testsuites", name="nabn-onnx check", tests=tests, failures=failures, errors="0", time=seconds
        )
        suite = ET.SubElement(
            root,
            "testsuite",
            name=f"nabn-onnx check {self.model}",
            tests=tests,
            failures=failures,
            errors="0",
            skipped="0",
            time=seconds,
            timestamp=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
            hostname=platform.node() or "localhost",
        )
        properties = ET.SubElement(suite, "properties")
        items = {
            "model": self.model,
            "calibrated": str(self.calibrated).lower(),
            "method": self.method,
            "nabn-onnx": self.version,
            **{f"clean.{k}": f"{v:.6g}" for k, v in self.clean.items()},
            **{k: json.dumps(v) if isinstance(v, (list, bool)) else str(v) for k, v in self.settings.items()},
        }
        for name, value in items.items():
            ET.SubElement(properties, "property", name=name, value=value)
        classname = f"nabn_onnx.check.{self.model}.{'calibrated' if self.calibrated else 'uncalibrated'}"
        for r in self.results:
            case = ET.SubElement(
                suite, "testcase", classname=classname, name=f"{r.chip}: {r.condition}", time=f"{r.seconds:.3f}"
            )
            if not r.passed:
                failure = ET.SubElement(
                    case,
                    "failure",
                    type="ThresholdNotMet",
                    message=f"{r.metric} {r.value:.4f} does not meet {r.condition}",
                )
                failure.text = r.line()
            else:
                ET.SubElement(case, "system-out").text = r.line()
        ET.indent(root)
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
