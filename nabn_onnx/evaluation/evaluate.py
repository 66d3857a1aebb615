"""Evaluate a model's task metric on labelled data, streaming batch by batch.

:class:`Evaluator` holds one onnxruntime session (built with :data:`~nabn_onnx.runtime.SERVE`,
as the model would be deployed) and can run it many times. Named initializers can be
made *overridable*: they become graph inputs too, so each run may feed other values for
them (one simulated chip's noisy weights, one calibration's BatchNorm statistics) without
building a new session; runs that do not feed them use the stored values.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np
from onnx import ModelProto

from ..data import DataLike, input_specs, iter_batches
from ..errors import NabnError
from ..model import ModelLike, load_model
from ..noise import NoiseModel
from ..progress import Progress
from ..runtime import SERVE, make_overridable, make_session, plan_batch, run_chunked
from ..settings import DataSettings, RuntimeSettings, with_options
from .metrics import IGNORE_INDEX, MetricLike, make_metrics

__all__ = ["evaluate", "Evaluator", "Evaluation", "OutputLike", "measure_gain"]

logger = logging.getLogger(__name__)

OutputLike = Union[int, str, None]


@dataclass
class Evaluation:
    """The outcome of one evaluation.

    Attributes:
        value: the metric (a float), or ``{name: value}`` for several metrics or a metric
            that returns several numbers.
        samples: samples evaluated.
        batches: batches run.
        seconds: wall time.
        metric: the metric's name (names joined by commas for several).
    """

    value: Union[float, Dict[str, float]]
    samples: int
    batches: int
    seconds: float
    metric: str = "metric"

    def summary(self) -> str:
        """One line: the metric(s) in percent, samples and time."""
        values = self.value if isinstance(self.value, dict) else {self.metric: self.value}
        text = ", ".join(f"{k} {100 * v:.2f}%" for k, v in values.items())
        return f"{text} on {self.samples} samples ({self.batches} batches) in {self.seconds:.2f}s"


def with_overridable(model: ModelProto, names: Sequence[str]) -> ModelProto:
    """A copy of ``model`` where the initializers ``names`` are also graph inputs, so runs can feed them."""
    try:
        return make_overridable(copy.deepcopy(model), names)
    except ValueError as exc:
        raise NabnError(str(exc)) from None


class Evaluator:
    """One session that evaluates a model (and chip variants of it) on data.

    Args:
        model: path, ``ModelProto`` or ``onnx_graphsurgeon.Graph`` (not modified).
        output: which model output the metric reads: index or name (first output by default).
        overridable: initializer names each :meth:`run` may feed new values for.
        providers: onnxruntime execution providers (CPU by default).

    Raises:
        NabnError: the output does not exist, or an overridable name is no initializer.
    """

    def __init__(
        self,
        model: ModelLike,
        *,
        output: OutputLike = None,
        overridable: Sequence[str] = (),
        providers: Optional[Sequence[str]] = None,
    ):
        proto = load_model(copy.deepcopy(model) if isinstance(model, ModelProto) else model)
        self.specs = input_specs(proto)
        self.output_name = _output_name(proto, output)
        self.output_names = [o.name for o in proto.graph.output]
        self.overridable = tuple(overridable)
        self.plan = plan_batch(proto, providers)
        if self.overridable:
            proto = with_overridable(proto, self.overridable)
        self.session = make_session(proto, optimization=SERVE, providers=providers, batch=self.plan)

    def run(
        self,
        data: DataLike,
        metric: Union[MetricLike, Sequence[MetricLike]] = "top1",
        *,
        feeds: Optional[Mapping[str, np.ndarray]] = None,
        batch_size: int = 64,
        max_batches: Optional[int] = None,
        ignore_index: Optional[int] = IGNORE_INDEX,
        ignore_background: Optional[bool] = None,
        progress: Optional[Progress] = None,
    ) -> Evaluation:
        """Stream ``data`` through the session and compute ``metric``.

        Args:
            data: labelled data (see :mod:`nabn_onnx.data`).
            metric: a name (``"top1"``, ``"top5"``, ``"miou"``, ``"pixel-acc"``), several
                (list or comma-separated), a :class:`~nabn_onnx.evaluation.metrics.Metric` or a callable.
            feeds: values for overridable initializers (others keep their stored values).
            batch_size: samples per batch for file and dict data.
            max_batches: evaluate at most this many batches.
            ignore_index: segmentation label never counted.
            ignore_background: drop background pixels in segmentation metrics (None: each
                metric's default, see :mod:`~nabn_onnx.evaluation.metrics`).
            progress: advanced once per batch.
        """
        started = time.perf_counter()
        extra = dict(feeds or {})
        unknown = sorted(set(extra) - set(self.overridable))
        if unknown:
            raise NabnError(f"cannot feed {unknown[:3]}: not among the overridable initializers of this evaluator")
        metrics = make_metrics(metric, ignore_index=ignore_index, ignore_background=ignore_background)
        self.plan.check_memory(data, batch_size)  # before the first batch is read: a batch too large is one line
        batches = samples = 0
        # A decoded metric may read every output of the model (a detector's score and box heads).
        every = any(getattr(m, "all_outputs", False) for m in metrics.values())
        names = self.output_names if every else [self.output_name]
        for batch in iter_batches(data, self.specs, batch_size=batch_size, max_batches=max_batches):
            results = run_chunked(self.session, names, batch.feeds, self.plan.chunk, extra)
            selected = results[names.index(self.output_name)]
            for m in metrics.values():
                m.update(results if getattr(m, "all_outputs", False) else selected, batch.labels)
            batches += 1
            samples += batch.size
            if progress is not None:
                progress.update()
        finals = {name: m.result() for name, m in metrics.items()}
        if len(finals) == 1:
            value = next(iter(finals.values()))
        else:
            value = {}
            for name, result in finals.items():
                value.update(result if isinstance(result, dict) else {name: result})
        seconds = time.perf_counter() - started
        logger.debug("evaluated %d samples in %d batches in %.2fs", samples, batches, seconds)
        return Evaluation(value, samples, batches, seconds, ",".join(finals))


def _output_name(model: ModelProto, output: OutputLike) -> str:
    names = [o.name for o in model.graph.output]
    if output is None:
        return names[0]
    if isinstance(output, (int, np.integer)) and not isinstance(output, bool):
        if not -len(names) <= output < len(names):
            raise NabnError(f"output index {output} is out of range: the model has {len(names)} output(s) {names}")
        return names[output]
    if output not in names:
        raise NabnError(f"the model has no output named {output!r}; its outputs are {names}")
    return output


@dataclass(frozen=True)
class EvalConfig:
    """How ``evaluate`` reads the data and the model's output (the metric is its own argument).

    Attributes:
        data: batch size and number of batches.
        output: output index or name the metric reads (first output by default).
        ignore_index: segmentation label never counted (255 by default).
        ignore_background: drop background pixels in segmentation metrics (None: mIoU
            ignores them as in the paper, pixel accuracy counts them).
        runtime: execution providers and the progress bar.
    """

    data: DataSettings = field(default_factory=DataSettings)
    output: OutputLike = None
    ignore_index: Optional[int] = IGNORE_INDEX
    ignore_background: Optional[bool] = None
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)

    @classmethod
    def build(cls, config: Optional[EvalConfig], options: Mapping[str, Any]) -> EvalConfig:
        """``config`` (defaults if None) with the flat keyword ``options`` filled in."""
        return with_options(config if config is not None else cls(), options, "evaluate")


def evaluate(
    model: ModelLike,
    data: DataLike,
    metric: Union[MetricLike, Sequence[MetricLike]] = "top1",
    config: Optional[EvalConfig] = None,
    **options: Any,
) -> Union[float, Dict[str, float]]:
    """The task metric of ``model`` on ``data``.

    Args:
        model: path, ``ModelProto`` or ``onnx_graphsurgeon.Graph`` (not modified).
        data: labelled data: an ``.npz`` with ``labels``, a dict of arrays, an image folder
            (:class:`~nabn_onnx.images.ImageFolder` or its path), or batches with ``labels``.
        metric: ``"top1"`` (default), ``"top5"``, ``"miou"``, ``"pixel-acc"``, a list of
            them, a :class:`~nabn_onnx.evaluation.metrics.Metric` or a callable.
        config: how the data and the output are read (:class:`EvalConfig`); or give its
            fields as flat keywords: ``batch_size=``, ``max_batches=``, ``output=``,
            ``ignore_index=``, ``ignore_background=``, ``providers=``, ``show_progress=``.
        **options: the flat keywords.

    Returns:
        The metric as a fraction in [0, 1], or ``{name: value}`` for several.

    Raises:
        NabnError: bad model, data, labels or metric (one-line message).
    """
    config = EvalConfig.build(config, options)
    evaluator = Evaluator(model, output=config.output, providers=config.runtime.providers)
    with Progress("evaluating", None, enabled=config.runtime.show_progress) as bar:
        return evaluator.run(
            data,
            metric,
            batch_size=config.data.batch_size,
            max_batches=config.data.max_batches,
            ignore_index=config.ignore_index,
            ignore_background=config.ignore_background,
            progress=bar,
        ).value


def measure_gain(
    model: ModelLike,
    calibrated: ModelProto,
    test: DataLike,
    *,
    noise: Optional[NoiseModel] = None,
    reference: Optional[ModelLike] = None,
    metric: str = "top1",
    batch_size: int = 64,
    providers: Optional[Sequence[str]] = None,
) -> dict:
    """What calibration bought: the metric of the clean, the noisy and the calibrated model.

    Args:
        model: the model that was calibrated (clean when ``noise`` is given, else the noisy one).
        calibrated: the calibrated model.
        test: labelled test data.
        noise: the simulated chip, when calibration simulated one.
        reference: the clean model, when ``model`` is already noisy.
        metric: metric name (see :func:`nabn_onnx.evaluation.evaluate`).
        batch_size: samples per batch.
        providers: onnxruntime execution providers.

    Returns:
        ``{"metric": name, "clean": float or None, "noisy": float, "calibrated": float}``.
    """
    from ..api import inject

    def measure(m: ModelLike) -> Union[float, Dict[str, float]]:
        return evaluate(m, test, metric=metric, batch_size=batch_size, providers=providers)

    clean: Optional[Union[float, Dict[str, float]]]
    if noise is not None:
        clean = measure(model)
        noisy = measure(inject(model, noise).model)
    else:
        clean = measure(reference) if reference is not None else None
        noisy = measure(model)
    return {"metric": metric, "clean": clean, "noisy": noisy, "calibrated": measure(calibrated)}
