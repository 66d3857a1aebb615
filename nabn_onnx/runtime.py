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
from typing import List, Optional, Sequence

import onnxruntime as ort
from onnx import ModelProto, TensorProto, helper

from .errors import ModelError, NabnError
from .io import save_model

__all__ = ["make_session", "make_overridable", "check_providers", "parse_providers", "MEASURE", "SERVE",
           "DEFAULT_PROVIDERS"]

logger = logging.getLogger(__name__)

MEASURE = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
SERVE = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
#: Threads per operator for every session of this process when the caller gives none
#: (0 or unset: onnxruntime's default, one per core). Parallel sweeps set it in their workers
#: so that N workers do not each start a thread per core.
THREADS_ENV = "NABN_INTRA_OP_THREADS"


_warned: set = set()


def parse_providers(text: Optional[str]) -> Optional[List[str]]:
    """``"CUDAExecutionProvider,CPUExecutionProvider"`` -> a checked list (see :func:`check_providers`).

    None stays None (the default providers)."""
    if text is None:
        return None
    return check_providers([p.strip() for p in text.split(",") if p.strip()])


def check_providers(providers: Optional[Sequence[str]]) -> List[str]:
    """The providers onnxruntime can use, in the order asked, or a one-line error.

    onnxruntime itself only warns about a provider it lacks and silently runs on the CPU;
    here a name onnxruntime does not know at all is an error, a known provider missing
    from this build (CUDA in a CPU-only wheel) is dropped with one warning when another
    requested provider remains, and an error when none does.

    Raises:
        NabnError: no provider given, an unknown name, or none of them available.
    """
    asked = list(providers or DEFAULT_PROVIDERS)
    if not asked:
        raise NabnError("no execution provider given")
    known, available = set(ort.get_all_providers()), ort.get_available_providers()
    unknown = [p for p in asked if p not in known]
    if unknown:
        raise NabnError(f"unknown execution provider {unknown[0]!r}; this onnxruntime "
                        f"({ort.__version__}) has {', '.join(available)}")
    usable = [p for p in asked if p in available]
    missing = [p for p in asked if p not in available]
    if not usable:
        raise NabnError(f"{', '.join(missing)} not available in this onnxruntime ({ort.__version__}, "
                        f"{ort.get_device()} build); it has {', '.join(available)}")
    for name in missing:
        if name not in _warned:
            _warned.add(name)
            logger.warning("%s is not available in this onnxruntime (%s); running on %s", name, ort.__version__,
                           ", ".join(usable))
    return usable


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
    options.intra_op_num_threads = intra_op_threads or int(os.environ.get(THREADS_ENV, "0") or 0)
    options.log_severity_level = 3
    providers = check_providers(providers)
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
