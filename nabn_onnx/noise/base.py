"""The noise-model base: NoiseModel, its validation, seeded draws and provenance record.

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
from dataclasses import asdict, dataclass
from typing import Dict

import numpy as np

from ..errors import NoiseConfigError

__all__ = ["NoiseModel", "weight_rng"]

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
