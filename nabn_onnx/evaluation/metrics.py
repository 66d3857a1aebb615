"""Streaming task metrics: top-k accuracy, mean IoU and pixel accuracy.

A metric sees the model's output and the labels one batch at a time and keeps only small
counters (hits, a ``C x C`` confusion matrix), never the outputs of the whole data set.
Results are fractions in ``[0, 1]``; reports print them as percentages.

Built-in names (see :func:`make_metric`):

* ``"top1"``, ``"top5"`` (any ``"top<k>"``): classifier logits ``(N, C)`` against integer
  labels ``(N,)``.
* ``"miou"``: mean intersection over union of segmentation logits ``(N, C, H, W)`` against
  label maps ``(N, H, W)``. Following the paper (Section V-B) it ignores pixels labelled
  background (class 0) by default: they leave the confusion matrix and class 0 leaves the
  mean (its IoU would be 0 by construction). ``ignore_background=False`` keeps both.
* ``"pixel-acc"``: the fraction of labelled pixels predicted right; background pixels
  count unless ``ignore_background=True``.

Both segmentation metrics drop pixels labelled ``ignore_index`` (255 by default, the
PASCAL VOC "void" border) everywhere. A class that never occurs in the labels and is never
predicted has no IoU and does not enter the mean.

* ``"map50"``, ``"mar50"`` (any ``"map<iou>"``, ``"mar<iou>"``): detection mean average
  precision / recall at IoU ``iou / 100`` (:mod:`~nabn_onnx.evaluation.detection`), on
  decoded boxes.
* ``"<decoder>:<metric>"`` (``"picodet:map50"``, ``"dbnet:miou"``) or a bare decoder name
  (its default metric): the metric applied to the model's outputs after a registered
  decoder (:mod:`~nabn_onnx.evaluation.decoders`): detectors and text detectors whose raw
  outputs are not what the metric reads.

Any other metric is a :class:`Metric`: an object with ``update(outputs, labels)`` and
``result()`` (for example a detection mAP accumulating matches per batch). A plain
callable ``f(outputs, labels) -> float`` is accepted too; it is applied per batch and its
values are averaged weighted by batch size, which is right for per-sample averages
(accuracy, mean error) and wrong for whole-set metrics such as mAP: write a
:class:`Metric` for those.
"""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np

from ..errors import DataError, NabnError

if TYPE_CHECKING:  # for annotations only: decoders is imported where a decoder is built
    from .decoders import Decoder

__all__ = [
    "DecodedMetric",
    "Metric",
    "TopK",
    "ConfusionMatrix",
    "MeanIoU",
    "PixelAccuracy",
    "CallableMetric",
    "MetricLike",
    "make_metric",
    "make_metrics",
    "metric_names",
    "BACKGROUND",
    "IGNORE_INDEX",
]

#: Label of the background class in segmentation maps.
BACKGROUND = 0
#: Label of pixels no metric counts (PASCAL VOC's object borders).
IGNORE_INDEX = 255

Result = Union[float, Dict[str, float]]


@runtime_checkable
class Metric(Protocol):
    """What a metric must offer: ``update`` once per batch, ``result`` at the end."""

    def update(self, outputs: Any, labels: Optional[np.ndarray]) -> None:
        """Add one batch of outputs and labels.

        ``outputs`` is the model's output (every output, as a list, for a metric whose
        ``all_outputs`` is true); ``labels`` are the batch's labels (None when the data has none).
        """

    def result(self) -> Result:
        """The metric over every batch seen so far."""


MetricLike = Union[str, Metric, Callable[[np.ndarray, np.ndarray], float]]


def _need_labels(labels: Optional[np.ndarray], name: str) -> np.ndarray:
    if labels is None:
        raise DataError(f"metric '{name}' needs labels: the data has no 'labels' array")
    return np.asarray(labels)


class TopK:
    """Top-k accuracy of classifier logits.

    Args:
        k: a sample counts as right when its label is among the ``k`` largest logits.
    """

    def __init__(self, k: int = 1):
        if k < 1:
            raise NabnError(f"top-k accuracy needs k >= 1, got {k}")
        self.k = k
        self.name = f"top{k}"
        self.hits = 0
        self.total = 0

    def update(self, outputs: np.ndarray, labels: Optional[np.ndarray]) -> None:
        """Count the batch's top-k hits against class-index labels."""
        given = _need_labels(labels, self.name)
        logits = np.asarray(outputs)
        if logits.ndim > 2 and all(d == 1 for d in logits.shape[2:]):
            logits = logits.reshape(logits.shape[:2])  # (N, C, 1, 1) heads
        if given.ndim == 2 and logits.ndim == 2 and given.shape == logits.shape:
            raise DataError(
                f"{self.name} needs class indices (N,) as labels; got one-hot labels {given.shape}: "
                "store labels.argmax(axis=1)"
            )
        labels = given.reshape(-1)
        if logits.ndim != 2 or len(logits) != len(labels) or given.size != len(given):
            raise DataError(
                f"{self.name} needs logits (N, C) and labels (N,); got outputs {logits.shape} and labels {given.shape}"
            )
        classes = logits.shape[1]
        if self.k > classes:
            raise DataError(f"{self.name} needs at least {self.k} classes; the model outputs {classes}")
        _check_range(labels, classes, None, self.name)
        if self.k == 1:
            right = logits.argmax(axis=1) == labels
        else:
            best = np.argpartition(-logits, self.k - 1, axis=1)[:, : self.k]
            right = (best == labels[:, None]).any(axis=1)
        self.hits += int(right.sum())
        self.total += len(labels)

    def result(self) -> float:
        """Fraction of samples whose label is among the top-k outputs."""
        if self.total == 0:
            raise DataError(f"{self.name}: no sample was evaluated")
        return self.hits / self.total


def _check_range(labels: np.ndarray, classes: int, ignore_index: Optional[int], name: str) -> None:
    if labels.dtype.kind not in "iu":
        raise DataError(f"{name} needs integer labels, got {labels.dtype}")
    valid = labels if ignore_index is None else labels[labels != ignore_index]
    if valid.size and (valid.min() < 0 or valid.max() >= classes):
        bad = int(valid.min() if valid.min() < 0 else valid.max())
        extra = f" or {ignore_index}" if ignore_index is not None else ""
        raise DataError(f"{name}: label {bad} is outside the model's {classes} classes (0..{classes - 1}{extra})")


class ConfusionMatrix:
    """A streamed ``C x C`` confusion matrix of segmentation predictions (rows: label, columns: prediction).

    Args:
        ignore_index: label of pixels that are never counted (None: every label counts).
        ignore_background: also drop pixels labelled ``background``.
        background: the background class.
    """

    name = "confusion"

    def __init__(
        self, ignore_index: Optional[int] = IGNORE_INDEX, ignore_background: bool = False, background: int = BACKGROUND
    ):
        self.ignore_index = ignore_index
        self.ignore_background = ignore_background
        self.background = background
        self.matrix: Optional[np.ndarray] = None

    def update(self, outputs: np.ndarray, labels: Optional[np.ndarray]) -> None:
        """Add the batch's label maps and predicted maps to the confusion matrix."""
        labels = _need_labels(labels, self.name)
        logits = np.asarray(outputs)
        if logits.ndim < 3 or logits.ndim != labels.ndim + 1 or logits.shape[:1] + logits.shape[2:] != labels.shape:
            raise DataError(
                f"{self.name} needs logits (N, C, H, W) and label maps (N, H, W); got outputs {logits.shape} "
                f"and labels {labels.shape}"
            )
        classes = logits.shape[1]
        if self.matrix is None:
            self.matrix = np.zeros((classes, classes), dtype=np.int64)
        elif self.matrix.shape[0] != classes:
            raise DataError(f"{self.name}: the model output {classes} classes after {self.matrix.shape[0]}")
        _check_range(labels, classes, self.ignore_index, self.name)
        keep = np.ones(labels.shape, dtype=bool)
        if self.ignore_index is not None:
            keep &= labels != self.ignore_index
        if self.ignore_background:
            keep &= labels != self.background
        truth = labels[keep].astype(np.int64)
        predicted = logits.argmax(axis=1)[keep].astype(np.int64)
        self.matrix += np.bincount(truth * classes + predicted, minlength=classes * classes).reshape(classes, classes)

    def _counted(self) -> np.ndarray:
        if self.matrix is None or self.matrix.sum() == 0:
            raise DataError(f"{self.name}: no labelled pixel was evaluated (all ignored?)")
        return self.matrix

    def iou(self) -> np.ndarray:
        """IoU per class; NaN for a class neither labelled nor predicted."""
        m = self._counted().astype(np.float64)
        tp = np.diag(m)
        union = m.sum(axis=0) + m.sum(axis=1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def pixel_accuracy(self) -> float:
        """Fraction of counted pixels predicted right."""
        m = self._counted()
        return float(np.trace(m) / m.sum())

    def mean_iou(self) -> float:
        """Mean IoU over the classes labelled or predicted (background left out when ignored)."""
        iou = self.iou()
        if self.ignore_background and 0 <= self.background < len(iou):
            iou = np.delete(iou, self.background)
        present = iou[~np.isnan(iou)]
        if present.size == 0:
            raise DataError(f"{self.name}: no class besides the ignored ones was labelled or predicted")
        return float(present.mean())

    def result(self) -> Result:  # a dict here; the one-number subclasses return a float
        """Both figures: ``miou`` and ``pixel-acc``."""
        return {"miou": self.mean_iou(), "pixel-acc": self.pixel_accuracy()}


class MeanIoU(ConfusionMatrix):
    """Mean IoU over classes; ignores background pixels and class by default, as the paper does."""

    name = "miou"

    def __init__(
        self, ignore_index: Optional[int] = IGNORE_INDEX, ignore_background: bool = True, background: int = BACKGROUND
    ):
        super().__init__(ignore_index, ignore_background, background)

    def result(self) -> float:
        """The mean IoU (see :meth:`mean_iou`)."""
        return self.mean_iou()


class PixelAccuracy(ConfusionMatrix):
    """Fraction of labelled pixels predicted right; counts background pixels by default."""

    name = "pixel-acc"

    def result(self) -> float:
        """The pixel accuracy (see :meth:`pixel_accuracy`)."""
        return self.pixel_accuracy()


class CallableMetric:
    """Adapts ``f(outputs, labels) -> float`` into a :class:`Metric`: batch-size weighted mean of per-batch values."""

    # labels: Any, as a user's f may or may not accept the None given when the data has no labels
    def __init__(self, function: Callable[[np.ndarray, Any], float], name: Optional[str] = None):
        self.function = function
        self.name = name or getattr(function, "__name__", "metric")
        self.weighted = 0.0
        self.total = 0

    def update(self, outputs: np.ndarray, labels: Optional[np.ndarray]) -> None:
        """Add the function's value on this batch, weighted by the batch size."""
        count = len(outputs)
        self.weighted += float(self.function(outputs, labels)) * count
        self.total += count

    def result(self) -> float:
        """The batch-size weighted mean of the per-batch values."""
        if self.total == 0:
            raise DataError(f"{self.name}: no sample was evaluated")
        return self.weighted / self.total


_SEGMENTATION = {"miou": MeanIoU, "pixel-acc": PixelAccuracy}


def metric_names() -> List[str]:
    """The built-in metric names (``top<k>`` for any k; ``decoder:metric`` for any registered decoder)."""
    from .decoders import decoder_names

    return [
        "top1",
        "top5",
        *_SEGMENTATION,
        "map50",
        "mar50",
        *decoder_names(),
        *(f"{d}:<metric>" for d in decoder_names()),
    ]


def make_metric(
    spec: MetricLike, *, ignore_index: Optional[int] = IGNORE_INDEX, ignore_background: Optional[bool] = None
) -> Metric:
    """A fresh metric from a name, a :class:`Metric` (copied, so it starts empty) or a callable.

    Args:
        spec: ``"top1"``, ``"top5"``, ``"top<k>"``, ``"miou"``, ``"pixel-acc"``, a metric
            object or a plain ``f(outputs, labels) -> float``.
        ignore_index: segmentation label that is never counted (None: none).
        ignore_background: drop background pixels; None keeps each metric's default
            (mIoU ignores them, pixel accuracy counts them).

    Raises:
        NabnError: an unknown metric name.
    """
    if isinstance(spec, str):
        name = spec.strip().lower()
        match = re.fullmatch(r"top-?(\d+)", name)
        if match:
            return TopK(int(match.group(1)))
        detection = re.fullmatch(r"(map|mar)@?(\d+)", name)
        if detection:
            from .detection import MeanAP, MeanAR

            return (MeanAP if detection.group(1) == "map" else MeanAR)(iou=int(detection.group(2)) / 100)
        from .decoders import DECODERS

        decoder, colon, inner = name.partition(":")
        if decoder in DECODERS:
            return DecodedMetric(
                decoder, inner if colon else None, ignore_index=ignore_index, ignore_background=ignore_background
            )
        if name in _SEGMENTATION:
            cls = _SEGMENTATION[name]
            if ignore_background is None:
                return cls(ignore_index=ignore_index)
            return cls(ignore_index=ignore_index, ignore_background=ignore_background)
        raise NabnError(f"unknown metric {spec!r}; choose one of {', '.join(metric_names())} or pass a Metric object")
    if isinstance(spec, type):
        if issubclass(spec, Metric):
            return spec()
    elif isinstance(spec, Metric):
        return copy.deepcopy(spec)
    elif callable(spec):
        return CallableMetric(spec)
    raise NabnError(
        f"a metric must be a name, an object with update()/result() or a callable, got {type(spec).__name__}"
    )


def make_metrics(spec: Union[MetricLike, Sequence[MetricLike]], **options) -> Dict[str, Metric]:
    """Fresh metrics keyed by name, from one spec, a comma-separated string or a list."""
    if isinstance(spec, str):
        specs: Sequence[MetricLike] = [s for s in spec.split(",") if s.strip()]
    elif isinstance(spec, Sequence):  # lists and tuples of specs
        specs = list(spec)
    else:
        specs = [spec]
    if not specs:
        raise NabnError("no metric given")
    metrics: Dict[str, Metric] = {}
    for item in specs:
        metric = make_metric(item, **options)
        name = getattr(metric, "name", type(metric).__name__)
        metrics[name if name not in metrics else f"{name}_{len(metrics)}"] = metric
    return metrics


class DecodedMetric:
    """A metric fed with decoded outputs: ``metric.update(decoder(outputs), labels)``.

    Args:
        decoder: a :class:`~nabn_onnx.evaluation.decoders.Decoder` or a registered name.
        metric: the metric reading the decoded predictions: a name or a metric object
            (None: the decoder's ``default_metric``).
        **options: passed to :func:`make_metric` for a named metric.
    """

    def __init__(self, decoder: Union[str, Decoder], metric=None, **options):
        from .decoders import make_decoder

        self.decoder = make_decoder(decoder)
        defaults = getattr(self.decoder, "metric_options", {})
        options = {k: (defaults[k] if v is None and k in defaults else v) for k, v in options.items()}
        self.metric = make_metric(metric if metric is not None else self.decoder.default_metric, **options)
        self.all_outputs = bool(getattr(self.decoder, "all_outputs", False))
        self.name = (
            f"{getattr(self.decoder, 'name', type(self.decoder).__name__)}:"
            f"{getattr(self.metric, 'name', type(self.metric).__name__)}"
        )

    def update(self, outputs: Any, labels: Optional[np.ndarray]) -> None:
        """Decode one batch of outputs and feed the metric."""
        self.metric.update(self.decoder(outputs), labels)

    def result(self):
        """The metric over every batch seen so far."""
        return self.metric.result()
