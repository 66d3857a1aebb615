"""Per-layer distribution shift: divergence between clean and noisy activations (the paper's Figure 1).

For every BatchNormalization (after fused ones are split back out, with clean statistics)
the activations of three models are compared on the same data:

* **clean**: the model as trained;
* **vanilla**: one chip's noisy weights, BatchNorm statistics untouched;
* **nabn**: the same chip after calibration.

Each layer's activation distribution (all channels and positions together) is estimated
with a histogram over a range shared by the three models: the clean model's per-layer
``[min, max]`` from a first pass over the data, split into ``bins`` equal bins, plus one
underflow and one overflow bin so that noisy activations outside the clean range are
counted rather than clipped. Counts are accumulated batch by batch; no activation of the
data set is held. Probabilities are smoothed by adding ``SMOOTHING`` to each bin before
normalizing, so ``log 0`` never occurs; identical histograms still give exactly 0.

``KL(P || Q) = sum P log(P / Q)`` with P the clean distribution, and
``JS(P, Q) = (KL(P || M) + KL(Q || M)) / 2`` with ``M = (P + Q) / 2`` (natural log, so
``JS <= ln 2``). The ratio column is vanilla divergence over NaBN divergence: how many times
closer calibration brings each layer to the clean distribution.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Union

import numpy as np
from onnx import ModelProto, helper

from ..api import split
from ..calibration import calibrate
from ..calibration.config import CalibrationConfig
from ..data import DataLike, input_specs, iter_batches, replayable
from ..errors import NabnError, NothingToDoError
from ..model import (
    GraphIndex,
    ModelLike,
    batchnorm_nodes,
    layer_name,
    load_model,
    without_large_initializers,
)
from ..passes.inject import InjectWeightNoisePass
from ..progress import Progress
from ..reports import Report
from ..runtime import MEASURE, BatchPlan, chunks, make_session, plan_batch
from ..settings import RuntimeSettings, with_options

__all__ = [
    "diagnose",
    "DiagnoseConfig",
    "DiagnoseReport",
    "LayerDivergence",
    "kl_divergence",
    "js_divergence",
    "SMOOTHING",
    "ACTIVATIONS",
]

logger = logging.getLogger(__name__)

#: Added to every bin's probability before normalizing, so empty bins do not give log 0.
SMOOTHING = 1e-10
#: Ops taken as "the activation after a BatchNorm" with ``at="activation"``.
ACTIVATIONS = (
    "Relu",
    "Clip",
    "LeakyRelu",
    "PRelu",
    "Elu",
    "Selu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Softplus",
    "Gelu",
    "Mish",
)
_MODELS = ("clean", "vanilla", "nabn")


def _probabilities(counts: np.ndarray) -> np.ndarray:
    p = counts.astype(np.float64) / max(counts.sum(), 1)
    p = p + SMOOTHING
    return p / p.sum()


def kl_divergence(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """``KL(P || Q)`` of two histograms (counts over the same bins), smoothed, in nats."""
    p, q = _probabilities(p_counts), _probabilities(q_counts)
    return float(max(np.sum(p * np.log(p / q)), 0.0))


def js_divergence(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """Jensen-Shannon divergence of two histograms (counts over the same bins), smoothed, in nats."""
    p, q = _probabilities(p_counts), _probabilities(q_counts)
    m = 0.5 * (p + q)
    return float(max(0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m)), 0.0))


@dataclass
class LayerDivergence:
    """Divergences of one layer's activations from the clean ones.

    Attributes:
        layer: the BatchNormalization's name.
        tensor: the activation measured (BatchNorm output, or the activation after it).
        kl_vanilla: KL(clean || noisy, uncalibrated).
        kl_nabn: KL(clean || noisy, calibrated).
        js_vanilla: JS(clean, noisy, uncalibrated).
        js_nabn: JS(clean, noisy, calibrated).
    """

    layer: str
    tensor: str
    kl_vanilla: float
    kl_nabn: float
    js_vanilla: float
    js_nabn: float

    @staticmethod
    def _ratio(a: float, b: float) -> float:
        return a / b if b > 0 else float("inf") if a > 0 else 1.0

    @property
    def kl_ratio(self) -> float:
        """How many times smaller calibration makes the KL divergence."""
        return self._ratio(self.kl_vanilla, self.kl_nabn)

    @property
    def js_ratio(self) -> float:
        """How many times smaller calibration makes the JS divergence."""
        return self._ratio(self.js_vanilla, self.js_nabn)


@dataclass
class DiagnoseReport(Report):
    """Per-layer divergences for one chip, with the settings that made it.

    Written as ``.json`` or ``.md`` (:meth:`~nabn_onnx.reports.Report.write`).
    """

    FORMATS: ClassVar[Dict[str, str]] = {".json": "to_json", ".md": "to_markdown_report"}

    noise: Dict[str, object]
    method: str
    at: str
    bins: int
    samples: int
    seconds: float
    layers: List[LayerDivergence] = field(default_factory=list)

    def mean(self, key: str) -> float:
        """Average of a :class:`LayerDivergence` field over layers."""
        return float(np.mean([getattr(d, key) for d in self.layers]))

    def to_dict(self) -> Dict[str, object]:
        """JSON-able form of the report, ratios included."""
        return {
            "noise": self.noise,
            "method": self.method,
            "at": self.at,
            "bins": self.bins,
            "samples": self.samples,
            "seconds": round(self.seconds, 3),
            "layers": [dict(vars(d), kl_ratio=d.kl_ratio, js_ratio=d.js_ratio) for d in self.layers],
        }

    def to_markdown(self) -> str:
        """The report as a Markdown table, one row per layer and a mean row."""
        lines = [
            "| layer | KL vanilla | KL NaBN | KL ratio | JS vanilla | JS NaBN | JS ratio |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for entry in self.layers:
            lines.append(
                f"| {entry.layer} | {entry.kl_vanilla:.4f} | {entry.kl_nabn:.4f} | {entry.kl_ratio:.1f} | "
                f"{entry.js_vanilla:.4f} | {entry.js_nabn:.4f} | {entry.js_ratio:.1f} |"
            )
        lines.append(
            f"| **mean** | {self.mean('kl_vanilla'):.4f} | {self.mean('kl_nabn'):.4f} | | "
            f"{self.mean('js_vanilla'):.4f} | {self.mean('js_nabn'):.4f} | |"
        )
        return "\n".join(lines) + "\n"

    def summary(self) -> str:
        """One line with the numbers."""
        n = self.noise
        return (
            f"{len(self.layers)} layer(s), {n['noise']} eta={n['eta']:g} seed={n['seed']}: mean KL "
            f"{self.mean('kl_vanilla'):.4f} -> {self.mean('kl_nabn'):.4f}, mean JS {self.mean('js_vanilla'):.4f} -> "
            f"{self.mean('js_nabn'):.4f} with calibration ({self.samples} samples, {self.seconds:.1f}s)"
        )

    def to_markdown_report(self) -> str:
        """What a ``.md`` report holds: a title, :meth:`summary` and :meth:`to_markdown`."""
        return "# Per-layer divergence\n\n" + self.summary() + "\n\n" + self.to_markdown()


def _taps(model: ModelProto, at: str) -> Dict[str, str]:
    """BatchNorm name -> the tensor to measure."""
    index = GraphIndex(model)
    taps: Dict[str, str] = {}
    for node in batchnorm_nodes(model):
        tensor = node.output[0]
        if at == "activation":
            consumers = index.consumers.get(tensor, [])
            if len(consumers) == 1 and consumers[0].op_type in ACTIVATIONS:
                tensor = consumers[0].output[0]
            else:
                logger.debug(
                    "%s: no single activation after it (%s); measuring its output",
                    layer_name(node),
                    [c.op_type for c in consumers],
                )
        taps[layer_name(node)] = tensor
    return taps


def _exposed_session(model: ModelProto, tensors: Sequence[str], providers, plan: BatchPlan):
    """A session whose outputs are ``tensors``; the weights are shared with ``model``, not copied."""
    proto, weights = without_large_initializers(model)
    del proto.graph.output[:]
    proto.graph.output.extend(helper.make_tensor_value_info(t, 1, None) for t in tensors)
    return make_session(proto, optimization=MEASURE, providers=providers, extra_initializers=weights, batch=plan)


#: bytes of exposed activations one session run may return (see :class:`_MicroBatches`)
_BUDGET = 256 << 20


class _MicroBatches:
    """Runs of a batch cut so that the exposed activations of one run stay under :data:`_BUDGET`.

    The size is set from one sample's outputs on the first run. A model whose batch is fixed
    and cannot be freed runs in chunks of its batch instead (padded, padding dropped).
    """

    def __init__(self, tensors: Sequence[str], plan: BatchPlan):
        self.tensors = list(tensors)
        self.chunk = plan.chunk
        self.size: Optional[int] = None

    def run(self, session, feeds):
        """Yield each run's outputs (one array per tensor, the samples of that run)."""
        n = next(iter(feeds.values())).shape[0]
        if self.chunk is not None:
            for part, real in chunks(feeds, self.chunk, pad=True):
                yield [o[:real] for o in session.run(self.tensors, part)]
            return
        start = 0
        if self.size is None:
            first = session.run(self.tensors, {k: v[:1] for k, v in feeds.items()})
            per_sample = max(1, sum(o.nbytes for o in first))
            self.size = max(1, _BUDGET // per_sample)
            yield first
            start = 1
        for lo in range(start, n, self.size):
            yield session.run(self.tensors, {k: v[lo : lo + self.size] for k, v in feeds.items()})


class _Histogram:
    """Counts of one layer's activations over ``bins`` bins in ``[lo, hi]`` plus under- and overflow."""

    def __init__(self, lo: float, hi: float, bins: int):
        self.lo, self.hi, self.bins = lo, hi, bins
        self.inner = np.linspace(lo, hi, bins + 1)[1:-1]
        self.counts = np.zeros(bins + 2, dtype=np.int64)

    def add(self, values: np.ndarray) -> None:
        v = values.astype(np.float64, copy=False).reshape(-1)
        index = np.searchsorted(self.inner, v, side="right") + 1
        index[v < self.lo] = 0
        index[v > self.hi] = self.bins + 1
        self.counts += np.bincount(index, minlength=self.bins + 2)


@dataclass(frozen=True)
class DiagnoseConfig:
    """The settings of :func:`diagnose`, or its flat keywords.

    Attributes:
        calibration: how the chip is calibrated; its ``noise`` (the chip to simulate) is
            required. Its flat keywords (``noise=``, ``method=``, ``batch_size=``, ... as for
            :func:`~nabn_onnx.calibrate`) are :func:`diagnose`'s.
        at: ``"bn"`` (each BatchNorm's output) or ``"activation"`` (the activation right
            after it, where there is one).
        bins: histogram bins inside the clean range.
    """

    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    at: str = "bn"
    bins: int = 200

    @classmethod
    def build(
        cls, config: Union[DiagnoseConfig, CalibrationConfig, None], options: Dict[str, Any], call: str = "diagnose"
    ) -> DiagnoseConfig:
        """``config`` with flat keywords filled in: ``at``, ``bins`` and the calibration's keywords.

        None gives the defaults; a calibration config alone is taken as :attr:`calibration`.
        ``options`` is emptied.
        """
        if isinstance(config, CalibrationConfig):
            config = cls(calibration=config)
        own = {f.name: options.pop(f.name) for f in fields(cls) if f.name in options and f.name != "calibration"}
        config = with_options(config if config is not None else cls(), own, call)
        return replace(config, calibration=CalibrationConfig.build(config.calibration, options, call=call))


def diagnose(
    model: ModelLike,
    data: DataLike,
    config: Union[DiagnoseConfig, CalibrationConfig, None] = None,
    **options: Any,
) -> DiagnoseReport:
    """Divergence of each layer's activations from the clean ones, without and with calibration.

    Args:
        model: path or ``ModelProto`` (BatchNorm kept or fused; not modified).
        data: calibration data; used to calibrate and to compare the distributions.
        config: a :class:`DiagnoseConfig` (or the calibration's settings alone, a
            :class:`~nabn_onnx.calibration.config.CalibrationConfig`); the chip's ``noise``
            is required.
        **options: :class:`DiagnoseConfig`'s fields as flat keywords: ``at`` (``"bn"`` or
            ``"activation"``), ``bins``, and the calibration's (``noise=``, ``method=``,
            ``batch_size=``, ... as for :func:`~nabn_onnx.calibrate`).

    Returns:
        A :class:`DiagnoseReport` with one :class:`LayerDivergence` per BatchNorm.

    Raises:
        NabnError: bad model, data or settings (one-line message).
        TypeError: an unknown keyword.
    """
    started = time.perf_counter()
    settings = DiagnoseConfig.build(config, dict(options))
    config, at, bins = settings.calibration, settings.at, settings.bins
    noise = config.noise
    if noise is None:
        raise NabnError("diagnose compares the clean model with a simulated chip: give the chip's noise (noise=)")
    providers, show_progress = config.runtime.providers, config.runtime.show_progress
    if at not in ("bn", "activation"):
        raise NabnError(f"'at' must be 'bn' or 'activation', got {at!r}")
    if bins < 2:
        raise NabnError(f"at least 2 histogram bins are needed, got {bins}")
    data = replayable(data)
    proto = load_model(copy.deepcopy(model) if isinstance(model, ModelProto) else model)
    clean = split(
        proto,
        data,
        batch_size=config.data.batch_size,
        max_batches=config.data.max_batches,
        providers=providers,
    ).model
    if not batchnorm_nodes(clean):
        raise NothingToDoError("the model has no BatchNormalization and no analog layer to put one after")
    noisy = InjectWeightNoisePass(noise)(copy.deepcopy(clean)).model
    calibrated = calibrate(clean, data, config.replace(runtime=RuntimeSettings(providers))).model
    taps = _taps(clean, at)
    tensors = list(dict.fromkeys(taps.values()))
    # A batch fixed in the file is freed or chunked, as in evaluation (runtime.plan_batch).
    plan = plan_batch(clean, providers)
    sessions = {
        name: _exposed_session(m, tensors, providers, plan) for name, m in zip(_MODELS, (clean, noisy, calibrated))
    }
    specs = input_specs(clean)

    # Eval mode: every sample runs on its own, so a batch can run in micro-batches sized to keep
    # the exposed activations (every BatchNorm's output) under _BUDGET; the histograms are the same.
    micro = _MicroBatches(tensors, plan)
    with Progress("diagnosing", None, enabled=show_progress) as bar:
        lo = dict.fromkeys(tensors, np.inf)
        hi = dict.fromkeys(tensors, -np.inf)
        for batch in iter_batches(data, specs, batch_size=config.data.batch_size, max_batches=config.data.max_batches):
            for values in micro.run(sessions["clean"], batch.feeds):
                for t, value in zip(tensors, values):
                    lo[t], hi[t] = min(lo[t], float(value.min())), max(hi[t], float(value.max()))
            bar.update()
        hists = {m: {t: _Histogram(lo[t], hi[t], bins) for t in tensors} for m in _MODELS}
        samples = 0
        for batch in iter_batches(data, specs, batch_size=config.data.batch_size, max_batches=config.data.max_batches):
            for m in _MODELS:
                for values in micro.run(sessions[m], batch.feeds):
                    for t, value in zip(tensors, values):
                        hists[m][t].add(value)
            samples += batch.size
            bar.update()

    layers = []
    for layer, t in taps.items():
        p = hists["clean"][t].counts
        v, n = hists["vanilla"][t].counts, hists["nabn"][t].counts
        layers.append(
            LayerDivergence(
                layer, t, kl_divergence(p, v), kl_divergence(p, n), js_divergence(p, v), js_divergence(p, n)
            )
        )
    report = DiagnoseReport(noise.describe(), config.method, at, bins, samples, time.perf_counter() - started, layers)
    logger.info("%s", report.summary())
    return report
