"""InjectWeightNoisePass: write one simulated chip's noisy weights into the initializers.

::

    Before:   Conv(X, W, b)            After:   Conv(X, W~, b)     W~ = noise.apply("W", W)

Only analog layers' weights are touched (biases too with ``include_bias``); never
BatchNormalization parameters or anything else. Each weight tensor is drawn once, however
many layers use it. The realization depends only on the seed and the weight's name and
shape (see :mod:`nabn_onnx.noise`), so the same chip is simulated on the exported model and
on its split version. The settings are recorded under ``nabn.inject``; a model that already
carries them is left alone (``modified`` False), since a second draw would compound noise.
"""

from __future__ import annotations

import logging
from typing import List, Optional

from onnx import ModelProto, numpy_helper

from ..model import (
    find_analog_layers,
    read_record,
    record,
    select_layers,
)
from ..noise import NoiseModel
from .base import Pass, PassResult
from .normalize import NormalizeWeightsPass

__all__ = ["InjectWeightNoisePass", "noisy_tensor_names"]

logger = logging.getLogger(__name__)


def noisy_tensor_names(
    model: ModelProto, include_bias: bool = False, include: Optional[str] = None, exclude: Optional[str] = None
) -> List[str]:
    """Names of the initializers a noise model acts on, each once, in graph order."""
    names: List[str] = []
    for layer in select_layers(find_analog_layers(model), include, exclude):
        if layer.noise_skip_reason or layer.weight is None:
            continue
        for name in (layer.weight, layer.bias if include_bias else None):
            if name and name not in names:
                names.append(name)
    return names


class InjectWeightNoisePass(Pass):
    """Replace analog weights by one noisy realization.

    Args:
        noise: the noise model (kind, eta, spreads, seed).
        draw: temporal draw index (0 for a baked chip).
        include: regular expression on layer names; only matching layers get noise.
        exclude: regular expression on layer names; matching layers stay clean.
    """

    def __init__(self, noise: NoiseModel, draw: int = 0, include: Optional[str] = None, exclude: Optional[str] = None):
        self.noise = noise
        self.draw = draw
        self.include = include
        self.exclude = exclude

    def call(self, model: ModelProto) -> PassResult:
        """Add the noise to the selected weights, unless the model already carries injected noise."""
        already = read_record(model, "inject")
        if already is not None:
            logger.debug("model already carries injected noise (%s); not injecting again", already)
            return PassResult(model, False, {"tensors": [], "already": already})
        # a model from plain onnx.load may hold its weights in Constant nodes (load_model lifts them)
        normalized = NormalizeWeightsPass()(model).modified
        names = noisy_tensor_names(model, self.noise.include_bias, self.include, self.exclude)
        if not names:
            return PassResult(model, normalized, {"tensors": []})
        inits = {t.name: t for t in model.graph.initializer}
        for name in names:
            weight = numpy_helper.to_array(inits[name])
            inits[name].CopyFrom(numpy_helper.from_array(self.noise.apply(name, weight, self.draw), name))
        settings = dict(self.noise.describe(), draw=self.draw, tensors=len(names))
        if self.include:
            settings["include"] = self.include
        if self.exclude:
            settings["exclude"] = self.exclude
        record(model, "inject", settings)
        logger.info(
            "injected %s noise (eta=%g, seed=%d) into %d tensor(s)",
            self.noise.kind,
            self.noise.eta,
            self.noise.seed,
            len(names),
        )
        return PassResult(model, True, {"tensors": names, "settings": settings})
