"""Graph passes: each a class whose call returns a :class:`PassResult`."""

from .analog_io import AnalogIO, InsertAnalogIOPass, StripAnalogIOPass
from .base import Pass, PassResult
from .inject import InjectWeightNoisePass
from .split import SplitBatchNormPass

__all__ = [
    "Pass",
    "PassResult",
    "SplitBatchNormPass",
    "InjectWeightNoisePass",
    "AnalogIO",
    "InsertAnalogIOPass",
    "StripAnalogIOPass",
]
