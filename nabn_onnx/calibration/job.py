"""One calibration's state: what :meth:`Calibrator.prepare` decides, extended by each step after it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from onnx import ModelProto

from ..runtime import DYNAMIC, BatchPlan
from .batchnorms import BNValues, Stats
from .measure import Measured
from .methods import Method, get_method

__all__ = ["CalibrationJob", "MODES"]

#: What the given model is: see :attr:`~.report.CalibrationReport.mode`.
MODES = ("simulated", "reference", "chip")


@dataclass
class CalibrationJob:
    """One calibration's state, extended by each step; build it with :meth:`start`.

    :meth:`Calibrator.prepare` decides the first fields (up to ``plan``) before any data is
    read; the steps after it add the statistics measured and the choice.

    Attributes:
        model: the model being calibrated (it becomes the calibrated chip).
        clean: the clean model with the same BatchNorms (the same object as ``model`` until
            the noise goes in), or None when no clean model is known.
        mode: one of :data:`MODES` (see :attr:`CalibrationReport.mode`).
        method: the method that runs (``auto`` becomes ``paper`` without a clean model).
        names: BatchNorms recalibrated.
        placeholders: inserted BatchNorms whose clean statistics are measured first.
        inserted: BatchNorms inserted by this run's split.
        origin: ``"original"`` or ``"inserted"`` per BatchNorm.
        left: BatchNorms or analog layers left alone, with the reason.
        note: why the method runs as it does.
        plan: how sessions take batches.
        reference: each recalibrated BatchNorm's statistics before calibration.
        measured: the clean statistics measured for the ``placeholders`` (written into both models).
        holdout: how ``auto`` (or the chip guard) holds samples out, None when nothing is scored.
        clean_run: the clean model's train-mode statistics (methods that ``need_clean``).
        noisy_run: the chip's train-mode statistics (Algorithm 1).
        chosen: the statistics written (a method or ``auto``'s candidate).
        scores: ``auto``'s (or the guard's) score per candidate.
        scored_on: samples the scores were computed on.
        in_sample: the scores were computed on the samples the candidates were estimated on.
    """

    # decided by prepare
    model: ModelProto
    clean: Optional[ModelProto]
    mode: str
    method: str
    names: List[str]
    placeholders: List[str] = field(default_factory=list)
    inserted: List[str] = field(default_factory=list)
    origin: Dict[str, str] = field(default_factory=dict)
    left: Dict[str, str] = field(default_factory=dict)
    note: str = ""
    plan: BatchPlan = DYNAMIC
    # added by the steps over the data
    reference: BNValues = field(default_factory=dict)
    measured: Optional[Stats] = None
    holdout: Optional[str] = None
    clean_run: Optional[Measured] = None
    noisy_run: Optional[Measured] = None
    chosen: str = ""
    scores: Optional[Dict[str, float]] = None
    scored_on: int = 0
    in_sample: bool = False

    @classmethod
    def start(
        cls,
        *,
        model: ModelProto,
        clean: Optional[ModelProto],
        mode: str,
        method: str,
        names: Sequence[str],
        origin: Dict[str, str],
        placeholders: Sequence[str] = (),
        inserted: Sequence[str] = (),
        left: Optional[Dict[str, str]] = None,
    ) -> CalibrationJob:
        """A job as :meth:`Calibrator.prepare` decides it, every field by keyword.

        Raises:
            ValueError: ``mode`` is not one of :data:`MODES`.
        """
        if mode not in MODES:
            raise ValueError(f"unknown calibration mode {mode!r}")
        return cls(
            model=model,
            clean=clean,
            mode=mode,
            method=method,
            names=list(names),
            placeholders=list(placeholders),
            inserted=list(inserted),
            origin=origin,
            left=left if left is not None else {},
        )

    @property
    def strategy(self) -> Method:
        """The :class:`~.methods.Method` registered as :attr:`method`."""
        return get_method(self.method)
