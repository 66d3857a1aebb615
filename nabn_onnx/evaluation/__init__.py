"""Evaluation: task metrics, robustness sweeps over chips, robustness gates, per-layer divergence diagnostics, plots."""

from .check import CheckReport, ChipResult, Threshold, check, parse_threshold
from .diagnose import DiagnoseReport, LayerDivergence, diagnose
from .evaluate import Evaluation, Evaluator, evaluate
from .metrics import ConfusionMatrix, MeanIoU, Metric, PixelAccuracy, TopK, make_metric
from .sweep import SweepReport, sweep

__all__ = [
    "evaluate", "Evaluator", "Evaluation",
    "sweep", "SweepReport",
    "diagnose", "DiagnoseReport", "LayerDivergence",
    "check", "CheckReport", "ChipResult", "Threshold", "parse_threshold",
    "Metric", "TopK", "MeanIoU", "PixelAccuracy", "ConfusionMatrix", "make_metric",
]
