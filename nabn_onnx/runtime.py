"""The one place that builds onnxruntime sessions.

Providers are named explicitly (CPU unless the caller asks otherwise) and graph
optimizations are chosen on purpose. Statistics graphs (:data:`MEASURE`) run with all of
onnxruntime's optimizations: on the sample ResNet the training-mode graph runs 1.5-2x
faster with them than with basic ones (``python tools/bench_calibrate.py`` prints both),
and the fusions and layout changes they make are exact rewrites that move results by
float32 rounding only (the statistics tests compare with a float64 numpy reference at
1e-4). Conv+BatchNormalization fusion, the one rewrite that would change what is
measured, never fires on a training-mode BatchNormalization (it has extra outputs).
Models are handed to onnxruntime as a file with external data in a temporary folder of
the system's temporary directory (never the user's folder), which halves the session's
peak memory and covers models over protobuf's 2 GB limit.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import onnxruntime as ort
from onnx import ModelProto, TensorProto, helper

from .errors import ModelError
from .io import save_model

__all__ = ["make_session", "make_overridable", "MEASURE", "SERVE", "DEFAULT_PROVIDERS"]

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
    extra_initializers: Sequence[TensorProto] = (),
) -> ort.InferenceSession:
    """Build an onnxruntime session for ``model``.

    Args:
        model: the model to run.
        optimization: onnxruntime's graph optimization level (:data:`MEASURE` or :data:`SERVE`).
        providers: execution providers, in order of preference; CPU by default.
        intra_op_threads: threads per operator (0: onnxruntime's default, one per core).
        extra_initializers: initializers of ``model`` kept elsewhere (see
            :func:`nabn_onnx.io.without_large_initializers`).

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
    # Handing onnxruntime a file with external data, rather than model.SerializeToString(),
    # avoids two transient copies of the weights (protobuf's buffer and the Python bytes):
    # on a 100 MB model the session's peak drops from +285 MB to +106 MB (tools/bench_large.py).
    tmp = tempfile.mkdtemp(prefix="nabn-")
    try:
        path = Path(tmp) / "model.onnx"
        save_model(model, path, external_data=True, extra_initializers=extra_initializers)
        return ort.InferenceSession(os.fspath(path), options, providers=providers)
    except (ort.capi.onnxruntime_pybind11_state.Fail,
            ort.capi.onnxruntime_pybind11_state.InvalidGraph,
            ort.capi.onnxruntime_pybind11_state.InvalidArgument,
            ort.capi.onnxruntime_pybind11_state.NotImplemented) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"onnxruntime cannot run the model: {first}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the session holds what it needs (Windows may keep a mapped file)


def make_overridable(model: ModelProto, names: Sequence[str]) -> ModelProto:
    """List the initializers ``names`` as graph inputs too, in place, so onnxruntime lets runs feed them.

    onnxruntime treats an initializer that is also a graph input as a default value a run
    may override; one session can then serve many weight or statistic variants. It cannot
    pre-pack or fold such weights, so a run is slower than with constants.

    Raises:
        ValueError: a name is not an initializer of the main graph.
    """
    inits = {t.name: t for t in model.graph.initializer}
    missing = [n for n in names if n not in inits]
    if missing:
        raise ValueError(f"no initializer named {missing[:3]} to make overridable")
    present = {i.name for i in model.graph.input}
    for name in names:
        if name not in present:
            tensor = inits[name]
            model.graph.input.append(helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims)))
            present.add(name)
    return model
