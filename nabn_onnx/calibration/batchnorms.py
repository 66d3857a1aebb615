"""The BatchNorm parameters a calibration reads and writes: names, running statistics, identities.

:func:`identity_values` and :func:`placeholder_values` hold the identity-BatchNorm
arithmetic that ``passes/split.py`` and ``passes/write_stats.py`` also hold; they are kept
apart here, two small functions, so that they can be pointed at the one helper in
:mod:`nabn_onnx.passes` once it exists.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from onnx import ModelProto

from ..errors import NabnError
from ..model import batchnorm_nodes

__all__ = ["Stats", "BNValues", "name_batchnorms", "running_stats", "identity_values", "placeholder_values"]

#: ``{bn name: (mean, var)}``: per-channel statistics measured at BatchNorm inputs.
Stats = Dict[str, Tuple[np.ndarray, np.ndarray]]
#: ``{bn name: {"mean", "var"[, "scale", "bias"]}}``: what ``WriteBatchNormStatsPass`` writes.
BNValues = Dict[str, Dict[str, np.ndarray]]


def name_batchnorms(model: ModelProto) -> int:
    """Give every unnamed BatchNormalization a unique name (its output's); returns how many."""
    taken = {n.name for n in model.graph.node if n.name}
    count = 0
    for node in batchnorm_nodes(model):
        if not node.name:
            name = node.output[0]
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            count += 1
    return count


def running_stats(params: Dict[str, Dict[str, Optional[np.ndarray]]], names: Sequence[str]) -> BNValues:
    """``{name: {"mean", "var"}}`` of the BatchNorms ``names``, from ``read_bn_params(model)``.

    Args:
        params: every BatchNorm's parameters (:func:`nabn_onnx.passes.write_stats.read_bn_params`).
        names: the BatchNorms wanted.

    Raises:
        NabnError: a BatchNorm reads its statistics from a computed tensor (it cannot be recalibrated).
    """
    out = {}
    for name in names:
        mean, var = params[name]["mean"], params[name]["var"]
        if mean is None or var is None:
            raise NabnError(
                f"BatchNormalization '{name}' reads its running statistics from a computed tensor, "
                "not an initializer: it cannot be recalibrated"
            )
        out[name] = {"mean": mean, "var": var}
    return out


def identity_values(stats: Stats, eps_of: Dict[str, float]) -> BNValues:
    """Parameters that make each inserted BatchNorm the identity on data with these statistics.

    ``mean = mu, var = s2, scale = sqrt(s2 + eps), B = mu`` (see ``passes/split.py``).
    """
    out = {}
    for name, (mean, var) in stats.items():
        out[name] = {"scale": np.sqrt(var + eps_of[name]), "bias": mean, "mean": mean, "var": var}
    return out


def placeholder_values(channels: int, eps: float) -> Dict[str, np.ndarray]:
    """The exact-identity placeholder of an inserted BatchNorm (``var = 1 - eps``, exact in its dtype)."""
    return {
        "scale": np.ones(channels),
        "bias": np.zeros(channels),
        "mean": np.zeros(channels),
        "var": np.full(channels, 1.0 - np.float64(np.float32(eps))),
    }
