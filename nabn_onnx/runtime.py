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
peak memory and covers models over protobuf's 2 GB limit; the folder is named after this
process, so one a ``kill -9`` leaves is removed by a later run (:mod:`nabn_onnx.tempfiles`).

**Fixed batch dimensions.** Plain ``torch.onnx.export`` without ``dynamic_axes`` and many
third-party exports fix the batch to 1 or 8, and detection heads often bake that batch
into ``Reshape`` constants. :func:`plan_batch` decides once per model how its sessions
take batches of any size:

* the batch dimension is made symbolic in the session's copy (inputs, outputs, and
  ``Reshape`` shape constants whose first entry is the fixed batch become ``0``, "copy the
  input's dimension"), and the rewrite is **verified**: a few seeded random samples run
  batched through the rewritten graph and one fixed batch at a time through the original
  must give the same outputs. onnxruntime would otherwise silently merge the samples of a
  batch wherever the batch is baked in a constant the rewrite missed;
* when the rewrite does not verify, runs are cut into chunks of exactly the fixed batch
  (eval-mode outputs: the last chunk is padded and the padding dropped, which is exact;
  statistics: chunks are Algorithm 1's batches, so a model fixed to batch 1 cannot be
  calibrated in training mode and says so).

The saved model always keeps its original shapes: only sessions see the rewrite.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Mapping, Optional, Sequence

import numpy as np
import onnxruntime as ort
from onnx import ModelProto, TensorProto, helper, numpy_helper

from .errors import ModelError, NabnError
from .memory import SampleMemory, available_memory, check_batch, sample_memory
from .model import save_model, without_large_initializers
from .tempfiles import owned_temp_folder

__all__ = [
    "make_session",
    "make_overridable",
    "check_providers",
    "parse_providers",
    "MEASURE",
    "SERVE",
    "DEFAULT_PROVIDERS",
    "BatchPlan",
    "plan_batch",
    "run_chunked",
    "DYNAMIC",
]

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

    None stays None (the default providers).
    """
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
        raise NabnError(
            f"unknown execution provider {unknown[0]!r}; this onnxruntime "
            f"({ort.__version__}) has {', '.join(available)}"
        )
    usable = [p for p in asked if p in available]
    missing = [p for p in asked if p not in available]
    if not usable:
        raise NabnError(
            f"{', '.join(missing)} not available in this onnxruntime ({ort.__version__}, "
            f"{ort.get_device()} build); it has {', '.join(available)}"
        )
    for name in missing:
        if name not in _warned:
            _warned.add(name)
            logger.warning(
                "%s is not available in this onnxruntime (%s); running on %s", name, ort.__version__, ", ".join(usable)
            )
    return usable


def make_session(
    model: ModelProto,
    *,
    optimization: ort.GraphOptimizationLevel = SERVE,
    providers: Optional[Sequence[str]] = None,
    intra_op_threads: int = 0,
    extra_initializers: Sequence[TensorProto] = (),
    batch: Optional[BatchPlan] = None,
    quiet: bool = False,
) -> ort.InferenceSession:
    """Build an onnxruntime session for ``model``.

    Args:
        model: the model to run.
        optimization: onnxruntime's graph optimization level (:data:`MEASURE` or :data:`SERVE`).
        providers: execution providers, in order of preference; CPU by default.
        intra_op_threads: threads per operator (0: onnxruntime's default, one per core).
        extra_initializers: initializers of ``model`` kept elsewhere (see
            :func:`nabn_onnx.model.without_large_initializers`).
        batch: the model's :class:`BatchPlan`; a fixed batch that :func:`plan_batch`
            verified can be freed is made symbolic in the session's copy (``model`` is untouched).
        quiet: no onnxruntime log at all (for probing runs whose failure is an answer).

    Returns:
        The session.

    Raises:
        ModelError: onnxruntime refuses the model (unsupported operator, invalid graph).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = optimization
    # Memory patterns pre-plan one block per input shape on top of what the arena already
    # holds from the first run: off, MobileNet-v2 at batch 64 peaks at 0.79 GB instead of 0.92 GB
    # for inference and 1.25 GB instead of 1.60 GB for Algorithm 1's training-mode graph, at
    # the same speed (tools/bench_real_calibrate.py). The arena stays: without it every run
    # faults its activations in again (1.6x slower).
    options.enable_mem_pattern = False
    options.intra_op_num_threads = intra_op_threads or int(os.environ.get(THREADS_ENV, "0") or 0)
    options.log_severity_level = 4 if quiet else 3
    # Priority-based order runs a statistics graph's side branches (taps) as soon as their
    # input exists, so activations are freed instead of waiting for the branch: on MobileNet-v2
    # at batch 64 the tap graph's peak fell from 5.4 GB to 1.7 GB (tools/bench_calibrate.py).
    if hasattr(ort, "ExecutionOrder"):
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    providers = check_providers(providers)
    # A file with external data, not model.SerializeToString(), avoids two transient copies of the
    # weights: on a 100 MB model the session's peak is +106 MB, not +285 MB (tools/bench_large.py).
    if batch is not None and batch.free:
        light, weights = without_large_initializers(model)
        _free_batch(light, batch.fixed)
        model, extra_initializers = light, list(extra_initializers) + weights
    # named after this process: what a kill -9 leaves here, the next run removes (nabn_onnx.tempfiles)
    tmp = owned_temp_folder("nabn-session-")
    try:
        path = Path(tmp) / "model.onnx"
        save_model(model, path, external_data=True, extra_initializers=extra_initializers, text=False)
        return ort.InferenceSession(os.fspath(path), options, providers=providers)
    except (
        ort.capi.onnxruntime_pybind11_state.Fail,
        ort.capi.onnxruntime_pybind11_state.InvalidGraph,
        ort.capi.onnxruntime_pybind11_state.InvalidArgument,
        ort.capi.onnxruntime_pybind11_state.NotImplemented,
    ) as exc:
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


@dataclass(frozen=True)
class BatchPlan:
    """How sessions of one model take batches (see the module docstring).

    Attributes:
        fixed: the batch size the model's inputs fix, or None when the batch is free.
        free: sessions get a symbolic batch (the rewrite verified, or nothing was fixed).
        reason: why a fixed batch could not be freed ("" otherwise).
        memory: what one sample needs (:func:`nabn_onnx.memory.sample_memory`; None: unknown).
    """

    fixed: Optional[int] = None
    free: bool = True
    reason: str = ""
    memory: Optional[SampleMemory] = None

    @property
    def chunk(self) -> Optional[int]:
        """Samples per run when runs must be cut to the fixed batch; None when any size runs."""
        return None if self.free or self.fixed is None else self.fixed

    def check_memory(self, data: object, batch_size: int) -> None:
        """Refuse in one line, before any of ``data`` is read, batches of ``batch_size`` that would not fit in memory.

        Raises:
            ResourceError: the estimate (:func:`nabn_onnx.memory.check_batch`) exceeds the memory available.
        """
        check_batch(self.memory, data, batch_size, run=self.chunk, least=self.chunk or 1)

    def describe(self) -> str:
        """A few words for summaries and logs."""
        if self.fixed is None:
            return "dynamic batch"
        if self.free:
            return f"batch fixed to {self.fixed} in the file, run with a symbolic batch (verified)"
        return f"batch fixed to {self.fixed}, run in chunks of {self.fixed} ({self.reason})"


#: The plan of a model whose inputs leave the batch free.
DYNAMIC = BatchPlan()

#: Outputs of the freed and the original graph must agree this closely (float32 reassociation only).
_VERIFY_RTOL, _VERIFY_ATOL = 1e-3, 1e-4


def _real_inputs(model: ModelProto):
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def fixed_batch(model: ModelProto) -> Optional[int]:
    """The batch size fixed by the model's inputs (first dimension), or None when it is symbolic."""
    sizes = set()
    for value in _real_inputs(model):
        dims = value.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            sizes.add(int(dims[0].dim_value))
        else:
            return None
    return sizes.pop() if len(sizes) == 1 else None


def _free_batch(model: ModelProto, fixed: Optional[int]) -> List[str]:
    """Make the batch dimension symbolic, in place; returns the Reshape nodes whose constant was rewritten.

    With ``fixed`` None (a plan with nothing fixed) only the inputs' first dimension is named.
    """
    symbol = "nabn_batch"
    for value in _real_inputs(model):
        value.type.tensor_type.shape.dim[0].dim_param = symbol
    for value in model.graph.output:
        dims = value.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == fixed:
            dims[0].dim_param = symbol
    del model.graph.value_info[:]  # shapes inferred for the fixed batch no longer hold
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    rewritten: List[str] = []
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        if any(a.name == "allowzero" and a.i for a in node.attribute):
            continue  # 0 would mean a zero-sized dimension there
        shape = _constant_value(node.input[1], inits, producer)
        if shape is None or shape.ndim != 1 or not shape.size or int(shape[0]) != fixed:
            continue
        shape = shape.astype(np.int64)
        shape[0] = 0  # copy the input's first dimension: the batch
        name = f"{node.input[1]}/nabn_free_batch/{len(rewritten)}"
        model.graph.initializer.append(numpy_helper.from_array(shape, name))
        node.input[1] = name
        rewritten.append(node.name or node.output[0])
    return rewritten


#: Ops an exporter builds constant shape vectors from (PyTorch without constant folding:
#: ``Concat(Unsqueeze(Constant 1), Unsqueeze(Constant -1))``).
_SHAPE_OPS = ("Concat", "Unsqueeze", "Squeeze", "Identity", "Cast")


def _constant_value(name: str, inits, producer, depth: int = 0) -> Optional[np.ndarray]:
    """The value of an integer tensor computed from constants only by :data:`_SHAPE_OPS`, else None."""
    if name in inits:
        value = numpy_helper.to_array(inits[name])
        return value if value.dtype.kind in "iu" else None
    node = producer.get(name)
    if node is None or node.op_type not in _SHAPE_OPS or depth > 8:
        return None
    values: List[np.ndarray] = []
    for i in node.input:
        found = _constant_value(i, inits, producer, depth + 1) if i else None
        if i and found is None:
            return None
        if found is not None:
            values.append(found)
    if not values:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Concat":
        return np.concatenate([np.atleast_1d(v) for v in values], axis=int(attrs.get("axis", 0)))
    if node.op_type == "Unsqueeze":
        axes = attrs.get("axes", values[1] if len(values) > 1 else None)
        return None if axes is None else np.expand_dims(values[0], tuple(int(a) for a in np.atleast_1d(axes)))
    if node.op_type == "Squeeze":
        axes = attrs.get("axes", values[1] if len(values) > 1 else None)
        if axes is None:
            return np.squeeze(values[0])
        return np.squeeze(values[0], tuple(int(a) for a in np.atleast_1d(axes)))
    return values[0]  # Identity, Cast (to another integer type: the value is the same)


def plan_batch(model: ModelProto, providers: Optional[Sequence[str]] = None, seed: int = 0) -> BatchPlan:
    """Decide how sessions of ``model`` take batches of any size (see the module docstring).

    A model whose inputs fix the batch gets a symbolic batch when the rewritten graph, run
    on ``2 * fixed + 1`` seeded random samples at once, gives the same outputs as the
    original run one fixed batch at a time (the last one padded); otherwise (also when those
    samples would not fit in memory) runs are chunked. The plan carries the memory estimate.
    """
    memory = sample_memory(model)
    fixed = fixed_batch(model)
    if fixed is None:
        return BatchPlan(memory=memory)
    specs = _real_inputs(model)
    rng = np.random.default_rng(seed)
    total = 2 * fixed + 1
    available = available_memory()
    if memory is not None and available is not None and memory.batch_bytes(total) > available:
        return BatchPlan(
            fixed, False, f"verifying a symbolic batch runs {total} samples at once, more than fit in memory", memory
        )
    feeds = {}
    for value in specs:
        tensor_type = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        inner = [d for d in dims[1:] if d is not None]
        if len(inner) < len(dims[1:]) or np.dtype(dtype).kind != "f":
            return BatchPlan(
                fixed, False, "inputs with free inner dimensions or non-float inputs cannot be checked", memory
            )
        feeds[value.name] = rng.standard_normal([total, *inner]).astype(dtype)
    try:
        basic = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        original = make_session(model, optimization=basic, providers=providers, quiet=True)
        freed = make_session(model, optimization=basic, providers=providers, batch=BatchPlan(fixed, True), quiet=True)
        want = run_chunked(original, None, feeds, fixed)
        got = freed.run(None, feeds)
    except (
        ModelError,
        ort.capi.onnxruntime_pybind11_state.Fail,
        ort.capi.onnxruntime_pybind11_state.RuntimeException,
        ort.capi.onnxruntime_pybind11_state.InvalidArgument,
    ) as exc:
        logger.debug("a symbolic batch does not run: %s", exc)
        return BatchPlan(fixed, False, "the graph does not run with another batch size", memory)
    for a, b in zip(want, got):
        if (
            a.shape != b.shape
            or (
                a.dtype.kind == "f"
                and not np.allclose(
                    a, b, rtol=_VERIFY_RTOL, atol=_VERIFY_ATOL * max(1.0, float(np.max(np.abs(a))) if a.size else 1.0)
                )
            )
            or (a.dtype.kind != "f" and not np.array_equal(a, b))
        ):
            return BatchPlan(fixed, False, "the graph mixes the samples of a batch when the batch is freed", memory)
    logger.info("batch fixed to %d in the file: sessions run it with a symbolic batch (verified)", fixed)
    return BatchPlan(fixed, True, memory=memory)


def chunks(feeds: Mapping[str, np.ndarray], size: int, pad: Optional[bool]) -> Iterator[tuple]:
    """``(chunk feeds, real samples)`` of ``size`` samples.

    A short last chunk is padded by repeating its last sample (``pad=True``), dropped (``False``) or kept (``None``).
    """
    total = int(next(iter(feeds.values())).shape[0])
    for start in range(0, total, size):
        real = min(size, total - start)
        part = {k: v[start : start + size] for k, v in feeds.items()}
        if real < size and pad is not None:
            if not pad:
                return
            part = {k: np.concatenate([v, np.repeat(v[-1:], size - real, axis=0)]) for k, v in part.items()}
        yield part, real


def run_chunked(
    session: ort.InferenceSession,
    fetch: Optional[Sequence[str]],
    feeds: Mapping[str, np.ndarray],
    chunk: Optional[int],
    extra: Optional[Mapping[str, np.ndarray]] = None,
) -> List[np.ndarray]:
    """``session.run(fetch, {**feeds, **extra})``, cut into runs of ``chunk`` samples when the batch is fixed.

    Eval-mode outputs only (batch on axis 0): the pieces are concatenated, padding dropped.
    ``extra`` feeds (overridden weights) go to every run whole.
    """
    extra = dict(extra or {})
    if chunk is None:
        return session.run(fetch, {**feeds, **extra})
    pieces: List[List[np.ndarray]] = []
    for part, real in chunks(feeds, chunk, pad=True):
        outputs = session.run(fetch, {**part, **extra})
        pieces.append([o[:real] if o.ndim and o.shape[0] == chunk else o for o in outputs])
    return [np.concatenate(parts) if parts[0].ndim else parts[0] for parts in zip(*pieces)]
