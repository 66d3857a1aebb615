"""Evaluation: task metrics, robustness sweeps over chips, per-layer divergence diagnostics, plots."""

from .diagnose import DiagnoseReport, LayerDivergence, diagnose
from .evaluate import Evaluation, Evaluator, evaluate
from .metrics import ConfusionMatrix, MeanIoU, Metric, PixelAccuracy, TopK, make_metric
from .sweep import SweepReport, sweep

__all__ = [
    "evaluate", "Evaluator", "Evaluation",
    "sweep", "SweepReport",
    "diagnose", "DiagnoseReport", "LayerDivergence",
    "Metric", "TopK", "MeanIoU", "PixelAccuracy", "ConfusionMatrix", "make_metric",
]
