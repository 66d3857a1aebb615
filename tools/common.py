"""Small helpers the scripts share.

* :func:`atomic_write_text`, :func:`batchnorm_nodes`, :func:`name_batchnorms`: the library's own
  (re-exported from ``nabn_onnx.model`` and ``nabn_onnx.calibration``, whose package names are stable).
* :func:`read_bn_stats`, :func:`write_bn_stats`: the BatchNorm statistics of a model, read and
  written by node name, for the experiments that compute statistics themselves.
"""

from __future__ import annotations

from typing import Dict, Iterable

import numpy as np
from onnx import ModelProto, helper, numpy_helper

from nabn_onnx.calibration import name_batchnorms
from nabn_onnx.model import atomic_write_text, batchnorm_nodes

__all__ = ["atomic_write_text", "batchnorm_nodes", "name_batchnorms", "read_bn_stats", "write_bn_stats"]

#: BatchNormalization inputs: X, scale, B, input_mean, input_var.
_SLOTS = {"scale": 1, "bias": 2, "mean": 3, "var": 4}


def read_bn_stats(model: ModelProto, names: Iterable[str]) -> Dict[str, Dict[str, np.ndarray]]:
    """``{name: {"mean", "var"}}`` (float64) of the named BatchNorms, from their initializers."""
    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in batchnorm_nodes(model)}
    out = {}
    for name in names:
        node = nodes[name]
        missing = [key for key in ("mean", "var") if node.input[_SLOTS[key]] not in inits]
        if missing:
            raise ValueError(f"BatchNormalization '{name}': {' and '.join(missing)} not stored as initializers")
        out[name] = {
            key: numpy_helper.to_array(inits[node.input[_SLOTS[key]]]).astype(np.float64) for key in ("mean", "var")
        }
    return out


def write_bn_stats(model: ModelProto, values: Dict[str, Dict[str, np.ndarray]]) -> ModelProto:
    """Set BatchNorm parameters (``mean``, ``var``, ``scale``, ``bias``) by node name, in place.

    Each value keeps its initializer's data type and shape; an initializer another node also
    reads is left alone and the BatchNorm gets its own copy. Returns ``model``.
    """
    nodes = {n.name: n for n in batchnorm_nodes(model)}
    missing = sorted(set(values) - set(nodes))
    if missing:
        raise ValueError(f"no BatchNormalization named {missing}")
    inits = {t.name: t for t in model.graph.initializer}
    readers: Dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    for bn_name, params in values.items():
        node = nodes[bn_name]
        for key, value in params.items():
            slot = _SLOTS[key]
            name = node.input[slot]
            tensor = inits.get(name)
            if tensor is None:
                raise ValueError(f"{bn_name}: {key} '{name}' is not an initializer")
            dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
            new = np.asarray(value, dtype=np.float64).reshape(tuple(tensor.dims)).astype(dtype)
            if readers.get(name, 0) > 1:
                own = f"{bn_name}.{key}"
                while own in inits:
                    own += "_"
                model.graph.initializer.append(numpy_helper.from_array(new, own))
                inits[own] = model.graph.initializer[-1]
                readers[name] -= 1
                readers[own] = 1
                node.input[slot] = own
            else:
                tensor.CopyFrom(numpy_helper.from_array(new, name))
    return model
