"""Calibration: statistics graphs, streaming estimators, the calibrate job."""

from .dynamic import NabnSession, TemporalNoise
from .engine import METHODS, CalibrationReport, CalibrationResult, LayerShift, calibrate, collect_stats
from .stats import DEFAULT_ESTIMATOR, Estimator, RunningStats
from .statsgraph import ExposeBatchNormStatsPass

__all__ = [
    "calibrate",
    "collect_stats",
    "CalibrationReport",
    "CalibrationResult",
    "LayerShift",
    "METHODS",
    "Estimator",
    "RunningStats",
    "DEFAULT_ESTIMATOR",
    "ExposeBatchNormStatsPass",
    "NabnSession",
    "TemporalNoise",
]
