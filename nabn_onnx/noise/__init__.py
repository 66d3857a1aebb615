"""Weight-noise models of analog PIM devices.

The paper's models (Section III), with noise scale ``eta``:

* temporal fluctuation ``N_T ~ N(eta, (sigma_t * eta)^2)``, drawn per inference batch;
* spatial fluctuation ``N_S ~ N(1, sigma_s^2)``, drawn once per chip instance;
* **MUL**: ``W + W * N_T * N_S``;  **ADD**: ``W + N_T * N_S``.

``N_S`` is drawn per weight element. Whether ``N_T`` is drawn per element or once per layer
the paper does not say: ``temporal="element"`` (default) or ``"layer"``.

A realization depends only on ``seed`` and each weight's name and shape (hashed into the
seed sequence), never on the rest of the graph: ``inject`` on an exported model and the
noise inside ``calibrate`` on its split version therefore simulate the same chip. The
spatial draw is fixed per (seed, weight); the temporal draw is also indexed by ``draw``
(0 for a baked file, 0, 1, 2, ... for per-batch re-draws).

Other device models plug in by subclassing :class:`NoiseModel` (override :meth:`combine`,
or :meth:`apply` for a model of another shape) and registering in :data:`NOISE_MODELS`.
"""

from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import MISSING, asdict, dataclass, fields
from typing import ClassVar, Dict, Mapping, Optional, Tuple, Type

import numpy as np

from ..errors import NoiseConfigError

__all__ = [
    "NoiseModel",
    "MulNoise",
    "AddNoise",
    "NOISE_MODELS",
    "make_noise",
    "weight_rng",
    "DeviceNoise",
    "PCMNoise",
    "RRAMNoise",
    "RRAMCMONoise",
    "IdealDevice",
    "DEVICE_MODELS",
    "device_parameters",
    "load_device_file",
]

_SPATIAL, _TEMPORAL = 0, 1


def weight_rng(seed: int, name: str, shape, stream: int, draw: int = 0) -> np.random.Generator:
    """A generator determined by the seed, the weight's name and shape, a stream and a draw index."""
    digest = hashlib.sha256(f"{name}|{tuple(int(d) for d in shape)}".encode()).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    entropy = [seed & 0xFFFFFFFF, seed >> 32, *words, stream, draw]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


@dataclass(frozen=True)
class NoiseModel:
    """A weight-noise model: subclasses define :meth:`apply`.

    Attributes:
        eta: noise scale (mean of the temporal fluctuation).
        sigma_t: temporal spread relative to eta (``sigma_T = sigma_t * eta``).
        sigma_s: spatial spread (``N_S ~ N(1, sigma_s^2)``).
        seed: chip instance; the same seed gives the same bytes.
        temporal: ``"element"`` (N_T per weight element) or ``"layer"`` (one N_T per tensor).
        include_bias: also put noise on the analog layers' biases.
    """

    eta: float
    sigma_t: float = 0.2
    sigma_s: float = 0.1
    seed: int = 0
    temporal: str = "element"
    include_bias: bool = False

    kind = "none"
    #: Largest eta accepted; beyond it the simulated device is meaningless.
    max_eta = math.inf

    def __post_init__(self):
        for field in ("eta", "sigma_t", "sigma_s"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise NoiseConfigError(f"{field} must be a finite number >= 0, got {value!r}")
        if self.eta > self.max_eta:
            raise NoiseConfigError(
                f"eta={self.eta} is beyond the {self.kind.upper()} model's range (at most {self.max_eta}); "
                "typical values are " + self.typical
            )
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63:
            raise NoiseConfigError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if self.temporal not in ("element", "layer"):
            raise NoiseConfigError(f"temporal must be 'element' or 'layer', got {self.temporal!r}")

    typical = ""

    def spatial(self, name: str, shape, dtype=np.float64) -> np.ndarray:
        """``N_S`` for one weight tensor (fixed per chip)."""
        rng = weight_rng(self.seed, name, shape, _SPATIAL)
        return dtype(1.0) + dtype(self.sigma_s) * rng.standard_normal(shape, dtype=dtype)

    def temporal_draw(self, name: str, shape, draw: int = 0, dtype=np.float64) -> np.ndarray:
        """``N_T`` for one weight tensor at one inference batch ``draw``."""
        rng = weight_rng(self.seed, name, shape, _TEMPORAL, draw)
        size = shape if self.temporal == "element" else ()
        return dtype(self.eta) + dtype(self.sigma_t * self.eta) * rng.standard_normal(size, dtype=dtype)

    def apply(self, name: str, weight: np.ndarray, draw: int = 0) -> np.ndarray:
        """The noisy version of ``weight`` (same dtype) for chip ``seed`` at batch ``draw``.

        Noise is drawn and applied in float32 (float64 for float64 weights): float32 normals
        are drawn about twice as fast, and a float32 weight cannot hold more precision anyway.
        """
        dtype = np.float64 if weight.dtype == np.float64 else np.float32
        w = weight.astype(dtype, copy=False)
        factor = self.temporal_draw(name, w.shape, draw, dtype) * self.spatial(name, w.shape, dtype)
        return self.combine(w, factor).astype(weight.dtype, copy=False)

    def combine(self, weight: np.ndarray, factor: np.ndarray) -> np.ndarray:
        """The device equation: the noisy weight from the weight and ``N_T * N_S``."""
        raise NotImplementedError

    def describe(self) -> Dict[str, object]:
        """JSON-able settings, for provenance."""
        out: Dict[str, object] = {"noise": self.kind}
        out.update(asdict(self))
        return out

    def label(self) -> str:
        """Short description for summary lines."""
        return f"{self.kind} eta={self.eta:g} seed={self.seed}"


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


NOISE_MODELS: Dict[str, Type[NoiseModel]] = {"mul": MulNoise, "add": AddNoise}


def make_noise(kind: str, eta: Optional[float] = None, **kwargs) -> NoiseModel:
    """Build a noise model by name.

    ``"mul"``, ``"add"`` (``eta`` required) or a device model (``"pcm"``, ``"rram"``,
    ``"rram-cmo"``, ``"ideal"``; ``eta`` scales its noise, default 1).
    """
    try:
        cls = NOISE_MODELS[kind]
    except KeyError:
        raise NoiseConfigError(f"unknown noise model {kind!r}; choose one of {', '.join(NOISE_MODELS)}") from None
    if eta is None:
        if not issubclass(cls, DeviceNoise):
            raise NoiseConfigError(f"the {kind.upper()} model needs eta")
        eta = 1.0
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise NoiseConfigError(
            f"unknown parameter(s) {', '.join(unknown)} for the {kind} model; it takes "
            f"{', '.join(sorted(device_parameters(kind)))}"
        )
    return cls(eta=eta, **kwargs)


# --------------------------------------------------------------------------- device models
#
# Ports of the phenomenological inference noise models of IBM's Analog Hardware
# Acceleration Kit (aihwkit 1.2.0, MIT licence, ``src/aihwkit/inference/``). Every constant
# cites the file and line it comes from. Conductances are in microsiemens (uS).

_PROGRAM, _DRIFT, _READ, _STUCK = 2, 3, 4, 5
#: aihwkit inference/noise/pcm.py:24 and inference/converter/conductance.py:19.
_ZERO_CLIP = 1e-7
#: aihwkit inference/compensation/drift.py:30: the read-out is clamped at 1e-4.
_READOUT_CLIP = 1e-4


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise NoiseConfigError(message)


def _finite(value) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _poly(coeffs, x: np.ndarray) -> np.ndarray:
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
            _check(_finite(getattr(self, field)), f"{field} must be a finite number, got {getattr(self, field)!r}")
        _check(self.t_inference >= 0, f"t_inference must be >= 0 seconds, got {self.t_inference}")
        _check(self.g_max > 0, f"g_max must be > 0 uS, got {self.g_max}")
        _check(0 <= self.g_min < self.g_max, f"g_min must be in [0, g_max={self.g_max}), got {self.g_min}")
        _check(self.clip_sigma >= 0, f"clip_sigma must be >= 0 (0 turns clipping off), got {self.clip_sigma}")
        for field in ("stuck_min", "stuck_max"):
            value = getattr(self, field)
            _check(0 <= value <= 1, f"{field} must be a fraction in [0, 1], got {value}")
        _check(
            self.stuck_min + self.stuck_max <= 1,
            f"stuck_min + stuck_max must be at most 1, got {self.stuck_min + self.stuck_max}",
        )
        if self.levels is not None:
            _check(
                isinstance(self.levels, (int, np.integer)) and not isinstance(self.levels, bool) and self.levels >= 2,
                f"levels must be an integer >= 2 (or None for continuous conductances), got {self.levels!r}",
            )
        _check(isinstance(self.read_per_draw, bool), f"read_per_draw must be true or false, got {self.read_per_draw!r}")
        _check(
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
        scale = (self.g_max - self.g_min) / max(float(np.abs(weight).max()), _ZERO_CLIP)
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
        rng_p = weight_rng(self.seed, name, weight.shape, _PROGRAM)
        rng_d = weight_rng(self.seed, name, weight.shape, _DRIFT)
        rng_s = weight_rng(self.seed, name, weight.shape, _STUCK)
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
        rng_r = weight_rng(self.seed, name, w_prog.shape, _READ, draw if self.read_per_draw else 0)
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
        norm = max(float(np.abs(weight).max()), _ZERO_CLIP)
        ref = max(float(np.abs(w_prog).mean()) / norm, _READOUT_CLIP)
        now = max(float(np.abs(w_final).mean()) / norm, _READOUT_CLIP)
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


@dataclass(frozen=True)
class IdealDevice(DeviceNoise):
    """A noiseless differential pair: only clipping, quantization and stuck-at faults act."""

    kind = "ideal"
    source = "aihwkit inference/converter/conductance.py (SinglePairConductanceConverter)"


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
        _check(
            len(self.prog_coeff) >= 1 and all(_finite(c) for c in self.prog_coeff),
            f"prog_coeff must be a list of finite numbers, got {list(self.prog_coeff)!r}",
        )
        for field in ("prog_coeff_g_max_reference", "t_read", "t_0"):
            _check(
                _finite(getattr(self, field)) and getattr(self, field) > 0,
                f"{field} must be a finite number > 0, got {getattr(self, field)!r}",
            )
        for field in ("prog_noise_scale", "read_noise_scale", "drift_scale"):
            _check(
                _finite(getattr(self, field)) and getattr(self, field) >= 0,
                f"{field} must be a finite number >= 0 (negative {field.replace('_scale', '')} is not a device), "
                f"got {getattr(self, field)!r}",
            )

    def programming_sigma(self, g_target: np.ndarray) -> np.ndarray:
        """Standard deviation of the programming noise in uS (pcm.py:109-114)."""
        return _poly(self.prog_coeff, g_target / self.g_max) * (self.g_max / self.prog_coeff_g_max_reference)

    def program(self, g_target, rng):
        """Programmed conductances: ``max(G_T + eta * prog_noise_scale * sigma_prog N, 0)``."""
        sigma = self.eta * self.prog_noise_scale * self.programming_sigma(g_target)
        return np.maximum(g_target + sigma * rng.standard_normal(g_target.shape), 0.0)

    @staticmethod
    def nu_moments(g_relative: np.ndarray):
        """Mean and spread of the drift coefficient at ``G_T / g_max`` (pcm.py:123-127)."""
        x = np.maximum(np.abs(g_relative), _ZERO_CLIP)
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
#: per time since programming, fitted to Wan et al., Nature 2022.
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
        _check(len(coeffs) > 0 and all(t > 0 and cs for t, cs in coeffs), "coeff_dic needs times > 0 with coefficients")
        _check(
            _finite(self.noise_scale) and self.noise_scale >= 0, f"noise_scale must be >= 0, got {self.noise_scale!r}"
        )
        if self.coeff_g_max_reference is not None:
            _check(
                _finite(self.coeff_g_max_reference) and self.coeff_g_max_reference > 0,
                f"coeff_g_max_reference must be > 0, got {self.coeff_g_max_reference!r}",
            )
        times = [t for t, _ in coeffs]
        _check(
            self.t_inference == 0 or float(self.t_inference) in times,
            f"the RRAM model is measured at t_inference in {', '.join(f'{t:g}' for t in times)} seconds "
            f"(or 0, right after programming), got {self.t_inference:g}",
        )

    def sigma_at(self, t: float, g_target: np.ndarray) -> np.ndarray:
        """Conductance spread (uS) at time ``t`` (a key of ``coeff_dic``)."""
        reference = self.g_max if self.coeff_g_max_reference is None else self.coeff_g_max_reference
        return _poly(dict(self.coeff_dic)[t], g_target / self.g_max) * (self.g_max / reference)

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
        _check(
            self.acceptance_range in self._COEFFS,
            f"acceptance_range must be one of {', '.join(f'{k:g}' for k in self._COEFFS)} (percent), "
            f"got {self.acceptance_range!r}",
        )
        for field in ("prog_noise_scale", "read_noise_scale", "drift_scale"):
            _check(
                _finite(getattr(self, field)) and getattr(self, field) >= 0,
                f"{field} must be a finite number >= 0, got {getattr(self, field)!r}",
            )

    def to_conductances(self, weight):
        """One device per weight: ``G_T = g_min + (W - min W) s``; the scale is ``(s, min W)``."""
        w_min, w_max = float(weight.min()), float(weight.max())
        scale = (self.g_max - self.g_min) / max(w_max - w_min, _ZERO_CLIP)
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
            * np.log10(np.maximum(g_drift, _ZERO_CLIP))
            * math.sqrt(math.log((t + self._READ_T) / (2 * self._READ_T)))
        )
        g = g_drift + sigma_read * rng.standard_normal(g_prog.shape) * (self.eta * self.read_noise_scale)
        return np.clip(g, self.g_min, self.g_max)


DEVICE_MODELS: Dict[str, Type[DeviceNoise]] = {
    "pcm": PCMNoise,
    "rram": RRAMNoise,
    "rram-cmo": RRAMCMONoise,
    "ideal": IdealDevice,
}
NOISE_MODELS.update(DEVICE_MODELS)

#: Fields of NoiseModel that device models do not use.
_PAPER_ONLY = ("sigma_t", "sigma_s", "temporal")


def device_parameters(kind: str) -> Dict[str, object]:
    """``{parameter: default}`` of a registered noise model (what ``nabn-onnx devices`` lists)."""
    cls = NOISE_MODELS[kind]
    out = {}
    for f in fields(cls):
        if issubclass(cls, DeviceNoise) and f.name in _PAPER_ONLY:
            continue
        default = f.default
        out[f.name] = None if default is MISSING else (list(default) if isinstance(default, tuple) else default)
    return out


def load_device_file(path) -> Dict[str, object]:
    """Device parameters from a JSON file (or TOML on Python 3.11+): ``{"noise": "pcm", "t_inference": 3600, ...}``."""
    import json
    from pathlib import Path

    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise NoiseConfigError(f"cannot read device file {path}: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".toml":
        if sys.version_info < (3, 11):  # a version check, so that mypy does not look for tomllib below 3.11
            raise NoiseConfigError(f"{path.name}: TOML device files need Python 3.11 or later; use JSON")
        else:
            import tomllib

            try:
                data = tomllib.loads(text.decode("utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise NoiseConfigError(f"{path.name} is not valid TOML: {exc}") from None
    else:
        try:
            data = json.loads(text.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise NoiseConfigError(f"{path.name} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise NoiseConfigError(f"{path.name} must hold a table of device parameters, got {type(data).__name__}")
    return data
