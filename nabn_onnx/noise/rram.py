"""RRAM device models: Wan et al. 2022 (RRAMNoise) and the CMO/HfOx stack (RRAMCMONoise).

Both are aihwkit ports (inference/noise/reram.py); they share one module as one device family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Dict, Mapping, Optional, Tuple

import numpy as np

from ..errors import NoiseConfigError
from .device import (
    ZERO_CLIP,
    DeviceNoise,
    apply_poly,
    check_parameter,
    is_finite_number,
)

__all__ = ["RRAMNoise", "RRAMCMONoise"]


_WAN2022 = (
    (1.0, (0.348, 16.030, -43.853, 45.393, -16.815)),
    (86400.0, (0.701, 22.086, -50.773, 47.095, -16.458)),
    (172800.0, (0.782, 20.274, -43.507, 37.062, -11.934)),
)


@dataclass(frozen=True)
class RRAMNoise(DeviceNoise):
    """Resistive RAM, aihwkit's ``ReRamWan2022NoiseModel`` (inference/noise/reram.py:26-165).

    Wan et al., Nature 2022. With ``x = G_T / g_max`` and a 4th-order polynomial per time
    point (reram.py:89-93): programming ``G_P = max(G_T + eta * noise_scale * p_1s(x) N, 0)``
    (reram.py:113-123); at ``t_inference`` in {1 s, 1 day, 2 days} the conductance is drawn
    afresh around the *target*: ``G = max(G_T + eta * noise_scale * p_t(x) N, 0)``
    (reram.py:136-165; aihwkit refuses other times, so does this model; 0 means right after
    programming). ``p(x)`` is multiplied by ``g_max / coeff_g_max_reference``; aihwkit 1.2.0
    sets ``coeff_g_max_reference = g_max`` (reram.py:83: its default 40 uS goes to an unused
    attribute, reram.py:94), so the factor is 1, and so is the default here.
    """

    coeff_dic: Tuple[Tuple[float, Tuple[float, ...]], ...] = _WAN2022
    noise_scale: float = 1.0
    coeff_g_max_reference: Optional[float] = None

    kind = "rram"
    source = "aihwkit inference/noise/reram.py (ReRamWan2022NoiseModel)"

    def __post_init__(self):
        given = self.coeff_dic
        items = given.items() if isinstance(given, Mapping) else given
        try:
            coeffs = tuple(sorted((float(t), tuple(float(c) for c in cs)) for t, cs in items))
        except (TypeError, ValueError):
            raise NoiseConfigError("coeff_dic must map times in seconds to lists of polynomial coefficients") from None
        object.__setattr__(self, "coeff_dic", coeffs)
        super().__post_init__()
        check_parameter(
            len(coeffs) > 0 and all(t > 0 and cs for t, cs in coeffs), "coeff_dic needs times > 0 with coefficients"
        )
        check_parameter(
            is_finite_number(self.noise_scale) and self.noise_scale >= 0,
            f"noise_scale must be >= 0, got {self.noise_scale!r}",
        )
        if self.coeff_g_max_reference is not None:
            check_parameter(
                is_finite_number(self.coeff_g_max_reference) and self.coeff_g_max_reference > 0,
                f"coeff_g_max_reference must be > 0, got {self.coeff_g_max_reference!r}",
            )
        times = [t for t, _ in coeffs]
        check_parameter(
            self.t_inference == 0 or float(self.t_inference) in times,
            f"the RRAM model is measured at t_inference in {', '.join(f'{t:g}' for t in times)} seconds "
            f"(or 0, right after programming), got {self.t_inference:g}",
        )

    def sigma_at(self, t: float, g_target: np.ndarray) -> np.ndarray:
        """Conductance spread (uS) at time ``t`` (a key of ``coeff_dic``)."""
        reference = self.g_max if self.coeff_g_max_reference is None else self.coeff_g_max_reference
        return apply_poly(dict(self.coeff_dic)[t], g_target / self.g_max) * (self.g_max / reference)

    def _draw(self, t, g_target, rng):
        sigma = self.eta * self.noise_scale * self.sigma_at(t, g_target)
        return np.maximum(g_target + sigma * rng.standard_normal(g_target.shape), 0.0)

    def program(self, g_target, rng):
        """Programmed conductances: a draw around the targets at the first time point."""
        return self._draw(self.coeff_dic[0][0], g_target, rng)

    def drift_coefficients(self, g_target, rng):
        """The targets themselves (reram.py:126-134: the targets are the drift parameters)."""
        return g_target

    def drift(self, g_prog, g_target, rng):
        """A fresh draw around the targets at ``t_inference`` (the programmed ones at 0)."""
        if self.t_inference == 0:
            return g_prog
        return self._draw(float(self.t_inference), g_target, rng)


@dataclass(frozen=True)
class RRAMCMONoise(DeviceNoise):
    """Conductive-metal-oxide/HfOx RRAM, aihwkit's ``ReRamCMONoiseModel`` (inference/noise/reram.py:168-317).

    One device per weight (``SingleDeviceConductanceConverter``, converter/conductance.py:347-397):
    ``G_T = g_min + (W - min W) (g_max - g_min) / (max W - min W)``, defaults ``g_max = 88.2``,
    ``g_min = 9`` uS (conductance.py:359-360). Programming (reram.py:252-278):
    ``G_P = G_T + eta * prog_noise_scale * (a0 + a1 G_T) N`` with ``(a0, a1) = (0.00081107, 0.00106879)``
    for a 0.2 % acceptance range and ``(0.0112185391, 0.01129027418)`` for 2 % (reram.py:234-237;
    aihwkit's default argument is 2e-2, which is not a key, so it falls back to the smallest,
    0.2, reram.py:242-243). Relaxation and read noise at ``t`` (reram.py:286-317):
    ``G_D = G_P + drift_scale (m ln t + s(t) N)``, ``m = -0.08900206``,
    ``s(t) = 0.04201137 ln t + 0.41183342`` (reram.py:241), then
    ``G = clip(G_D + eta * read_noise_scale * K log10(G_D) sqrt(ln((t + t_r) / (2 t_r))) N, g_min, g_max)``
    with ``K = 0.0277316483``, ``t_r = 1 us`` (reram.py:239).
    """

    g_max: float = 88.199997
    g_min: float = 9.0
    acceptance_range: float = 0.2
    prog_noise_scale: float = 1.0
    read_noise_scale: float = 1.0
    drift_scale: float = 1.0

    kind = "rram-cmo"
    source = "aihwkit inference/noise/reram.py (ReRamCMONoiseModel)"
    differential = False
    _COEFFS: ClassVar[Dict[float, Tuple[float, float]]] = {
        0.2: (0.00081107, 0.00106879),
        2.0: (0.0112185391, 0.01129027418),
    }
    _DECAY_MEAN, _DECAY_STD = -0.08900206, (0.04201137, 0.41183342)
    _READ_K, _READ_T = 0.0277316483, 1e-6

    def __post_init__(self):
        super().__post_init__()
        check_parameter(
            self.acceptance_range in self._COEFFS,
            f"acceptance_range must be one of {', '.join(f'{k:g}' for k in self._COEFFS)} (percent), "
            f"got {self.acceptance_range!r}",
        )
        for field in ("prog_noise_scale", "read_noise_scale", "drift_scale"):
            check_parameter(
                is_finite_number(getattr(self, field)) and getattr(self, field) >= 0,
                f"{field} must be a finite number >= 0, got {getattr(self, field)!r}",
            )

    def to_conductances(self, weight):
        """One device per weight: ``G_T = g_min + (W - min W) s``; the scale is ``(s, min W)``."""
        w_min, w_max = float(weight.min()), float(weight.max())
        scale = (self.g_max - self.g_min) / max(w_max - w_min, ZERO_CLIP)
        return [(weight - w_min) * scale + self.g_min], (scale, w_min)

    def to_weights(self, conductances, scale):
        """Inverse of :meth:`to_conductances`."""
        ratio, w_min = scale
        return w_min + (conductances[0] - self.g_min) / ratio

    def program(self, g_target, rng):
        """Programmed conductances: ``G_T + eta * prog_noise_scale * (a0 + a1 G_T) N``."""
        a0, a1 = self._COEFFS[self.acceptance_range]
        sigma = self.eta * self.prog_noise_scale * (a0 + a1 * g_target)
        return g_target + sigma * rng.standard_normal(g_target.shape)

    def drift(self, g_prog, param, rng):
        """Logarithmic relaxation plus read noise at ``t_inference``, clipped to ``[g_min, g_max]``."""
        t = float(self.t_inference)
        if t == 0:
            return g_prog
        g_mean = g_prog + self._DECAY_MEAN * math.log(t) * self.drift_scale
        sigma_relax = self._DECAY_STD[0] * math.log(t) + self._DECAY_STD[1]
        g_drift = g_mean + rng.standard_normal(g_prog.shape) * sigma_relax * self.drift_scale
        # log10 of a conductance that relaxed below zero is undefined: clipped at 1e-7 uS
        sigma_read = (
            self._READ_K
            * np.log10(np.maximum(g_drift, ZERO_CLIP))
            * math.sqrt(math.log((t + self._READ_T) / (2 * self._READ_T)))
        )
        g = g_drift + sigma_read * rng.standard_normal(g_prog.shape) * (self.eta * self.read_noise_scale)
        return np.clip(g, self.g_min, self.g_max)
