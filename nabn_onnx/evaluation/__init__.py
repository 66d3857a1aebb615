"""Evaluation: task metrics, robustness sweeps over chips, robustness gates, per-layer divergence diagnostics, plots."""

from .check import CheckReport, ChipResult, Threshold, check, parse_threshold
from .diagnose import DiagnoseReport, LayerDivergence, diagnose
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
    "diagnose",
    "DiagnoseReport",
    "LayerDivergence",
    "check",
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
