"""How much memory a batch needs, estimated from the model before any data is read, and a one-line refusal.

A model that declares a 1x3x8192x8192 input, calibrated with batches of 64 images, needs
51.5 GB for one batch of input alone: without this check the images are read one by one
until the process dies of a ``MemoryError``, minutes in, with a traceback.
:func:`check_batch` refuses such a batch in one line that names the estimate, the memory
available and the largest batch size that fits. It never lowers the batch itself:
batch statistics (Algorithm 1) depend on the batch size, so a smaller batch is the user's
choice. Sessions call it through :meth:`nabn_onnx.runtime.BatchPlan.check_memory`, where a
model's batch plan meets a batch size: before the first batch of a calibration pass or an
evaluation is read.

The estimate, per sample, from the model alone (:func:`sample_memory`):

* **data**: the model's inputs for one sample (declared shapes), counted
  :data:`DATA_COPIES` times: the batch as read and one copy made while reading it
  (stacking images, normalizing, making it contiguous);
* **activations**: ONNX shape inference gives every intermediate tensor's shape; walking
  the nodes in order, a tensor lives from the node that makes it to the last node that
  reads it, and the peak of the live total is what a sequential executor holds at once;
  counted :data:`ACTIVATION_FACTOR` times (onnxruntime's arena grows by doubling and keeps
  freed blocks, its blocked layouts pad channels, and a statistics graph holds a few more
  outputs).

A batch of ``n`` samples run in pieces of ``r`` (a fixed batch that could not be freed)
needs ``n * data + r * activations``. Weights are not counted (they do not grow with the
batch), nor tensors shape inference cannot size, nor the bodies of If and Loop nodes; a
model whose inputs have free inner dimensions (an image size chosen per run) gets no
estimate and no check. Measured against the process's peak: on MobileNet-v2 (224x224,
batch 64) the estimate is 1.3 GB, the peaks 0.79 GB for inference and 1.25 GB for the
training-mode statistics graph (:mod:`nabn_onnx.runtime`); on a Conv(3->8)-BN-ReLU model at
1024x1024 read from an image folder the estimate is 159 MB a sample, the peak grows by
165 MB a sample in ``evaluate`` (batches of 4, 8, 16) and about 200 MB in ``calibrate``.
An ordinary batch comes nowhere near a refusal.

Memory available: the least of ``MemAvailable`` (``/proc/meminfo``; ``sysconf`` elsewhere),
what a container's memory limit leaves (cgroup v2 or v1) and what an address-space limit
(``ulimit -v``) leaves. :data:`MEMORY_ENV` overrides it: a size to check against
(``NABN_MEMORY_LIMIT=64G``), or ``off`` to skip the check.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional

import onnx
from onnx import ModelProto, helper

from .errors import ResourceError
from .model import weightless_copy

__all__ = [
    "SampleMemory",
    "sample_memory",
    "samples_in",
    "check_batch",
    "available_memory",
    "parse_size",
    "DATA_COPIES",
    "ACTIVATION_FACTOR",
    "MEMORY_ENV",
]

logger = logging.getLogger(__name__)

#: The batch as read and one copy made while reading it.
DATA_COPIES = 2
#: onnxruntime's arena (grown by doubling, freed blocks kept), blocked layouts that pad channels,
#: and a statistics graph's extra outputs (measured: see the module docstring).
ACTIVATION_FACTOR = 2.0
#: Environment variable: the memory to check batches against (``"64G"``, ``"512M"``, bytes), or ``"off"``.
MEMORY_ENV = "NABN_MEMORY_LIMIT"

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> Optional[int]:
    """``"64G"``, ``"512m"``, ``"1.5T"`` or a number of bytes -> bytes; None for ``"off"``, ``"0"`` or ``"none"``.

    Raises:
        ResourceError: text that is none of these.
    """
    value = text.strip().lower()
    if value in ("off", "0", "none", "no"):
        return None
    found = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", value)
    if found is None:
        raise ResourceError(f"{MEMORY_ENV}={text!r}: give a size such as 64G or 512M, or 'off'")
    return int(float(found[1]) * _UNITS[found[2]])


def _size(count: float) -> str:
    return f"{count / 1e9:.1f} GB" if count >= 1e8 else f"{count / 1e6:.0f} MB"


@dataclass(frozen=True)
class SampleMemory:
    """The memory one sample of a model needs (see the module docstring).

    Attributes:
        data: bytes of the model's inputs for one sample.
        activations: peak bytes of live intermediate tensors for one sample.
        shape: the first input's declared shape, for messages (``"1x3x8192x8192"``).
    """

    data: int
    activations: int
    shape: str = ""

    def batch_bytes(self, batch: int, run: Optional[int] = None) -> int:
        """Estimated bytes for a batch of ``batch`` samples, run in pieces of ``run`` (None: all at once)."""
        run = batch if run is None else run
        return int(batch * DATA_COPIES * self.data + run * ACTIVATION_FACTOR * self.activations)

    def largest_batch(self, available: int, run: Optional[int] = None) -> int:
        """The largest batch whose estimate fits in ``available`` bytes (0: not even one sample)."""
        data = DATA_COPIES * self.data
        if run is None:
            per_sample = data + ACTIVATION_FACTOR * self.activations
            return int(available // per_sample) if per_sample > 0 else 1 << 31
        left = available - run * ACTIVATION_FACTOR * self.activations
        if left < data:
            return 0
        return int(left // data) if data > 0 else 1 << 31

    def check(self, batch: int, run: Optional[int] = None, available: Optional[int] = None) -> None:
        """Refuse, in one line, a batch of ``batch`` samples whose estimate exceeds the memory available.

        Args:
            batch: samples per batch as read.
            run: samples per session run when runs are cut to a fixed batch (None: the whole batch).
            available: bytes to check against (None: :func:`available_memory`; no check when unknown).

        Raises:
            ResourceError: the batch does not fit.
        """
        available = available_memory() if available is None else available
        if available is None:
            return
        needed = self.batch_bytes(batch, run)
        if needed <= available:
            return
        fits = self.largest_batch(available, run)
        advice = (
            f"the largest batch size that fits is {fits}"
            if fits
            else "not even one sample fits: run on a machine with more memory or export the model for smaller inputs"
        )
        raise ResourceError(
            f"a batch of {batch} sample(s) needs about {_size(needed)} (input {self.shape}: "
            f"{_size(self.data)} a sample, activations {_size(self.activations)} a sample), more than the "
            f"{_size(available)} of memory available; {advice} ({MEMORY_ENV}=off skips this check)"
        )


def samples_in(data: object) -> Optional[int]:
    """Samples in ``data`` when they can be counted without reading it (``.npz``, a mapping, an image folder)."""
    from .data import count_samples

    return count_samples(data)


def check_batch(
    memory: Optional[SampleMemory], data: object, batch_size: int, run: Optional[int] = None, least: int = 1
) -> None:
    """Refuse batches of ``batch_size`` samples of ``data`` that would not fit in memory (:meth:`SampleMemory.check`).

    A data set smaller than ``batch_size`` makes one smaller batch: when the batch size does
    not fit, the samples are counted (where that needs no reading) and the batch they make
    is checked instead. ``least``: no batch is smaller than this (a fixed batch run in chunks).

    Raises:
        ResourceError: the batch does not fit.
    """
    if memory is None:
        return
    available = available_memory()
    if available is None:
        return
    batch = max(batch_size, least)
    if memory.batch_bytes(batch, run) <= available:
        return
    samples = samples_in(data)
    if samples is not None and samples < batch:
        batch = max(samples, least)
    memory.check(batch, run, available)


def _itemsize(elem_type: int) -> int:
    try:
        return int(helper.tensor_dtype_to_np_dtype(elem_type).itemsize)
    except (KeyError, TypeError, ValueError):  # strings, or a type numpy has no match for
        return 4


def _bytes(value: onnx.ValueInfoProto) -> Optional[int]:
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
    if any(d < 0 for d in dims):
        return None
    return math.prod(dims) * _itemsize(tensor_type.elem_type)


def sample_memory(model: ModelProto) -> Optional[SampleMemory]:
    """The memory one sample of ``model`` needs, from its declared shapes; None when they do not tell.

    Shape inference runs on a copy without the weights' data (so it costs no memory
    however large they are), with a free batch dimension set to 1; for a fixed batch of
    ``F`` every size is divided by ``F``.
    """
    inits = {t.name for t in model.graph.initializer}
    real = [i.name for i in model.graph.input if i.name not in inits]
    if not real:
        return None
    light = weightless_copy(model)
    batch = None
    for value in light.graph.input:
        if value.name not in real:
            continue
        dims = value.type.tensor_type.shape.dim
        if not len(dims):
            continue
        if dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            batch = batch or int(dims[0].dim_value)
        else:
            dims[0].dim_value = 1
    batch = batch or 1
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False)
    except Exception as exc:  # an estimate is a guard, not a requirement: no estimate, no check
        logger.debug("no memory estimate: shape inference failed: %s", exc)
        return None
    graph = inferred.graph
    sizes: Dict[str, Optional[int]] = {}
    for value in list(graph.value_info) + list(graph.output) + list(graph.input):
        sizes[value.name] = _bytes(value)
    data = [sizes.get(name) for name in real]
    if any(size is None for size in data):
        return None  # free inner dimensions: the data decides the size
    shape = next(v for v in graph.input if v.name == real[0]).type.tensor_type.shape
    text = "x".join(str(d.dim_value) for d in shape.dim)
    activations = _peak_live(graph, sizes, set(real) | inits)
    return SampleMemory(sum(data) // batch, activations // batch, text)  # type: ignore[arg-type]


def _peak_live(graph: onnx.GraphProto, sizes: Dict[str, Optional[int]], held: set) -> int:
    """The peak total size of intermediate tensors alive at once, running the nodes in order."""
    last: Dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            last[name] = index
    end = len(graph.node)
    for value in graph.output:
        last[value.name] = end
    live = peak = 0
    for index, node in enumerate(graph.node):
        outputs = [name for name in node.output if name and name not in held]
        live += sum(sizes.get(name) or 0 for name in outputs)
        peak = max(peak, live)
        done: List[str] = [n for n in dict.fromkeys([*node.input, *outputs]) if n and n not in held]
        live -= sum(sizes.get(n) or 0 for n in done if last.get(n, index) <= index)
    return peak


def _meminfo_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as fh:
            text = fh.read().strip()
        return int(text)
    except (OSError, ValueError):  # "max": no limit
        return None


def _stat_value(path: str, key: str) -> int:
    """The number after ``key`` on its line of a ``key value`` file (``memory.stat``, ``/proc/self/status``), else 0."""
    try:
        with open(path) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == key:
                    return int(parts[1])
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_available() -> Optional[int]:
    """What the container's memory limit leaves (page cache that can be dropped counts as free)."""
    for limit_file, usage_file, stat_file, inactive in (
        ("memory.max", "memory.current", "memory.stat", "inactive_file"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat", "total_inactive_file"),
    ):
        limit = _read_int("/sys/fs/cgroup/" + limit_file)
        if limit is None or limit >= 1 << 60:
            continue
        usage = _read_int("/sys/fs/cgroup/" + usage_file) or 0
        return max(0, limit - usage + _stat_value("/sys/fs/cgroup/" + stat_file, inactive))
    return None


def _address_space_left() -> Optional[int]:
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY:
        return None
    used = _stat_value("/proc/self/status", "VmSize:") * 1024  # kB; 0 without /proc
    return max(0, soft - used)


def available_memory() -> Optional[int]:
    """Bytes a batch may use: :data:`MEMORY_ENV` when set, else the least the machine reports (None: unknown)."""
    given = os.environ.get(MEMORY_ENV)
    if given:
        return parse_size(given)
    found = [v for v in (_meminfo_available(), _cgroup_available(), _address_space_left()) if v is not None]
    return min(found) if found else None
