"""The BatchNorm parameters a calibration reads and writes: names, running statistics, identities.

:func:`identity_values` and :func:`placeholder_values` apply the identity-BatchNorm
arithmetic of :mod:`nabn_onnx.passes.identity_bn` (its one home, shared with the split and
the write-back passes) to the BatchNorms of a calibration.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from onnx import ModelProto

from ..errors import NabnError
from ..model import batchnorm_nodes
from ..passes import identity_parameters, placeholder_parameters

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
    return {name: identity_parameters(mean, var, eps_of[name]) for name, (mean, var) in stats.items()}


def placeholder_values(channels: int, eps: float) -> Dict[str, np.ndarray]:
    """The exact-identity placeholder of an inserted BatchNorm (``var = 1 - eps``, exact in its dtype)."""
    return placeholder_parameters(channels, eps)
