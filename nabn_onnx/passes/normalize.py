"""The normalizing rewrites as passes: one kind of weight for every pass that follows.

::

    Before:  Constant(value=W) --> W --> Conv          After:  initializer W --> Conv
    Before:  initializer b --> Identity --> b' --> BN   After:  initializer b --> BN

:class:`LiftConstantWeightsPass` turns ``Constant`` nodes holding a tensor into
initializers (Paddle and TensorFlow exporters); :class:`BypassInitializerIdentitiesPass`
points the readers of an ``Identity`` of an initializer at the initializer (PyTorch
without constant folding). Both are value-preserving renames: no tensor changes.
:class:`NormalizeWeightsPass` runs the two in that order.

The rewrites themselves are :func:`nabn_onnx.model.lift_constant_weights` and
:func:`nabn_onnx.model.bypass_initializer_identities`, in the model layer because
:func:`nabn_onnx.model.load_model` applies them on load and the model layer does not
import the passes. The passes that read weights (split, inject) run
:class:`NormalizeWeightsPass` first, for a model that did not come through ``load_model``
(plain ``onnx.load``); on a loaded model it finds nothing to do.
"""

from __future__ import annotations

from onnx import ModelProto

from ..model import bypass_initializer_identities, lift_constant_weights
from .base import Pass, PassResult, Sequential

__all__ = ["LiftConstantWeightsPass", "BypassInitializerIdentitiesPass", "NormalizeWeightsPass"]


class LiftConstantWeightsPass(Pass):
    """Turn ``Constant`` nodes of the main graph holding a tensor into initializers (subgraphs keep theirs)."""

    def call(self, model: ModelProto) -> PassResult:
        """Lift the Constant tensors; ``details["lifted"]`` counts them."""
        lifted = lift_constant_weights(model)
        return PassResult(model, lifted > 0, {"lifted": lifted})


class BypassInitializerIdentitiesPass(Pass):
    """Remove ``Identity`` nodes that merely rename an initializer (one naming a graph output is kept)."""

    def call(self, model: ModelProto) -> PassResult:
        """Point the Identities' readers at the initializers; ``details["bypassed"]`` counts the nodes removed."""
        bypassed = bypass_initializer_identities(model)
        return PassResult(model, bypassed > 0, {"bypassed": bypassed})


class NormalizeWeightsPass(Sequential):
    """:class:`LiftConstantWeightsPass`, then :class:`BypassInitializerIdentitiesPass`."""

    def __init__(self) -> None:
        super().__init__(LiftConstantWeightsPass(), BypassInitializerIdentitiesPass())
