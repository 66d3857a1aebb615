"""Graph passes: each a class whose call returns a :class:`PassResult`."""

from .analog_io import AnalogIO, InsertAnalogIOPass, StripAnalogIOPass
from .base import Pass, PassResult, Sequential
from .identity_bn import (
    BN_PARAMETERS,
    PLACEHOLDER_EPSILON,
    identity_parameters,
    is_placeholder,
    placeholder_epsilon,
    placeholder_parameters,
)
from .inject import InjectWeightNoisePass
from .normalize import BypassInitializerIdentitiesPass, LiftConstantWeightsPass, NormalizeWeightsPass
from .split import SplitBatchNormPass

__all__ = [
    "Pass",
    "PassResult",
    "Sequential",
    "SplitBatchNormPass",
    "InjectWeightNoisePass",
    "AnalogIO",
    "InsertAnalogIOPass",
    "StripAnalogIOPass",
    "LiftConstantWeightsPass",
    "BypassInitializerIdentitiesPass",
    "NormalizeWeightsPass",
    "BN_PARAMETERS",
    "PLACEHOLDER_EPSILON",
    "placeholder_epsilon",
    "placeholder_parameters",
    "identity_parameters",
    "is_placeholder",
]
