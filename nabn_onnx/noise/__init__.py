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

Modules: ``base`` (NoiseModel, weight_rng), ``paper`` (MulNoise, AddNoise), ``device``
(DeviceNoise, the shared tile flow), ``pcm``, ``rram`` (Wan 2022 and CMO/HfOx), ``ideal``,
``registry`` (make_noise, NOISE_MODELS, DEVICE_MODELS, device_parameters, load_device_file).
This package re-exports their public names.
"""

from .base import NoiseModel, weight_rng
from .device import DeviceNoise
from .ideal import IdealDevice
from .paper import AddNoise, MulNoise
from .pcm import PCMNoise
from .registry import DEVICE_MODELS, NOISE_MODELS, device_parameters, load_device_file, make_noise
from .rram import RRAMCMONoise, RRAMNoise

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
