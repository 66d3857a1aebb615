"""Weight-noise models of analog PIM devices.

The paper's MUL and ADD models (Section III; the draws and their seeding are described in
:mod:`nabn_onnx.noise.base`) and aihwkit's device models, behind one interface, :class:`NoiseModel`.

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
