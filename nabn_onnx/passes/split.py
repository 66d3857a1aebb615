"""SplitBatchNormPass: put an explicit BatchNormalization back after each analog layer.

Exporters fold BatchNorm into the preceding layer, which leaves nothing to calibrate.
This pass inserts one BatchNormalization after every selected analog layer that has none::

    Before:   X --Conv(W, b)--> Y --> consumers
    After:    X --Conv(W, b)--> Y' --BatchNormalization(scale, B, mean, var, eps)--> Y --> consumers

The layer's output is renamed ``Y'`` and the new node produces the old name ``Y``, so
consumers and graph outputs stay untouched. The algebra of BatchNormalization is
``Y = (Y' - mean) / sqrt(var + eps) * scale + B``. Two ways to keep ``Y == Y'``:

* **placeholder** (no data): ``mean = 0, var = 1 - eps, scale = 1, B = 0`` with ``eps``
  a power of two chosen per dtype (:func:`nabn_onnx.passes.identity_bn.placeholder_epsilon`: ``2**-17`` for float32 and
  float64, ``2**-11`` for float16, ``2**-8`` for bfloat16) so that both ``1 - eps`` and
  ``var + eps = 1`` are exact in the layer's dtype: the node is the identity bit for bit,
  and so is onnxruntime's Conv+BatchNormalization fusion of it (weights times 1, bias
  times 1 plus 0). (``1 - 2**-17`` rounds to 1.0 in float16, which is why one epsilon
  does not serve every dtype.) Calibration then measures the clean reference statistics
  on the same data it calibrates with.
* **measured** (:meth:`SplitBatchNormPass` with ``stats``): ``mean = mu, var = s2, scale =
  sqrt(s2 + eps), B = mu``, where ``mu``/``s2`` are the per-channel mean and variance of
  ``Y'`` on clean calibration data. Still the identity up to float rounding; it is the
  BatchNorm a network trained with BatchNorm would have had, and it is what calibration
  re-estimates: with noisy statistics ``mu_n, s2_n`` the node maps the noisy distribution
  back onto the clean one, ``(Y' - mu_n) / sqrt(s2_n + eps) * sqrt(s2 + eps) + mu``.

Layers already followed by a BatchNormalization keep theirs. Layers that cannot take one
(shared or non-constant weights, unknown channel count, channels not on axis 1) are
skipped with the reason logged at DEBUG and listed by ``nabn-onnx inspect``.

Default policy: every analog layer (Conv, ConvTranspose, Gemm, MatMul with a constant 2-D
weight) is selected; ``include``/``exclude`` regular expressions on layer names narrow it.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import numpy as np
from onnx import ModelProto, NodeProto, helper, numpy_helper

from ..model import (
    AnalogLayer,
    GraphIndex,
    find_analog_layers,
    read_record,
    record,
    select_layers,
)
from .base import Pass, PassResult
from .identity_bn import (
    BN_PARAMETERS,
    PLACEHOLDER_EPSILON,
    identity_parameters,
    placeholder_epsilon,
    placeholder_parameters,
)
from .normalize import NormalizeWeightsPass

__all__ = ["SplitBatchNormPass", "PLACEHOLDER_EPSILON", "placeholder_epsilon", "select_layers", "bn_param_names"]

logger = logging.getLogger(__name__)

_INSERTED_SUFFIX = "/nabn_bn"


def bn_param_names(bn_name: str) -> Tuple[str, str, str, str]:
    """Initializer names (scale, bias, mean, var) of an inserted BatchNormalization."""
    return tuple(f"{bn_name}.{part}" for part in ("scale", "bias", "mean", "var"))  # type: ignore[return-value]


def _unique(name: str, taken: set) -> str:
    candidate, i = name, 1
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    taken.add(candidate)
    return candidate


class SplitBatchNormPass(Pass):
    """Insert a BatchNormalization after every selected analog layer that lacks one.

    Args:
        include: regular expression; only layers whose name matches are split.
        exclude: regular expression; layers whose name matches are left alone.
        stats: optional clean statistics ``{layer name: (mean, var)}``; layers found here get
            measured parameters, the others the exact-identity placeholder.
    """

    def __init__(
        self,
        include: Optional[str] = None,
        exclude: Optional[str] = None,
        stats: Optional[Dict[str, Tuple[np.ndarray, np.ndarray]]] = None,
    ):
        self.include = include
        self.exclude = exclude
        self.stats = stats or {}

    def call(self, model: ModelProto) -> PassResult:
        """Insert an identity BatchNorm after every selected analog layer that has none."""
        # a model from plain onnx.load may hold its weights in Constant nodes (load_model lifts them)
        normalized = NormalizeWeightsPass()(model).modified
        layers = select_layers(find_analog_layers(model), self.include, self.exclude)
        todo = [x for x in layers if x.bn is None and x.skip_reason is None]
        skipped = {x.name: x.skip_reason for x in layers if x.bn is None and x.skip_reason is not None}
        if not todo:
            return PassResult(model, normalized, {"inserted": [], "skipped": skipped})
        index = GraphIndex(model)
        names_taken = set(index.producer) | set(index.initializers) | {n.name for n in model.graph.node}
        names_taken |= {i.name for i in model.graph.input}
        position = {id(node): i for i, node in enumerate(model.graph.node)}
        new_nodes: Dict[int, NodeProto] = {}
        inserted: List[str] = []
        for layer in todo:
            if layer.weight is None or layer.channels is None:  # find_analog_layers gives these a skip reason
                raise ValueError(f"layer {layer.name} has no constant weight or channel count, yet no skip reason")
            node = layer.node
            weight = index.initializers[layer.weight]
            dtype = helper.tensor_dtype_to_np_dtype(weight.data_type)
            bn_name = _unique(layer.name + _INSERTED_SUFFIX, names_taken)
            scale_n, bias_n, mean_n, var_n = (_unique(n, names_taken) for n in bn_param_names(bn_name))
            params = self._parameters(layer, layer.channels, dtype)
            for pname, value in zip((scale_n, bias_n, mean_n, var_n), params):
                model.graph.initializer.append(numpy_helper.from_array(value, pname))
            out = node.output[0]
            pre = _unique(out + "_nabn_pre", names_taken)
            node.output[0] = pre
            bn = helper.make_node(
                "BatchNormalization",
                [pre, scale_n, bias_n, mean_n, var_n],
                [out],
                name=bn_name,
                epsilon=placeholder_epsilon(dtype),
            )
            new_nodes[position[id(node)]] = bn
            inserted.append(bn_name)
        ordered = []
        for i, node in enumerate(model.graph.node):
            ordered.append(node)
            if i in new_nodes:
                ordered.append(new_nodes[i])
        del model.graph.node[:]
        model.graph.node.extend(ordered)
        previous = read_record(model, "inserted_bn", []) or []
        record(model, "inserted_bn", list(previous) + inserted)
        logger.info("inserted %d BatchNormalization node(s); %d layer(s) skipped", len(inserted), len(skipped))
        return PassResult(model, True, {"inserted": inserted, "skipped": skipped})

    def _parameters(self, layer: AnalogLayer, channels: int, dtype) -> Tuple[np.ndarray, ...]:
        eps = placeholder_epsilon(dtype)
        if layer.name in self.stats:
            mean, var = (np.asarray(a, dtype=np.float64).reshape(-1) for a in self.stats[layer.name])
            if mean.shape != (channels,) or var.shape != (channels,):
                raise ValueError(f"statistics for {layer.name} have {mean.shape[0]} channels, expected {channels}")
            measured = identity_parameters(mean, var, eps)
            return tuple(measured[key].astype(dtype) for key in BN_PARAMETERS)
        placeholder = placeholder_parameters(channels, eps, dtype)
        return tuple(placeholder[key] for key in BN_PARAMETERS)
