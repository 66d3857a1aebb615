"""Graph passes: each a class whose call returns a :class:`PassResult`."""

from .base import Pass, PassResult
from .inject import InjectWeightNoisePass
from .split import SplitBatchNormPass

__all__ = ["Pass", "PassResult", "SplitBatchNormPass", "InjectWeightNoisePass"]
