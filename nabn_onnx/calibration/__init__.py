"""Calibration: statistics graphs, streaming estimators, the calibrate job."""

from .config import CalibrationConfig, CalibrationOptions, Reading, SplitConfig
from .dynamic import NabnSession, TemporalNoise
from .engine import METHODS, CalibrationReport, CalibrationResult, Calibrator, LayerShift, calibrate, collect_stats
from .stats import DEFAULT_ESTIMATOR, Estimator, RunningStats
from .statsgraph import ExposeBatchNormStatsPass

__all__ = [
    "calibrate",
    "Calibrator",
    "CalibrationConfig",
    "CalibrationOptions",
    "SplitConfig",
    "Reading",
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
