"""The noise-model registry: names to classes, make_noise, device parameters and device files."""

from __future__ import annotations

import sys
from dataclasses import MISSING, fields
from typing import Dict, Optional, Type

from ..errors import NoiseConfigError
from .base import NoiseModel
from .device import DeviceNoise
from .ideal import IdealDevice
from .paper import AddNoise, MulNoise
from .pcm import PCMNoise
from .rram import RRAMCMONoise, RRAMNoise

__all__ = ["NOISE_MODELS", "DEVICE_MODELS", "PAPER_ONLY_FIELDS", "make_noise", "device_parameters", "load_device_file"]

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


DEVICE_MODELS: Dict[str, Type[DeviceNoise]] = {
    "pcm": PCMNoise,
    "rram": RRAMNoise,
    "rram-cmo": RRAMCMONoise,
    "ideal": IdealDevice,
}
NOISE_MODELS.update(DEVICE_MODELS)

#: Fields of NoiseModel that device models do not use.
PAPER_ONLY_FIELDS = ("sigma_t", "sigma_s", "temporal")


def device_parameters(kind: str) -> Dict[str, object]:
    """``{parameter: default}`` of a registered noise model (what ``nabn-onnx devices`` lists)."""
    cls = NOISE_MODELS[kind]
    out = {}
    for f in fields(cls):
        if issubclass(cls, DeviceNoise) and f.name in PAPER_ONLY_FIELDS:
            continue
        default = f.default
        out[f.name] = None if default is MISSING else (list(default) if isinstance(default, tuple) else default)
    return out


def load_device_file(path) -> Dict[str, object]:
    """Device parameters from a JSON file (or TOML on Python 3.11+): ``{"noise": "pcm", "t_inference": 3600, ...}``."""
    import json
    from pathlib import Path

    path = Path(path)
    if path.exists() and not path.is_file():  # a FIFO blocks forever, /dev/zero never ends
        raise NoiseConfigError(
            f"device file {path} is not a regular file (a FIFO or device); give a .json or .toml file"
        )
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
