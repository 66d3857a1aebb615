"""Streaming detection metrics: mean average precision and mean average recall at one IoU.

Predictions are one ``(K, 6)`` array per image, rows ``(x1, y1, x2, y2, score, class)``
(what :class:`~nabn_onnx.evaluation.decoders.PicoDetDecoder` returns). Ground truth is a
batch array ``(N, M, 5)``, rows ``(class, x1, y1, x2, y2)``, padded with rows of class
``-1`` (the ``labels`` array of an ``.npz``; images have different box counts).

Matching follows PASCAL VOC / COCO at a single IoU threshold: per image and class, the
detections are taken by decreasing score and each one matches the not yet matched ground
truth box of that class with which it has the largest IoU, if that IoU is at least
``iou`` (0.5); a match is a true positive, anything else a false positive.

* **AP** of a class: the area under its precision-recall curve with precision made
  monotone (all-point interpolation, VOC 2010 onwards); **mAP** is the mean over the
  classes that have ground truth.
* **AR** of a class: the fraction of its ground truth boxes matched (at most
  ``max_detections`` detections per image, as COCO's AR@100); **mAR** is the mean over the
  classes that have ground truth.

Only scores, match flags and counts are kept between batches, never the images.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from ..errors import DataError

__all__ = ["box_iou", "match_image", "average_precision", "DetectionMetrics", "MeanAP", "MeanAR"]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (P, 4) with every box of ``b`` (G, 4), corners ``x1, y1, x2, y2``."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def match_image(boxes: np.ndarray, scores: np.ndarray, truth: np.ndarray, iou: float) -> np.ndarray:
    """True-positive flags of one image's detections of one class (in the given order), greedy by score."""
    order = np.argsort(-scores, kind="stable")
    hits = np.zeros(len(boxes), dtype=bool)
    if not len(truth) or not len(boxes):
        return hits
    overlaps = box_iou(boxes, truth)
    taken = np.zeros(len(truth), dtype=bool)
    for d in order:
        candidates = np.where(taken, -1.0, overlaps[d])
        g = int(candidates.argmax())
        if candidates[g] >= iou:
            taken[g] = True
            hits[d] = True
    return hits


def average_precision(scores: np.ndarray, hits: np.ndarray, truth_count: int) -> float:
    """All-point interpolated AP from detection scores, their match flags and the ground-truth count."""
    if truth_count == 0:
        raise ValueError("AP needs at least one ground-truth box")
    order = np.argsort(-np.asarray(scores), kind="stable")
    tp = np.cumsum(np.asarray(hits)[order])
    fp = np.cumsum(~np.asarray(hits)[order])
    recall = np.concatenate([[0.0], tp / truth_count])
    precision = np.concatenate([[1.0], tp / np.maximum(tp + fp, 1)])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum((recall[1:] - recall[:-1]) * precision[1:]))


class DetectionMetrics:
    """Streams detections and ground truth; :meth:`result` gives ``{"map50": ..., "mar50": ...}``.

    Args:
        iou: IoU a detection needs to match a ground-truth box.
        max_detections: detections per image considered (highest scores first).
    """

    name = "detection"

    def __init__(self, iou: float = 0.5, max_detections: int = 100):
        self.iou = iou
        self.max_detections = max_detections
        self.scores: Dict[int, List[np.ndarray]] = defaultdict(list)
        self.hits: Dict[int, List[np.ndarray]] = defaultdict(list)
        self.truth: Dict[int, int] = defaultdict(int)
        self.images = 0

    @property
    def _suffix(self) -> str:
        return f"{round(100 * self.iou)}"

    def update(self, outputs: Sequence[np.ndarray], labels: Optional[np.ndarray]) -> None:
        """Add one batch: decoded detections per image and padded ground-truth rows."""
        if labels is None:
            raise DataError(f"{self.name} needs labels: boxes (N, M, 5) rows (class, x1, y1, x2, y2)")
        labels = np.asarray(labels)
        if labels.ndim != 3 or labels.shape[2] != 5 or len(labels) != len(outputs):
            raise DataError(
                f"{self.name} needs one (K, 6) detection array per image and labels (N, M, 5); got "
                f"{len(outputs)} detection arrays and labels {labels.shape}"
            )
        for detections, truth in zip(outputs, labels):
            detections = np.asarray(detections, dtype=np.float64).reshape(-1, 6)
            detections = detections[np.argsort(-detections[:, 4], kind="stable")[: self.max_detections]]
            truth = truth[truth[:, 0] >= 0]
            for cls in set(truth[:, 0].astype(int)) | set(detections[:, 5].astype(int)):
                mine = detections[detections[:, 5].astype(int) == cls]
                theirs = truth[truth[:, 0].astype(int) == cls, 1:]
                self.truth[cls] += len(theirs)
                self.scores[cls].append(mine[:, 4])
                self.hits[cls].append(match_image(mine[:, :4], mine[:, 4], theirs, self.iou))
            self.images += 1

    def per_class(self) -> Dict[int, Dict[str, float]]:
        """AP and AR of every class with ground truth."""
        if self.images == 0:
            raise DataError(f"{self.name}: no image was evaluated")
        out = {}
        for cls, count in sorted(self.truth.items()):
            if count == 0:
                continue
            scores = np.concatenate(self.scores[cls]) if self.scores[cls] else np.zeros(0)
            hits = np.concatenate(self.hits[cls]) if self.hits[cls] else np.zeros(0, dtype=bool)
            out[cls] = {"ap": average_precision(scores, hits, count), "ar": float(hits.sum()) / count, "truth": count}
        if not out:
            raise DataError(f"{self.name}: the labels hold no ground-truth box")
        return out

    def result(self) -> Union[float, Dict[str, float]]:
        """Mean AP and AR at the IoU threshold, over every batch seen so far."""
        classes = self.per_class().values()
        return {
            f"map{self._suffix}": float(np.mean([c["ap"] for c in classes])),
            f"mar{self._suffix}": float(np.mean([c["ar"] for c in classes])),
        }


class MeanAP(DetectionMetrics):
    """Mean average precision at IoU ``iou`` (0.5: ``map50``)."""

    def __init__(self, iou: float = 0.5, max_detections: int = 100):
        super().__init__(iou, max_detections)
        self.name = f"map{self._suffix}"

    def result(self) -> float:
        """Mean average precision at the IoU threshold."""
        both = super().result()
        assert isinstance(both, dict)  # the base class always gives both numbers
        return both[self.name]


class MeanAR(DetectionMetrics):
    """Mean average recall at IoU ``iou`` (0.5: ``mar50``)."""

    def __init__(self, iou: float = 0.5, max_detections: int = 100):
        super().__init__(iou, max_detections)
        self.name = f"mar{self._suffix}"

    def result(self) -> float:
        """Mean average recall at the IoU threshold."""
        both = super().result()
        assert isinstance(both, dict)  # the base class always gives both numbers
        return both[self.name]
