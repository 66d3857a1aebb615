"""Choosing a calibration without labels: how far a candidate's outputs are from the clean model's.

For every held-out calibration batch the clean model and each candidate (the noisy model
with one set of calibrated statistics) are run on the same inputs; a candidate's score is
the mean divergence of its outputs from the clean outputs:

* a rank-2 float output (a classifier) is compared as class distributions:
  ``KL(p_clean || p_candidate)`` per sample, with ``p = softmax(output)`` unless the rows
  already are probabilities (non-negative, summing to 1);
* any other float output by its normalized squared error,
  ``sum((y - y_clean)^2) / sum((y_clean - mean(y_clean))^2)``.

Scores of several outputs add up. The lowest score wins; ties go to the earlier candidate.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from onnx import ModelProto

from ..data import DataLike, input_specs, iter_batches
from ..runtime import SERVE, make_session

__all__ = ["OutputDivergence", "choose_candidate"]


def _as_distribution(y: np.ndarray) -> np.ndarray:
    y = y.astype(np.float64)
    if np.all(y >= 0) and np.allclose(y.sum(axis=1), 1.0, atol=1e-3):
        return np.clip(y, 1e-12, None)
    z = np.exp(y - y.max(axis=1, keepdims=True))
    return np.clip(z / z.sum(axis=1, keepdims=True), 1e-12, None)


class OutputDivergence:
    """Streams the divergence of one candidate's outputs from the clean outputs."""

    def __init__(self):
        self.kl_sum = 0.0
        self.kl_count = 0
        self.err = 0.0
        self.spread = 0.0

    def update(self, clean: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> None:
        for c, y in zip(clean, candidate):
            if c.dtype.kind != "f":
                continue
            if c.ndim == 2:
                p, q = _as_distribution(c), _as_distribution(y)
                self.kl_sum += float(np.sum(p * (np.log(p) - np.log(q))))
                self.kl_count += c.shape[0]
            else:
                c64 = c.astype(np.float64)
                self.err += float(np.sum((y.astype(np.float64) - c64) ** 2))
                self.spread += float(np.sum((c64 - c64.mean()) ** 2))

    def result(self) -> float:
        score = self.kl_sum / self.kl_count if self.kl_count else 0.0
        if self.spread > 0:
            score += self.err / self.spread
        return score


def choose_candidate(
    clean: ModelProto,
    candidates: Dict[str, ModelProto],
    data: DataLike,
    *,
    batch_indices: Optional[set],
    batch_size: int,
    max_batches: Optional[int],
    providers: Optional[Sequence[str]] = None,
    progress=None,
) -> Tuple[str, Dict[str, float]]:
    """Score each candidate against the clean model on the chosen batches; return the best and all scores.

    Args:
        clean: the clean model (reference outputs).
        candidates: name -> calibrated noisy model, in order of preference on ties.
        data: calibration data.
        batch_indices: 0-based indices of the batches to score on (None: all).
        batch_size: samples per batch for file and dict data.
        max_batches: the same limit calibration used.
        providers: onnxruntime execution providers.
        progress: optional progress bar, advanced once per batch read.
    """
    clean_session = make_session(clean, optimization=SERVE, providers=providers)
    sessions = {name: make_session(model, optimization=SERVE, providers=providers) for name, model in candidates.items()}
    meters = {name: OutputDivergence() for name in candidates}
    for index, batch in enumerate(iter_batches(data, input_specs(clean), batch_size=batch_size,
                                               max_batches=max_batches, min_batch=2)):
        if progress is not None:
            progress.update()
        if batch_indices is not None and index not in batch_indices:
            continue
        reference: List[np.ndarray] = clean_session.run(None, batch.feeds)
        for name, session in sessions.items():
            meters[name].update(reference, session.run(None, batch.feeds))
    scores = {name: meter.result() for name, meter in meters.items()}
    best = min(scores, key=lambda name: (scores[name], list(candidates).index(name)))
    return best, scores
