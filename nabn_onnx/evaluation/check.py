"""A robustness gate: does every simulated chip meet every threshold?

:func:`check` turns "is this model robust enough for this chip?" into a pass or a fail a
deployment pipeline can act on. It runs :func:`~nabn_onnx.evaluation.sweep.sweep` (once
per metric named in the thresholds; a sweep scores one metric) and compares each chip's
value with each threshold:

* without ``calibrated``, a chip's value is the model with that chip's noisy weights as it
  is (the sweep's ``vanilla``): is the model robust without NaBN?
* with ``calibrated=True``, it is the same chip after calibration on the calibration data
  (the sweep's ``nabn``): is the model robust once each chip is calibrated?

A threshold is a lower bound (``top1 >= 0.95``, for metrics where higher is better) or an
upper bound (``error <= 0.1``, for a custom metric where lower is better). The result is a
:class:`CheckReport` with one :class:`ChipResult` per (chip, threshold); it writes JSON and
JUnit XML, the format CI systems (GitHub Actions reporters, GitLab, Jenkins, Azure
Pipelines) show natively: ``<testsuites>`` > ``<testsuite>`` > one ``<testcase>`` per chip
and threshold, with a ``<failure>`` child when the chip misses it.

Every keyword :func:`~nabn_onnx.evaluation.sweep.sweep` accepts (noise model and settings,
method, batch sizes, output, executors) passes through unchanged, so the gate runs whatever
the sweep runs.
"""

from __future__ import annotations

import json
import math
import platform
import re
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

from ..data import DataLike
from ..errors import NabnError
from ..model import ModelLike, atomic_write_text
from .metrics import MetricLike
from .sweep import SweepReport, sweep

__all__ = ["check", "CheckReport", "ChipResult", "Threshold", "parse_threshold"]

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
class CheckReport:
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

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

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

    def write(self, path: Union[str, Path]) -> Path:
        """Write as ``.json`` or JUnit ``.xml`` (by suffix), atomically."""
        path = Path(path)
        writers = {".json": self.to_json, ".xml": self.to_junit}
        if path.suffix not in writers:
            raise NabnError(f"a check report must end in .json or .xml, got {path.name}")
        return atomic_write_text(path, writers[path.suffix]())


def _as_thresholds(thresholds: Sequence[Union[Threshold, str]]) -> List[Threshold]:
    if isinstance(thresholds, (str, Threshold)):
        thresholds = [thresholds]
    out = [t if isinstance(t, Threshold) else parse_threshold(t) for t in thresholds]
    if not out:
        raise NabnError("a check needs at least one threshold (e.g. top1>=0.95)")
    return out


def _number(value: object) -> float:
    """A sweep row's number (rows are typed ``Dict[str, object]``)."""
    if not isinstance(value, (int, float)):
        raise TypeError(f"a sweep row holds {type(value).__name__} where a number belongs")
    return float(value)


def _metric_key(metric: MetricLike) -> Any:
    return metric.strip().lower() if isinstance(metric, str) else id(metric)


def check(
    model: ModelLike,
    calib: DataLike,
    test: DataLike,
    thresholds: Sequence[Union[Threshold, str]],
    *,
    calibrated: bool = False,
    **sweep_options: Any,
) -> CheckReport:
    """Gate a model: does every simulated chip meet every threshold?

    Args:
        model: path or ``ModelProto`` (BatchNorm kept or fused; not modified).
        calib: calibration data (used for the split and, with ``calibrated``, per chip).
        test: labelled test data.
        thresholds: :class:`Threshold` objects or text (``"top1>=0.95"``, ``"top1=95%"``,
            ``"error<=0.1"``); a bare ``=`` means a lower bound.
        calibrated: judge each chip after NaBN calibration (else as it is).
        **sweep_options: passed to :func:`~nabn_onnx.evaluation.sweep.sweep`: ``noise``,
            ``etas``, ``seeds``, ``method``, ``sigma_t``, ``sigma_s``, ``temporal``,
            ``batch_size``, ``calib_batches``, ``test_batches``, ``output``, ... (not ``metric``:
            the thresholds name the metrics).

    Returns:
        A :class:`CheckReport`; ``report.passed`` is the verdict.

    Raises:
        NabnError: bad model, data, metric or settings (one-line message).
    """
    from .. import __version__

    if "metric" in sweep_options:
        raise NabnError("check takes its metrics from the thresholds, not from metric=")
    started = time.perf_counter()
    wanted = _as_thresholds(thresholds)
    groups: Dict[Any, List[Threshold]] = {}
    for threshold in wanted:
        groups.setdefault(_metric_key(threshold.metric), []).append(threshold)

    results: List[ChipResult] = []
    sweeps: Dict[str, SweepReport] = {}
    for group in groups.values():
        report = sweep(model, calib, test, metric=group[0].metric, **sweep_options)
        if report.metric in sweeps:  # two metric objects of the same name: keep both apart
            report.metric = f"{report.metric}_{len(sweeps)}"
        sweeps[report.metric] = report
        column = "nabn" if calibrated else "vanilla"
        share = report.seconds.get("total", 0.0) / max(len(report.rows), 1)
        for row in report.rows:
            value = _number(row[column])
            for threshold in group:
                results.append(
                    ChipResult(
                        str(row["noise"]),
                        _number(row["eta"]),
                        int(_number(row["seed"])),
                        report.metric,
                        threshold.kind,
                        float(threshold.bound),
                        value,
                        threshold.holds(value),
                        share,
                    )
                )
    first = next(iter(sweeps.values()))
    settings = {k: v for k, v in first.settings.items() if k not in ("eta", "seed")}
    settings["etas"] = sorted({_number(row["eta"]) for row in first.rows})
    settings["seeds"] = sorted({int(_number(row["seed"])) for row in first.rows})
    return CheckReport(
        model=first.model,
        calibrated=calibrated,
        method=first.method,
        settings=settings,
        clean={name: r.clean_of() for name, r in sweeps.items()},
        results=results,
        sweeps={name: r.to_dict() for name, r in sweeps.items()},
        seconds=time.perf_counter() - started,
        version=__version__,
    )
