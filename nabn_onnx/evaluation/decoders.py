"""Output decoders: model-specific glue between raw model outputs and a task metric.

A detector does not output boxes, and a text detector does not output class logits: its
raw outputs must be *decoded* first (score maps and box distributions to boxes, a
probability map to a mask). A decoder is that step, as a small plug-in:

* an object with ``__call__(outputs)`` returning what its metric reads, a ``name``, a
  ``default_metric`` (the metric used when only the decoder is named) and ``all_outputs``:
  True when it needs every model output (a list in the model's output order), False when
  it reads only the selected one (an array);
* registered by name in :data:`DECODERS` (:func:`register_decoder`) so that the CLI and
  :func:`~nabn_onnx.evaluation.metrics.make_metric` find it.

A metric spec ``"<decoder>:<metric>"`` (``"picodet:map50"``, ``"dbnet:miou"``) or a bare
decoder name (its default metric) builds a
:class:`~nabn_onnx.evaluation.metrics.DecodedMetric`; Python callers may also pass
``DecodedMetric(MyDecoder(), "map50")`` directly. :class:`~nabn_onnx.evaluation.Evaluator`
runs every output of the model when a metric asks for it (``all_outputs``).

Built-in decoders:

* ``"picodet"`` (:class:`PicoDetDecoder`): PaddleDetection's PicoDet head as exported by
  PaddleOCR/RapidLayout: per stride ``s`` in (8, 16, 32, 64) a score tensor ``(N, A_s, C)``
  (sigmoid class scores) and a box tensor ``(N, A_s, 4 (R+1))`` (a discrete distribution
  over distances ``0..R`` for each side; the distance is its expectation times ``s``,
  measured from the anchor-point center ``((j + 0.5) s, (i + 0.5) s)``). Boxes whose
  class score exceeds ``score_threshold`` go through per-class NMS at ``nms_iou``. The
  output is one ``(K, 6)`` array ``(x1, y1, x2, y2, score, class)`` per image, in input
  pixels, for the detection metrics (``map50``, ``mar50``).
* ``"dbnet"`` (:class:`DBNetDecoder`): DBNet's text probability map ``(N, 1, H, W)``
  thresholded at ``threshold`` (0.3, PaddleOCR's ``det_db_thresh``) into two-class scores
  ``(N, 2, H, W)`` whose argmax is the text mask, for ``miou`` (mean of the background
  and text IoU: background pixels count, unlike the VOC default) and ``pixel-acc``.
"""

from __future__ import annotations

import logging
from typing import Callable, ClassVar, Dict, List, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np

from ..errors import DataError, NabnError

__all__ = [
    "Decoder",
    "PicoDetDecoder",
    "DBNetDecoder",
    "DECODERS",
    "register_decoder",
    "make_decoder",
    "decoder_names",
]

logger = logging.getLogger(__name__)

Outputs = Union[np.ndarray, List[np.ndarray]]


@runtime_checkable
class Decoder(Protocol):
    """What a decoder must offer (see the module docstring)."""

    name: str
    default_metric: str
    all_outputs: bool

    def __call__(self, outputs: Outputs):
        """The decoded predictions of one batch."""


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    z = np.exp(x - x.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, limit: Optional[int] = None) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep: List[int] = []
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    while order.size and (limit is None or len(keep) < limit):
        best, rest = order[0], order[1:]
        keep.append(int(best))
        w = np.clip(np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1]), 0, None)
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):
            overlap = inter / (areas[best] + areas[rest] - inter)
        order = rest[~(overlap > iou)]
    return np.asarray(keep, dtype=np.int64)


class PicoDetDecoder:
    """PicoDet raw head outputs to per-image boxes (see the module docstring).

    Args:
        strides: anchor strides of the score/box output pairs, in output order.
        input_size: (height, width) of the model input; anchor centers depend on it
            (RapidLayout's PicoDet models take 800x608). None infers it from the anchor
            counts, which cannot tell a tall input from the same input turned by 90 degrees.
        score_threshold: keep candidates whose class score exceeds this (RapidLayout: 0.5;
            lower values give the recall side of mAP more points).
        nms_iou: per-class NMS IoU threshold.
        top_k: candidates per stride kept before NMS.
        max_detections: detections per image after NMS.
    """

    name = "picodet"
    default_metric = "map50"
    all_outputs = True

    def __init__(
        self,
        strides: Sequence[int] = (8, 16, 32, 64),
        input_size: Optional[Sequence[int]] = (800, 608),
        score_threshold: float = 0.3,
        nms_iou: float = 0.5,
        top_k: int = 1000,
        max_detections: int = 100,
    ):
        self.strides = tuple(strides)
        self.input_size = tuple(input_size) if input_size is not None else None
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.top_k = top_k
        self.max_detections = max_detections

    def __call__(self, outputs: Outputs) -> List[np.ndarray]:
        """Decode the model's raw outputs into one detection array per image."""
        if isinstance(outputs, np.ndarray) or len(outputs) != 2 * len(self.strides):
            count = 1 if isinstance(outputs, np.ndarray) else len(outputs)
            raise DataError(
                f"picodet decoder needs {2 * len(self.strides)} outputs (scores and boxes per stride "
                f"{self.strides}), the model gave {count}"
            )
        scores, dists = outputs[: len(self.strides)], outputs[len(self.strides) :]
        batch = scores[0].shape[0]
        return [self._image(i, scores, dists) for i in range(batch)]

    def _image(self, i: int, scores: Sequence[np.ndarray], dists: Sequence[np.ndarray]) -> np.ndarray:
        counts = [s.shape[1] for s in scores]
        if self.input_size is None:
            width, height = _grid_size(counts, self.strides)
        else:
            height, width = self.input_size
        all_boxes, all_scores = [], []
        for stride, score, dist in zip(self.strides, scores, dists):
            score, dist = score[i], dist[i]
            rows, cols = -(-height // stride), -(-width // stride)
            if rows * cols != len(score):
                raise DataError(
                    f"picodet decoder: {len(score)} anchors at stride {stride} do not fit a "
                    f"{height}x{width} input (set PicoDetDecoder(input_size=...))"
                )
            bins = dist.shape[-1] // 4
            distance = (_softmax(dist.reshape(-1, 4, bins).astype(np.float64), axis=2) @ np.arange(bins)) * stride
            cy, cx = np.divmod(np.arange(rows * cols), cols)
            centers = np.stack([(cx + 0.5) * stride, (cy + 0.5) * stride] * 2, axis=1)
            best = np.argsort(-score.max(axis=1), kind="stable")[: self.top_k]
            all_boxes.append(centers[best] + np.array([-1, -1, 1, 1]) * distance[best])
            all_scores.append(score[best])
        boxes, score = np.concatenate(all_boxes), np.concatenate(all_scores).astype(np.float64)
        found = []
        for cls in range(score.shape[1]):
            mask = score[:, cls] > self.score_threshold
            if not mask.any():
                continue
            b, s = boxes[mask], score[mask, cls]
            keep = nms(b, s, self.nms_iou, self.max_detections)
            found.append(np.column_stack([b[keep], s[keep], np.full(len(keep), cls)]))
        if not found:
            return np.zeros((0, 6))
        out = np.concatenate(found)
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
        return out[np.argsort(-out[:, 4], kind="stable")[: self.max_detections]]


def _grid_size(counts: Sequence[int], strides: Sequence[int]):
    """(width, height) of the input whose anchor counts per stride are ``counts``."""
    for height in range(strides[0], 8193, strides[0]):
        rows = height // strides[0]
        if counts[0] % rows:
            continue
        width = counts[0] // rows * strides[0]
        if all((-(-height // s)) * (-(-width // s)) == c for s, c in zip(strides, counts)):
            return width, height
    raise DataError(f"picodet decoder: anchor counts {list(counts)} fit no input size for strides {list(strides)}")


class DBNetDecoder:
    """DBNet's probability map to two-class scores whose argmax is the binary text mask.

    Args:
        threshold: a pixel is text when its probability exceeds this (PaddleOCR: 0.3).
    """

    name = "dbnet"
    default_metric = "miou"
    all_outputs = False
    #: Text is one class out of two: mIoU averages background and text IoU (ignoring
    #: background pixels, the VOC convention, would leave text IoU blind to false alarms).
    metric_options: ClassVar[Dict[str, object]] = {"ignore_background": False}

    def __init__(self, threshold: float = 0.3):
        self.threshold = threshold

    def __call__(self, outputs: Outputs) -> np.ndarray:
        """Threshold the text probability map into a 0/1 mask per pixel."""
        prob = np.asarray(outputs if isinstance(outputs, np.ndarray) else outputs[0])
        if prob.ndim == 3:
            prob = prob[:, None]
        if prob.ndim != 4 or prob.shape[1] != 1:
            raise DataError(f"dbnet decoder needs a probability map (N, 1, H, W), got {prob.shape}")
        return np.concatenate([np.full_like(prob, self.threshold), prob], axis=1)


#: Built-in decoders by name: factories taking no argument.
DECODERS: Dict[str, Callable[[], Decoder]] = {"picodet": PicoDetDecoder, "dbnet": DBNetDecoder}


def register_decoder(name: str, factory: Callable[[], Decoder]) -> None:
    """Make ``factory()`` available as decoder ``name`` (in metric specs ``name:metric`` and the CLI)."""
    DECODERS[name.strip().lower()] = factory


def decoder_names() -> List[str]:
    """The names of the registered decoders."""
    return sorted(DECODERS)


def make_decoder(spec: Union[str, Decoder]) -> Decoder:
    """A decoder from a registered name or an object (returned as is)."""
    if isinstance(spec, str):
        try:
            return DECODERS[spec.strip().lower()]()
        except KeyError:
            raise NabnError(f"unknown decoder {spec!r}; registered: {', '.join(decoder_names())}") from None
    if not callable(spec):
        raise NabnError(f"a decoder must be a name or a callable object, got {type(spec).__name__}")
    return spec
