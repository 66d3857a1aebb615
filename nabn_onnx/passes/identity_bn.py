"""The identity BatchNorm: parameters that make an inserted BatchNormalization return its input.

BatchNormalization computes ``Y = (X - mean) / sqrt(var + eps) * scale + bias``. Two sets
of parameters make it the identity; both are chosen here and nowhere else:

* the **placeholder** (no data), :func:`placeholder_parameters`: ``mean = 0, var = 1 - eps,
  scale = 1, bias = 0`` with ``eps`` a power of two per dtype (:func:`placeholder_epsilon`)
  so that ``1 - eps`` and ``var + eps = 1`` are exact: the node is the identity bit for bit.
  :func:`is_placeholder` recognizes it.
* the **measured** identity, :func:`identity_parameters`: ``mean = mu, var = s2,
  scale = sqrt(s2 + eps), bias = mu`` for the per-channel statistics ``mu, s2`` of ``X``;
  the identity up to float rounding, and the BatchNorm calibration re-estimates.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import numpy as np

__all__ = [
    "PLACEHOLDER_EPSILON",
    "BN_PARAMETERS",
    "placeholder_epsilon",
    "placeholder_parameters",
    "identity_parameters",
    "is_placeholder",
]

#: The parameter names of a BatchNormalization, in its input order after ``X``.
BN_PARAMETERS = ("scale", "bias", "mean", "var")

#: A power of two, so that ``1 - eps`` and ``(1 - eps) + eps == 1`` are exact in float32.
PLACEHOLDER_EPSILON = 2.0**-17
#: The same per dtype: the largest power of two whose ``1 - eps`` the type still represents
#: exactly, capped at float32's (a larger epsilon than needed would change tiny variances).
_EPSILON_BY_DTYPE = {
    np.dtype(np.float16): 2.0**-11,
    np.dtype(np.float32): PLACEHOLDER_EPSILON,
    np.dtype(np.float64): PLACEHOLDER_EPSILON,
}


def placeholder_epsilon(dtype: Any) -> float:
    """The placeholder epsilon for a layer of this dtype.

    ``2**-17`` for float32 and float64, ``2**-11`` for float16, ``2**-8`` for bfloat16
    (``1 - 2**-17`` rounds to 1.0 in float16, which is why one epsilon does not serve every
    dtype); :data:`PLACEHOLDER_EPSILON` for any other.
    """
    dtype = np.dtype(dtype)
    if dtype in _EPSILON_BY_DTYPE:
        return _EPSILON_BY_DTYPE[dtype]
    if dtype.name == "bfloat16":  # ml_dtypes: 8 bits of precision
        return 2.0**-8
    return PLACEHOLDER_EPSILON


def placeholder_parameters(channels: int, eps: float, dtype: Any = np.float64) -> Dict[str, np.ndarray]:
    """The exact-identity placeholder: ``scale 1, bias 0, mean 0, var 1 - eps``.

    Args:
        channels: the number of channels.
        eps: the BatchNorm's epsilon; ``1 - eps`` is taken with ``eps`` as float32 (the
            type of ONNX's ``epsilon`` attribute), so it is exact for the epsilons of
            :func:`placeholder_epsilon`.
        dtype: the arrays' dtype (the layer's, or float64 for values cast later).

    Returns:
        ``{"scale", "bias", "mean", "var"}`` arrays of ``channels`` values.
    """
    return {
        "scale": np.ones(channels, dtype),
        "bias": np.zeros(channels, dtype),
        "mean": np.zeros(channels, dtype),
        "var": np.full(channels, 1.0 - np.float64(np.float32(eps)), dtype),
    }


def identity_parameters(mean: np.ndarray, var: np.ndarray, eps: float) -> Dict[str, np.ndarray]:
    """The identity on data with these statistics: ``mean = mu, var = s2, scale = sqrt(s2 + eps), bias = mu``.

    Args:
        mean: the per-channel mean ``mu`` of the BatchNorm's input.
        var: its per-channel variance ``s2``.
        eps: the BatchNorm's epsilon.

    Returns:
        ``{"scale", "bias", "mean", "var"}``; ``bias`` and ``mean`` are ``mean`` itself.
    """
    return {"scale": np.sqrt(var + eps), "bias": mean, "mean": mean, "var": var}


def is_placeholder(params: Mapping[str, Optional[np.ndarray]], eps: float) -> bool:
    """Whether BatchNorm parameters are the exact-identity placeholder (any float dtype).

    ``mean 0, scale 1, bias 0`` and ``var + eps == 1`` (see :func:`placeholder_parameters`).
    Such a BatchNorm returns its input bit for bit: onnxruntime computes
    ``scale / sqrt(var + eps) = 1`` exactly.

    Args:
        params: ``{"scale", "bias", "mean", "var"}`` as float64 arrays (None where a
            parameter is not an initializer: then it is no placeholder).
        eps: the BatchNorm's epsilon.
    """
    if any(v is None for v in params.values()):
        return False
    return bool(
        np.all(params["scale"] == 1.0)
        and np.all(params["bias"] == 0.0)
        and np.all(params["mean"] == 0.0)
        and np.all(params["var"] + np.float64(np.float32(eps)) == 1.0)
    )
