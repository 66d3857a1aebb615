"""The hold-out policy: which calibration samples ``auto`` (and the chip guard) score on.

With :data:`HOLDOUT_EVERY` or more batches known to come, every 4th batch is held out
whole (free: it runs whole anyway); with fewer, or when the number of batches cannot be
known in advance (a reader), the last quarter of every batch, which costs a second run of
each batch's fit part but leaves a score even with one batch. A batch too small to split
(under 4 samples) only fits.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

from ..data import Batch, DataLike, count_samples

__all__ = ["HOLDOUT_EVERY", "holdout_split", "is_holdout", "holdout_mode", "held_out", "count_batches", "Selector"]

#: ``auto`` holds out the last 1/k of every calibration batch to score the candidates on.
HOLDOUT_EVERY = 4

#: ``(batch index, batch) ->`` the part of the batch to score on, or None to skip it.
Selector = Callable[[int, Batch], Optional[Batch]]


def holdout_split(batch: Batch, every: int = HOLDOUT_EVERY) -> Tuple[Batch, Optional[Batch]]:
    """``(fit part, held-out part)`` of a batch: the last ``size // every`` samples are held out.

    Both parts keep at least 2 samples (a variance needs two); a smaller batch is all fit.
    """
    held = batch.size // every
    if held < 2 or batch.size - held < 2:
        return batch, None
    cut = batch.size - held

    def part(lo: int, hi: Optional[int]) -> Batch:
        labels = None if batch.labels is None else batch.labels[lo:hi]
        return Batch({k: v[lo:hi] for k, v in batch.feeds.items()}, labels)

    return part(0, cut), part(cut, None)


def is_holdout(batch_index: int, every: int = HOLDOUT_EVERY) -> bool:
    """Whether batch ``batch_index`` (0-based) is held out whole: every ``every``-th batch."""
    return batch_index % every == every - 1


def holdout_mode(batches: Optional[int]) -> str:
    """``"batches"`` when at least :data:`HOLDOUT_EVERY` batches are known to come, else ``"samples"``."""
    return "batches" if batches is not None and batches >= HOLDOUT_EVERY else "samples"


def held_out(mode: str) -> Selector:
    """The scoring selector for a hold-out mode: ``(index, batch) -> held-out part or None``."""
    if mode == "batches":
        return lambda index, batch: batch if is_holdout(index) else None
    return lambda index, batch: holdout_split(batch)[1]


def count_batches(data: DataLike, batch_size: int, max_batches: Optional[int]) -> Optional[int]:
    """Number of batches when it can be known without reading the data; None otherwise."""
    if batch_size < 1:  # iter_batches reports it
        return None
    samples = count_samples(data)
    total = None if samples is None else -(-samples // batch_size)
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    return total
