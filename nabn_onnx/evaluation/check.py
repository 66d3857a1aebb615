"""A robustness gate: does every simulated chip meet every threshold?

:func:`check` turns "is this model robust enough for this chip?" into a pass or a fail a
deployment pipeline can act on. It runs :func:`~nabn_onnx.evaluation.sweep.run_sweep` (once
per metric named in the thresholds; a sweep scores one metric) and compares each chip's
value with each threshold (:mod:`nabn_onnx.evaluation.check_report`):

* without ``calibrated``, a chip's value is the model with that chip's noisy weights as it
  is (the sweep's ``vanilla``): is the model robust without NaBN?
* with ``calibrated=True``, it is the same chip after calibration on the calibration data
  (the sweep's ``nabn``): is the model robust once each chip is calibrated?

Its settings are one :class:`CheckConfig`: the sweep's plan and settings and ``calibrated``,
or their fields as flat keywords (every keyword :func:`~nabn_onnx.evaluation.sweep.sweep`
accepts but ``metric``), so the gate runs whatever the sweep runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace
from typing import Any, Dict, List, Optional, Sequence, Union

from ..data import DataLike
from ..errors import NabnError
from ..model import ModelLike
from ..settings import with_options
from .check_report import CheckReport, ChipResult, Threshold, parse_threshold
from .executors import Executor
from .metrics import MetricLike
from .plan import SweepPlan, SweepSettings, plan_and_settings
from .sweep import run_sweep
from .sweep_report import SweepReport

__all__ = ["check", "CheckConfig", "CheckReport", "ChipResult", "Threshold", "parse_threshold"]


@dataclass(frozen=True)
class CheckConfig:
    """The settings of a robustness gate.

    Attributes:
        plan: the chips to judge (None: given by keywords, ``etas=`` then required).
        settings: how each chip is calibrated and evaluated; its ``metric`` is replaced by
            each threshold's.
        calibrated: judge each chip after NaBN calibration (else as it is).
    """

    plan: Optional[SweepPlan] = None
    settings: SweepSettings = SweepSettings()  # noqa: RUF009 (frozen: one shared default is safe)
    calibrated: bool = False

    @classmethod
    def build(cls, config: Optional[CheckConfig], options: Dict[str, Any], call: str = "check") -> CheckConfig:
        """``config`` (defaults if None) with flat keywords filled in.

        The keywords are its own fields (``plan``, ``settings``, ``calibrated``), the plan's
        fields and the settings' fields; ``options`` is emptied.

        Raises:
            TypeError: an unknown keyword, a plan given twice, or no plan and no ``etas``.
        """
        own = {f.name: options.pop(f.name) for f in fields(cls) if f.name in options}
        config = with_options(config if config is not None else cls(), own, call)
        plan, settings = plan_and_settings(config.plan, config.settings, options, call)
        return replace(config, plan=plan, settings=settings)


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
    config: Optional[CheckConfig] = None,
    *,
    executor: Optional[Executor] = None,
    show_progress: bool = False,
    **options: Any,
) -> CheckReport:
    """Gate a model: does every simulated chip meet every threshold?

    Args:
        model: path or ``ModelProto`` (BatchNorm kept or fused; not modified).
        calib: calibration data (used for the split and, with ``calibrated``, per chip).
        test: labelled test data.
        thresholds: :class:`Threshold` objects or text (``"top1>=0.95"``, ``"top1=95%"``,
            ``"error<=0.1"``); a bare ``=`` means a lower bound.
        config: the gate's settings (:class:`CheckConfig`), or give them as keywords.
        executor: where the chips run (None: serially in this process).
        show_progress: draw a progress bar over each sweep's chips.
        **options: :class:`CheckConfig`'s fields as flat keywords: ``calibrated`` (judge each
            chip after NaBN calibration, else as it is), the plan's (``noise``, ``etas``,
            ``seeds``, ``sigma_t``, ``sigma_s``, ``temporal``, ``include_bias``, ``device``)
            and the sweep settings' (``method``, ``batch_size``, ``calib_batches``,
            ``test_batches``, ``output``, ...; not ``metric``: the thresholds name the metrics).

    Returns:
        A :class:`CheckReport`; ``report.passed`` is the verdict.

    Raises:
        NabnError: bad model, data, metric or settings (one-line message).
        TypeError: an unknown keyword, or no ``etas`` and no plan.
    """
    from .. import __version__

    if "metric" in options:
        raise NabnError("check takes its metrics from the thresholds, not from metric=")
    started = time.perf_counter()
    wanted = _as_thresholds(thresholds)
    config = CheckConfig.build(config, dict(options))
    plan, calibrated = config.plan, config.calibrated
    assert plan is not None  # CheckConfig.build always gives one
    if len(config.settings.methods) > 1:
        raise NabnError("check judges chips calibrated with one method; run one check per method")
    groups: Dict[Any, List[Threshold]] = {}
    for threshold in wanted:
        groups.setdefault(_metric_key(threshold.metric), []).append(threshold)

    results: List[ChipResult] = []
    sweeps: Dict[str, SweepReport] = {}
    for group in groups.values():
        measure = replace(config.settings, metric=group[0].metric)
        report = run_sweep(model, calib, test, plan, measure, executor=executor, show_progress=show_progress)
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
