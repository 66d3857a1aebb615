"""Evaluation: task metrics, robustness sweeps over chips, robustness gates, per-layer divergence diagnostics, plots.

One module per job: ``metrics`` (and ``detection``, ``decoders``), ``evaluate``; a sweep is
``plan`` (what it covers, how chips are measured), ``runner`` (the per-chip work, wherever it
runs), ``executors`` (where), ``results`` (the resumable results file), ``sweep_report`` and
``sweep`` (``run_sweep``, and ``sweep``, the same with flat keywords); ``check`` and
``check_report`` (the gate), ``drift`` and ``drift_report``, ``diagnose``, ``plots``.
Every public call takes a frozen settings object or its fields as flat keywords.
"""

from .check import CheckConfig, CheckReport, ChipResult, Threshold, check, parse_threshold
from .diagnose import DiagnoseConfig, DiagnoseReport, LayerDivergence, diagnose
from .drift import DriftConfig, DriftReport, drift_sweep
from .evaluate import EvalConfig, Evaluation, Evaluator, evaluate
from .executors import ProcessExecutor, RayExecutor, SerialExecutor, make_executor
from .metrics import ConfusionMatrix, MeanIoU, Metric, PixelAccuracy, TopK, make_metric
from .sweep import ChipTask, SweepPlan, SweepReport, SweepSettings, run_sweep, sweep

__all__ = [
    "EvalConfig",
    "evaluate",
    "Evaluator",
    "Evaluation",
    "sweep",
    "SweepReport",
    "run_sweep",
    "SweepPlan",
    "SweepSettings",
    "ChipTask",
    "make_executor",
    "SerialExecutor",
    "ProcessExecutor",
    "RayExecutor",
    "drift_sweep",
    "DriftConfig",
    "DriftReport",
    "diagnose",
    "DiagnoseConfig",
    "DiagnoseReport",
    "LayerDivergence",
    "check",
    "CheckConfig",
    "CheckReport",
    "ChipResult",
    "Threshold",
    "parse_threshold",
    "Metric",
    "TopK",
    "MeanIoU",
    "PixelAccuracy",
    "ConfusionMatrix",
    "make_metric",
]
