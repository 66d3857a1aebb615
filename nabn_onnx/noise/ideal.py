"""IdealDevice: the device flow without programming, drift or read noise (faults, levels and clipping only)."""

from __future__ import annotations

from dataclasses import dataclass

from .device import DeviceNoise

__all__ = ["IdealDevice"]


@dataclass(frozen=True)
class IdealDevice(DeviceNoise):
    """A noiseless differential pair: only clipping, quantization and stuck-at faults act."""

    kind = "ideal"
    source = "aihwkit inference/converter/conductance.py (SinglePairConductanceConverter)"
