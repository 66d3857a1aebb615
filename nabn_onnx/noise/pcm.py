"""PCMNoise: aihwkit's phase-change-memory inference noise model (PCMLikeNoiseModel)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .device import (
    ZERO_CLIP,
    DeviceNoise,
    apply_poly,
    check_parameter,
    is_finite_number,
)

__all__ = ["PCMNoise"]


@dataclass(frozen=True)
class PCMNoise(DeviceNoise):
    """Phase-change memory, aihwkit's ``PCMLikeNoiseModel`` (inference/noise/pcm.py:27-158).

    Nandakumar et al., ICECS 2019; Joshi et al., Nature Communications 2020. With ``x = G_T / g_max``:

    * programming (pcm.py:100-118): ``G_P = max(G_T + eta * prog_noise_scale * sigma_P N, 0)``,
      ``sigma_P = (c0 + c1 x + c2 x^2) * g_max / prog_coeff_g_max_reference``, defaults
      ``c = (0.26348, 1.9650, -1.1731)`` uS fitted at 25 uS (pcm.py:89-90);
    * drift coefficient (pcm.py:121-130): ``x' = max(|x|, 1e-7)``,
      ``mu = clip(-0.0155 ln x' + 0.0244, 0.049, 0.1)``,
      ``sigma = clip(-0.0125 ln x' - 0.0059, 0.008, 0.045)``,
      ``nu = |mu + sigma N| * drift_scale``;
    * drift and read noise (pcm.py:133-158), ``t = t_inference + t_0``:
      ``G_D = G_P (t / t_0)^(-nu)`` (when ``t > t_0``),
      ``Q_s = min(0.0088 / max((|G_P| / g_max)^0.65, 1e-3), 0.2)``,
      ``sigma_R = Q_s sqrt(ln((t + t_read) / (2 t_read)))``,
      ``G = max(G_D + |G_D| eta * read_noise_scale * sigma_R N, 0)``;
    * defaults ``t_read = 250 ns``, ``t_0 = 20 s`` (pcm.py:69-70), ``g_max = 25 uS``,
      ``g_min = 0`` (converter/conductance.py:37-38).
    """

    prog_coeff: Tuple[float, ...] = (0.26348, 1.9650, -1.1731)
    prog_coeff_g_max_reference: float = 25.0
    t_read: float = 250.0e-9
    t_0: float = 20.0
    prog_noise_scale: float = 1.0
    read_noise_scale: float = 1.0
    drift_scale: float = 1.0

    kind = "pcm"
    source = "aihwkit inference/noise/pcm.py (PCMLikeNoiseModel)"

    def __post_init__(self):
        object.__setattr__(self, "prog_coeff", tuple(self.prog_coeff))
        super().__post_init__()
        check_parameter(
            len(self.prog_coeff) >= 1 and all(is_finite_number(c) for c in self.prog_coeff),
            f"prog_coeff must be a list of finite numbers, got {list(self.prog_coeff)!r}",
        )
        for field in ("prog_coeff_g_max_reference", "t_read", "t_0"):
            check_parameter(
                is_finite_number(getattr(self, field)) and getattr(self, field) > 0,
                f"{field} must be a finite number > 0, got {getattr(self, field)!r}",
            )
        for field in ("prog_noise_scale", "read_noise_scale", "drift_scale"):
            check_parameter(
                is_finite_number(getattr(self, field)) and getattr(self, field) >= 0,
                f"{field} must be a finite number >= 0 (negative {field.replace('_scale', '')} is not a device), "
                f"got {getattr(self, field)!r}",
            )

    def programming_sigma(self, g_target: np.ndarray) -> np.ndarray:
        """Standard deviation of the programming noise in uS (pcm.py:109-114)."""
        return apply_poly(self.prog_coeff, g_target / self.g_max) * (self.g_max / self.prog_coeff_g_max_reference)

    def program(self, g_target, rng):
        """Programmed conductances: ``max(G_T + eta * prog_noise_scale * sigma_prog N, 0)``."""
        sigma = self.eta * self.prog_noise_scale * self.programming_sigma(g_target)
        return np.maximum(g_target + sigma * rng.standard_normal(g_target.shape), 0.0)

    @staticmethod
    def nu_moments(g_relative: np.ndarray):
        """Mean and spread of the drift coefficient at ``G_T / g_max`` (pcm.py:123-127)."""
        x = np.maximum(np.abs(g_relative), ZERO_CLIP)
        mu = np.clip(-0.0155 * np.log(x) + 0.0244, 0.049, 0.1)
        sigma = np.clip(-0.0125 * np.log(x) - 0.0059, 0.008, 0.045)
        return mu, sigma

    def drift_coefficients(self, g_target, rng):
        """Drift exponents ``nu = |mu + sigma N| * drift_scale`` per device."""
        mu, sigma = self.nu_moments(g_target / self.g_max)
        return np.abs(mu + sigma * rng.standard_normal(g_target.shape)) * self.drift_scale

    def read_sigma(self, g_prog: np.ndarray, t_inference: Optional[float] = None) -> np.ndarray:
        """Relative 1/f read noise accumulated up to ``t_inference`` (pcm.py:147-151)."""
        t = (self.t_inference if t_inference is None else t_inference) + self.t_0
        q_s = np.minimum(0.0088 / np.maximum((np.abs(g_prog) / self.g_max) ** 0.65, 1e-3), 0.2)
        return q_s * math.sqrt(math.log((t + self.t_read) / (2 * self.t_read)))

    def drift(self, g_prog, nu, rng):
        """Power-law drift ``G_P (t / t_0)^-nu`` plus the accumulated read noise, clipped at 0."""
        t = self.t_inference + self.t_0
        g_drift = g_prog * (t / self.t_0) ** (-nu) if t > self.t_0 else g_prog
        noise = np.abs(g_drift) * (self.eta * self.read_noise_scale) * self.read_sigma(g_prog)
        return np.maximum(g_drift + noise * rng.standard_normal(g_prog.shape), 0.0)


#: aihwkit inference/noise/reram.py:89-93: polynomial coefficients (uS, lowest order first)
