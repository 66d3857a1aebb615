"""The paper's noise models (Section III): MUL ``W + W * N_T * N_S`` and ADD ``W + N_T * N_S``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import NoiseModel

__all__ = ["MulNoise", "AddNoise"]


@dataclass(frozen=True)
class MulNoise(NoiseModel):
    """Multiplicative variation, eq. (1): ``W + W * N_T * N_S``."""

    kind = "mul"
    max_eta = 10.0
    typical = "0.02 to 0.1 (the paper's Table I)"

    def combine(self, weight: np.ndarray, factor: np.ndarray) -> np.ndarray:
        """``W + W * factor``: the variation scales with the weight."""
        return weight + weight * factor


@dataclass(frozen=True)
class AddNoise(NoiseModel):
    """Additive variation, eq. (2): ``W + N_T * N_S``."""

    kind = "add"
    max_eta = 10.0
    typical = "0.0002 to 0.00035 for ImageNet-sized weights (the paper's Table II)"

    def combine(self, weight: np.ndarray, factor: np.ndarray) -> np.ndarray:
        """``W + factor``: the variation is added to the weight."""
        return weight + factor
