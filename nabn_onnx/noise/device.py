"""DeviceNoise: the tile flow shared by every device model.

Weights to conductances, programming noise, drift, read noise, global drift compensation,
stuck-at faults, conductance levels and clipping; a device family (pcm.py, rram.py) only
supplies its programming, drift and read statistics.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional

import numpy as np

from ..errors import NoiseConfigError
from .base import NoiseModel, weight_rng

__all__ = [
    "DeviceNoise",
    "STREAM_PROGRAM",
    "STREAM_DRIFT",
    "STREAM_READ",
    "STREAM_STUCK",
    "ZERO_CLIP",
    "READOUT_CLIP",
    "check_parameter",
    "is_finite_number",
    "apply_poly",
]


# --------------------------------------------------------------------------- device models
#
# Ports of the phenomenological inference noise models of IBM's Analog Hardware
# Acceleration Kit (aihwkit 1.2.0, MIT licence, ``src/aihwkit/inference/``). Every constant
# cites the file and line it comes from. Conductances are in microsiemens (uS).

#: Random streams of weight_rng (0 and 1 are the spatial and temporal streams of base.py).
STREAM_PROGRAM, STREAM_DRIFT, STREAM_READ, STREAM_STUCK = 2, 3, 4, 5
#: aihwkit inference/noise/pcm.py:24 and inference/converter/conductance.py:19.
ZERO_CLIP = 1e-7
#: aihwkit inference/compensation/drift.py:30: the read-out is clamped at 1e-4.
READOUT_CLIP = 1e-4


def check_parameter(condition: bool, message: str) -> None:
    """Raise NoiseConfigError(message) unless ``condition`` holds."""
    if not condition:
        raise NoiseConfigError(message)


def is_finite_number(value) -> bool:
    """Whether ``value`` is a finite int or float (bool excluded)."""
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def apply_poly(coeffs, x: np.ndarray) -> np.ndarray:
    """``sum_i c_i x^i`` accumulated as aihwkit's ``_apply_poly`` does (pcm.py:109-113, reram.py:101-105)."""
    out = np.full_like(x, coeffs[0])
    power = np.ones_like(x)
    for c in coeffs[1:]:
        power = power * x
        out = out + power * c
    return out


@dataclass(frozen=True)
class DeviceNoise(NoiseModel):
    """A device model in the conductance domain, composable with faults and quantization.

    The weights of one layer (one tensor) are taken through aihwkit's inference tile flow
    (``InferenceTileWithPeriphery.program_weights`` then ``drift_weights``,
    aihwkit simulator/tiles/inference.py:162-266):

    1. optional clipping of the weights at ``clip_sigma`` standard deviations (aihwkit's
       ``WeightClipType.LAYER_GAUSSIAN``);
    2. mapping to conductances: max|W| to ``g_max`` (:meth:`to_conductances`);
    3. optional quantization of each target conductance to ``levels`` equally spaced values
       on ``[g_min, g_max]``;
    4. programming noise (:meth:`program`) and, per device, drift coefficients (:meth:`drift_coefficients`);
    5. optional stuck-at faults: a fraction ``stuck_min`` of the devices sits at ``g_min``
       and ``stuck_max`` at ``g_max`` whatever was programmed;
    6. back to weights, then, as aihwkit's ``apply_drift_noise`` does, to conductances again
       (max of the *programmed* weights to ``g_max``), drift and read noise up to
       ``t_inference`` (:meth:`drift`), and back to weights;
    7. optional global drift compensation (aihwkit's ``GlobalDriftCompensation``): the
       layer's output is scaled by ``alpha = mean|W_programmed| / mean|W_drifted|``, done here
       on the weights (the same thing for a weight-only analog layer whose bias is digital,
       aihwkit's default).

    Programming noise, drift coefficients and stuck cells are fixed per chip (``seed``,
    weight name and shape). The accumulated read (1/f) noise is the chip's state at
    ``t_inference``, as aihwkit samples it once per ``drift_weights``: the same for every
    ``draw`` (a :class:`~nabn_onnx.calibration.TemporalNoise` then serves one fixed chip),
    unless ``read_per_draw`` re-draws it per draw (every batch a fresh read-out, far harsher:
    the accumulated noise is not re-sampled between reads on a real device).

    Attributes:
        eta: scale of the device's stochastic noise (programming and read); 1 is the
            device as measured. Drift itself is scaled by ``drift_scale``.
        t_inference: seconds since programming ended.
        g_max, g_min: conductance range in uS.
        clip_sigma: clip weights at this many standard deviations of the layer (0: off).
        levels: number of conductance levels (None: continuous); at least 2.
        stuck_min, stuck_max: fractions of devices stuck at ``g_min`` / ``g_max``.
        compensation: ``"none"`` or ``"global"`` drift compensation.
        read_per_draw: re-draw the read noise for every ``draw`` (see above).
    """

    eta: float = 1.0
    t_inference: float = 0.0
    g_max: float = 25.0
    g_min: float = 0.0
    clip_sigma: float = 0.0
    levels: Optional[int] = None
    stuck_min: float = 0.0
    stuck_max: float = 0.0
    compensation: str = "none"
    read_per_draw: bool = False

    kind = "device"
    max_eta = 100.0
    typical = "1 (the device as measured)"
    source = ""
    #: A pair of devices per weight (True) or one device with an offset (False).
    differential = True

    def __post_init__(self):
        super().__post_init__()
        for field in ("t_inference", "g_max", "g_min", "clip_sigma", "stuck_min", "stuck_max"):
            check_parameter(
                is_finite_number(getattr(self, field)), f"{field} must be a finite number, got {getattr(self, field)!r}"
            )
        check_parameter(self.t_inference >= 0, f"t_inference must be >= 0 seconds, got {self.t_inference}")
        check_parameter(self.g_max > 0, f"g_max must be > 0 uS, got {self.g_max}")
        check_parameter(0 <= self.g_min < self.g_max, f"g_min must be in [0, g_max={self.g_max}), got {self.g_min}")
        check_parameter(self.clip_sigma >= 0, f"clip_sigma must be >= 0 (0 turns clipping off), got {self.clip_sigma}")
        for field in ("stuck_min", "stuck_max"):
            value = getattr(self, field)
            check_parameter(0 <= value <= 1, f"{field} must be a fraction in [0, 1], got {value}")
        check_parameter(
            self.stuck_min + self.stuck_max <= 1,
            f"stuck_min + stuck_max must be at most 1, got {self.stuck_min + self.stuck_max}",
        )
        if self.levels is not None:
            check_parameter(
                isinstance(self.levels, (int, np.integer)) and not isinstance(self.levels, bool) and self.levels >= 2,
                f"levels must be an integer >= 2 (or None for continuous conductances), got {self.levels!r}",
            )
        check_parameter(
            isinstance(self.read_per_draw, bool), f"read_per_draw must be true or false, got {self.read_per_draw!r}"
        )
        check_parameter(
            self.compensation in ("none", "global"),
            f"compensation must be 'none' or 'global', got {self.compensation!r}",
        )

    # -- the device physics, per subclass (arrays of conductances in uS, float64)

    def program(self, g_target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Programmed conductances for target conductances."""
        return g_target.copy()

    def drift_coefficients(self, g_target: np.ndarray, rng: np.random.Generator) -> Optional[np.ndarray]:
        """Per-device parameters fixed at programming time (PCM: ``nu``)."""
        return None

    def drift(self, g_prog: np.ndarray, param: Optional[np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """Conductances at ``t_inference`` (drift and accumulated read noise)."""
        return g_prog

    # -- the converter

    def to_conductances(self, weight: np.ndarray):
        """The ``SinglePairConductanceConverter`` of aihwkit (converter/conductance.py:54-65).

        ``s = (g_max - g_min) / max|W|``, ``G+ = clip(W s, 0, g_max) + g_min``,
        ``G- = clip(-W s, 0, g_max) + g_min``.
        """
        scale = (self.g_max - self.g_min) / max(float(np.abs(weight).max()), ZERO_CLIP)
        scaled = weight * scale
        return [np.clip(scaled, 0.0, self.g_max) + self.g_min, np.clip(-scaled, 0.0, self.g_max) + self.g_min], scale

    def to_weights(self, conductances, scale) -> np.ndarray:
        """converter/conductance.py:74-76: ``W = ((G+ - g_min) - (G- - g_min)) / s``."""
        return ((conductances[0] - self.g_min) - (conductances[1] - self.g_min)) / scale

    # -- the pipeline

    def _quantize(self, g: np.ndarray) -> np.ndarray:
        if self.levels is None:
            return g
        span = self.g_max - self.g_min
        steps = self.levels - 1
        return self.g_min + np.round(np.clip((g - self.g_min) / span, 0.0, 1.0) * steps) / steps * span

    def _stick(self, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if not (self.stuck_min or self.stuck_max):
            return g
        u = rng.random(g.shape)
        g = np.where(u < self.stuck_min, self.g_min, g)
        return np.where((u >= self.stuck_min) & (u < self.stuck_min + self.stuck_max), self.g_max, g)

    def _clip(self, weight: np.ndarray) -> np.ndarray:
        if not self.clip_sigma:
            return weight
        bound = self.clip_sigma * float(weight.std())
        return np.clip(weight, -bound, bound) if bound > 0 else weight

    def programmed(self, name: str, weight: np.ndarray):
        """Programmed weights (float64) and the per-device drift parameters of one tensor."""
        w = self._clip(np.asarray(weight, dtype=np.float64))
        targets, scale = self.to_conductances(w)
        rng_p = weight_rng(self.seed, name, weight.shape, STREAM_PROGRAM)
        rng_d = weight_rng(self.seed, name, weight.shape, STREAM_DRIFT)
        rng_s = weight_rng(self.seed, name, weight.shape, STREAM_STUCK)
        programmed, params = [], []
        for g_target in targets:
            g_target = self._quantize(g_target)
            programmed.append(self._stick(self.program(g_target, rng_p), rng_s))
            params.append(self.drift_coefficients(g_target, rng_d))
        return self.to_weights(programmed, scale), params

    def drifted(self, name: str, w_prog: np.ndarray, params, draw: int = 0) -> np.ndarray:
        """Weights at ``t_inference`` from programmed weights.

        As aihwkit's ``apply_drift_noise`` (noise/base.py:117-127): the programmed weights are
        mapped to conductances again.
        """
        conductances, scale = self.to_conductances(w_prog)
        rng_r = weight_rng(self.seed, name, w_prog.shape, STREAM_READ, draw if self.read_per_draw else 0)
        return self.to_weights([self.drift(g, p, rng_r) for g, p in zip(conductances, params)], scale)

    def apply(self, name: str, weight: np.ndarray, draw: int = 0) -> np.ndarray:
        """The weights of chip ``seed`` read ``t_inference`` seconds after programming (same dtype)."""
        w_prog, params = self.programmed(name, weight)
        w_final = self.drifted(name, w_prog, params, draw)
        if self.compensation == "global":
            w_final = w_final * self.compensation_factor(weight, w_prog, w_final)
        return w_final.astype(weight.dtype, copy=False)

    def compensation_factor(self, weight: np.ndarray, w_prog: np.ndarray, w_final: np.ndarray) -> float:
        """The ``GlobalDriftCompensation`` of aihwkit (compensation/drift.py:28-38, base.py:55-61).

        ``alpha = readout(programmed) / readout(now)`` with ``readout = max(mean|W eye|, 1e-4)``.

        The read-out is taken on weights normalized by the clean max|W| (aihwkit's tiles hold
        weights mapped to [-1, 1]), without the tile's forward noise.
        """
        norm = max(float(np.abs(weight).max()), ZERO_CLIP)
        ref = max(float(np.abs(w_prog).mean()) / norm, READOUT_CLIP)
        now = max(float(np.abs(w_final).mean()) / norm, READOUT_CLIP)
        return ref / now

    def describe(self) -> Dict[str, object]:
        """JSON-able settings, for provenance (tuples as lists, no multiplicative-noise fields)."""
        out: Dict[str, object] = {"noise": self.kind}
        out.update(
            {
                k: (list(v) if isinstance(v, tuple) else v)
                for k, v in asdict(self).items()
                if k not in ("sigma_t", "sigma_s", "temporal")
            }
        )
        return out

    def label(self) -> str:
        """Short description for summary lines."""
        extra = "".join(
            f" {k}={getattr(self, k)}" for k in ("levels", "stuck_min", "stuck_max", "clip_sigma") if getattr(self, k)
        )
        comp = " +GDC" if self.compensation == "global" else ""
        return f"{self.kind} t={self.t_inference:g}s eta={self.eta:g} seed={self.seed}{extra}{comp}"
