"""The one place that builds onnxruntime sessions.

Providers are named explicitly (CPU unless the caller asks otherwise) and graph
optimizations are chosen on purpose. Statistics graphs (:data:`MEASURE`) run with all of
onnxruntime's optimizations: on the sample ResNet the training-mode graph runs 1.5-2x
faster with them than with basic ones (``python tools/bench_calibrate.py`` prints both),
and the fusions and layout changes they make are exact rewrites that move results by
float32 rounding only (the statistics tests compare with a float64 numpy reference at
1e-4). Conv+BatchNormalization fusion, the one rewrite that would change what is
measured, never fires on a training-mode BatchNormalization (it has extra outputs). Models at or over protobuf's 2 GB limit are handed to onnxruntime
through a temporary file in the system's temporary folder, never the user's folder.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import onnxruntime as ort
from onnx import ModelProto

from .errors import ModelError
from .io import PROTOBUF_LIMIT, model_size_bytes, save_model

__all__ = ["make_session", "MEASURE", "SERVE", "DEFAULT_PROVIDERS"]

logger = logging.getLogger(__name__)

MEASURE = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
SERVE = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


def make_session(
    model: ModelProto,
    *,
    optimization: ort.GraphOptimizationLevel = SERVE,
    providers: Optional[Sequence[str]] = None,
    intra_op_threads: int = 0,
) -> ort.InferenceSession:
    """Build an onnxruntime session for ``model``.

    Args:
        model: the model to run.
        optimization: onnxruntime's graph optimization level (:data:`MEASURE` or :data:`SERVE`).
        providers: execution providers, in order of preference; CPU by default.
        intra_op_threads: threads per operator (0: onnxruntime's default, one per core).

    Returns:
        The session.

    Raises:
        ModelError: onnxruntime refuses the model (unsupported operator, invalid graph).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = optimization
    options.intra_op_num_threads = intra_op_threads
    options.log_severity_level = 3
    providers = list(providers or DEFAULT_PROVIDERS)
    try:
        if model_size_bytes(model) < PROTOBUF_LIMIT - (64 << 20):
            return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        with tempfile.TemporaryDirectory(prefix="nabn-") as tmp:
            path = Path(tmp) / "model.onnx"
            save_model(model, path, external_data=True)
            return ort.InferenceSession(os.fspath(path), options, providers=providers)
    except (ort.capi.onnxruntime_pybind11_state.Fail,
            ort.capi.onnxruntime_pybind11_state.InvalidGraph,
            ort.capi.onnxruntime_pybind11_state.InvalidArgument,
            ort.capi.onnxruntime_pybind11_state.NotImplemented) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"onnxruntime cannot run the model: {first}") from None
