"""WriteBatchNormStatsPass: write statistics (and optionally affine parameters) into BatchNorms.

::

    Before:  BN(X, scale, B, mean, var)      After:  BN(X, scale', B', mean', var')

Values are cast to each parameter's dtype. A parameter initializer that other nodes also
read is not overwritten: the BatchNorm gets its own copy under a new name. Writing the
values a model already holds changes nothing (``modified`` False).
"""

from __future__ import annotations

import logging
from typing import Dict, Optional

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

from ..model import GraphIndex
from .base import Pass, PassResult
from .identity_bn import BN_PARAMETERS, is_placeholder

__all__ = [
    "WriteBatchNormStatsPass",
    "BN_SCALE",
    "BN_BIAS",
    "BN_MEAN",
    "BN_VAR",
    "read_bn_params",
    "bn_params",
    "bn_epsilon",
    # defined in identity_bn; kept importable from here for callers written before it moved
    "is_placeholder",
]

logger = logging.getLogger(__name__)

BN_SCALE, BN_BIAS, BN_MEAN, BN_VAR = 1, 2, 3, 4
_SLOTS = dict(zip(BN_PARAMETERS, (BN_SCALE, BN_BIAS, BN_MEAN, BN_VAR)))


class WriteBatchNormStatsPass(Pass):
    """Set BatchNormalization parameters by node name.

    Args:
        values: ``{bn name: {"mean": array, "var": array, "scale": array, "bias": array}}``;
            any subset of the four keys.
    """

    def __init__(self, values: Dict[str, Dict[str, np.ndarray]]):
        self.values = values

    def call(self, model: ModelProto) -> PassResult:
        """Write the given statistics into the named BatchNorms."""
        index = GraphIndex(model)
        nodes = {n.name: n for n in model.graph.node if n.op_type == "BatchNormalization"}
        missing = sorted(set(self.values) - set(nodes))
        if missing:
            raise ValueError(f"no BatchNormalization named {missing}")
        changed = []
        for bn_name, params in self.values.items():
            node = nodes[bn_name]
            for key, value in params.items():
                slot = _SLOTS[key]
                name = node.input[slot]
                tensor = index.initializers.get(name)
                if tensor is None:
                    raise ValueError(f"{bn_name}: {key} '{name}' is not an initializer")
                dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
                new = np.asarray(value, dtype=np.float64).reshape(tuple(tensor.dims)).astype(dtype)
                if np.array_equal(numpy_helper.to_array(tensor), new):
                    continue
                if len(index.consumers[name]) > 1:
                    own = f"{bn_name}.{key}"
                    while own in index.initializers:
                        own += "_"
                    model.graph.initializer.append(numpy_helper.from_array(new, own))
                    index.initializers[own] = model.graph.initializer[-1]
                    index.consumers[name].remove(node)
                    node.input[slot] = own
                else:
                    tensor.CopyFrom(numpy_helper.from_array(new, name))
                changed.append((bn_name, key))
        return PassResult(model, bool(changed), {"changed": changed})


def read_bn_params(model: ModelProto) -> Dict[str, Dict[str, Optional[np.ndarray]]]:
    """``{bn name: {scale, bias, mean, var}}`` of every BatchNormalization (float64; None where not an initializer)."""
    inits = {t.name: t for t in model.graph.initializer}
    return {node.name: bn_params(node, inits) for node in model.graph.node if node.op_type == "BatchNormalization"}


def bn_params(node, inits: Dict[str, TensorProto]) -> Dict[str, Optional[np.ndarray]]:
    """``{scale, bias, mean, var}`` of one BatchNormalization (float64; None where not in ``inits``)."""
    params: Dict[str, Optional[np.ndarray]] = {}
    for key, slot in _SLOTS.items():
        tensor = inits.get(node.input[slot])
        params[key] = None if tensor is None else numpy_helper.to_array(tensor).astype(np.float64)
    return params


def bn_epsilon(node) -> float:
    """A BatchNormalization's epsilon attribute (ONNX's default 1e-5)."""
    for attr in node.attribute:
        if attr.name == "epsilon":
            return float(attr.f)
    return 1e-5
