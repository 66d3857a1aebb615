"""Streaming per-channel statistics of BatchNormalization inputs, in float64.

Each batch contributes its per-channel mean ``mu_b`` and biased variance ``v_b`` over
``n_b`` elements per channel (batch x spatial). Estimators:

* ``"cumulative"``: the average over batches, each batch weighted equally (PyTorch's
  ``momentum=None``); with ``variance="mean"`` and ``unbiased=True`` it is exactly what
  PyTorch's train-mode recalibration stores.
* ``"ema"``: the paper's Algorithm 1, ``s <- m * s + (1 - m) * s_b`` with ``m = 0.999``,
  initialized from the first batch.

Variance pooling:

* ``"mean"``: the average of batch variances (what Algorithm 1 and PyTorch do);
* ``"total"``: the law of total variance, ``E[v_b] + Var[mu_b]``, i.e. the variance of all
  calibration samples together, which is what an eval-mode BatchNorm meets at test time.

``unbiased=True`` scales each batch variance by ``n_b / (n_b - 1)`` (Bessel's correction).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from ..errors import NabnError

__all__ = ["Estimator", "RunningStats", "ESTIMATORS", "VARIANCE_POOLING", "DEFAULT_ESTIMATOR"]

ESTIMATORS = ("cumulative", "ema")
VARIANCE_POOLING = ("total", "mean")


@dataclass(frozen=True)
class Estimator:
    """How batch statistics are combined.

    Attributes:
        kind: ``"cumulative"`` or ``"ema"``.
        variance: ``"total"`` or ``"mean"``.
        unbiased: apply Bessel's correction per batch.
        momentum: EMA weight of the old value (the paper's ``m``); ignored by cumulative.
    """

    kind: str = "cumulative"
    variance: str = "total"
    unbiased: bool = True
    momentum: float = 0.999

    def __post_init__(self):
        if self.kind not in ESTIMATORS:
            raise NabnError(f"unknown estimator {self.kind!r}; choose one of {', '.join(ESTIMATORS)}")
        if self.variance not in VARIANCE_POOLING:
            raise NabnError(f"unknown variance pooling {self.variance!r}; choose one of {', '.join(VARIANCE_POOLING)}")
        if not 0.0 <= self.momentum < 1.0:
            raise NabnError(f"EMA momentum must be in [0, 1), got {self.momentum}")

    def new(self) -> RunningStats:
        """A fresh accumulator using this estimator."""
        return RunningStats(self)


DEFAULT_ESTIMATOR = Estimator()


class RunningStats:
    """Accumulates one BatchNormalization input's per-channel statistics over batches."""

    def __init__(self, estimator: Estimator = DEFAULT_ESTIMATOR):
        self.estimator = estimator
        self.batches = 0
        self.samples = 0
        # set by the first batch (empty until then; nothing reads them before it)
        self._mean: np.ndarray = np.empty(0)  # estimate of E[x]
        self._var: np.ndarray = np.empty(0)  # estimate of E[v_b]
        self._mean_sq: np.ndarray = np.empty(0)  # estimate of E[mu_b^2] (for total variance)

    def update(self, mean: np.ndarray, var: np.ndarray, count: int) -> None:
        """Add one batch: per-channel mean, biased variance, and elements per channel."""
        mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        var = np.asarray(var, dtype=np.float64).reshape(-1)
        if self.estimator.unbiased:
            var = var * (count / (count - 1)) if count > 1 else var
        values = (mean, var, mean * mean)
        if self.batches == 0:
            self._mean, self._var, self._mean_sq = (v.copy() for v in values)
        elif self.estimator.kind == "ema":
            m = self.estimator.momentum
            for acc, v in zip((self._mean, self._var, self._mean_sq), values):
                acc *= m
                acc += (1.0 - m) * v
        else:
            k = 1.0 / (self.batches + 1)
            for acc, v in zip((self._mean, self._var, self._mean_sq), values):
                acc += (v - acc) * k
        self.batches += 1
        self.samples += count

    def result(self) -> Tuple[np.ndarray, np.ndarray]:
        """The (mean, variance) estimate, float64."""
        if self.batches == 0:
            raise NabnError("no batch reached this BatchNormalization")
        var = self._var.copy()
        if self.estimator.variance == "total":
            var += np.maximum(self._mean_sq - self._mean * self._mean, 0.0)
        return self._mean.copy(), var
