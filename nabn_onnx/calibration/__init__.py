"""Calibration: statistics graphs, streaming estimators, the methods, the calibrate job.

Modules, one job each: :mod:`.config` (settings), :mod:`.stats` (estimators),
:mod:`.statsgraph` (the statistics graph pass), :mod:`.batchnorms` (BatchNorm parameters
read and written), :mod:`.holdout` (what ``auto`` scores on), :mod:`.measure` (one pass
over the data), :mod:`.methods` (the method registry), :mod:`.scoring` (the scoring loop
and its scorers), :mod:`.choice` (``auto``'s choice, the chip guard), :mod:`.prepare`
(what the model is, what can be recalibrated), :mod:`.job` (the job state),
:mod:`.report` (the report), :mod:`.calibrator` (the steps and ``calibrate``),
:mod:`.dynamic` (statistics that keep tracking the chip).
"""

from .batchnorms import Stats, name_batchnorms, running_stats
from .calibrator import Calibrator, CleanRun, calibrate
from .config import (
    METHODS,
    CalibrationConfig,
    CalibrationOptions,
    InjectConfig,
    InjectOptions,
    Reading,
    SplitConfig,
    SplitOptions,
)
from .dynamic import NabnSession, TemporalNoise
from .holdout import HOLDOUT_EVERY, count_batches, holdout_split, is_holdout
from .job import CalibrationJob
from .measure import Measured, collect_stats, fill_inserted_stats, measure
from .methods import CANDIDATES, METHOD_REGISTRY, Method, get_method, new_stats
from .report import CalibrationReport, CalibrationResult, LayerShift
from .scoring import FALLBACK, SEVERE, OutputDivergence, pick_candidate, score_candidates
from .stats import DEFAULT_ESTIMATOR, Estimator, RunningStats
from .statsgraph import ExposeBatchNormStatsPass

__all__ = [
    # exported before the split of engine.py (keep)
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
    # engine.py's and select.py's public names that callers import (formerly nabn_onnx.calibration.engine/.select)
    "count_batches",
    "measure",
    "Measured",
    "Stats",
    "name_batchnorms",
    "holdout_split",
    "is_holdout",
    "HOLDOUT_EVERY",
    "SEVERE",
    "FALLBACK",
    "OutputDivergence",
    "pick_candidate",
    # new public names
    "SplitOptions",
    "InjectConfig",
    "InjectOptions",
    "fill_inserted_stats",
    "running_stats",
    "new_stats",
    "Method",
    "METHOD_REGISTRY",
    "CANDIDATES",
    "get_method",
    "score_candidates",
    "CalibrationJob",
    "CleanRun",
]

#: Old names still importable from here, with a DeprecationWarning: old -> new.
_RENAMED = {"measure_inserted": "fill_inserted_stats"}


def __getattr__(name: str):
    """``measure_inserted`` (the function formerly in ``engine``) is ``fill_inserted_stats``."""
    if name in _RENAMED:
        import warnings

        new = _RENAMED[name]
        warnings.warn(
            f"nabn_onnx.calibration.{name} is renamed {new} (it shared its name with the step Calibrator.{name})",
            DeprecationWarning,
            stacklevel=2,
        )
        return globals()[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
