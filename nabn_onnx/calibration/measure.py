"""Streaming BatchNorm-input statistics over calibration data: one pass of a model over the data.

:func:`measure` runs a statistics graph (:class:`~.statsgraph.ExposeBatchNormStatsPass`)
batch by batch and reduces per-channel means and variances with the estimator (never
holding whole activations), optionally also without the held-out samples
(:mod:`.holdout`). :func:`fill_inserted_stats` measures the clean statistics of inserted
BatchNorms and writes them in.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from onnx import ModelProto

from ..data import Batch, DataLike, input_specs, iter_batches
from ..errors import NabnError
from ..logs import warn_once
from ..model import batchnorm_nodes, infer_shapes_light, without_large_initializers
from ..passes.write_stats import WriteBatchNormStatsPass, bn_epsilon
from ..progress import Progress
from ..runtime import MEASURE, chunks, make_session, plan_batch
from .batchnorms import Stats, identity_values
from .config import Reading
from .holdout import holdout_split, is_holdout
from .statsgraph import ExposeBatchNormStatsPass

__all__ = ["Measured", "measure", "collect_stats", "fill_inserted_stats"]

logger = logging.getLogger(__name__)


@dataclass
class Measured:
    """Statistics from one pass over the data.

    Attributes:
        stats: ``{bn name: (mean, var)}`` over all samples.
        fit: the same without the held-out samples (``holdout``), else None.
        batches: batches seen.
        samples: samples seen.
        held: samples held out.
        constant: no input varied across samples (the data cannot carry statistics).
    """

    stats: Stats
    fit: Optional[Stats]
    batches: int
    samples: int
    held: int = 0
    constant: bool = False


def measure(
    model: ModelProto,
    data: DataLike,
    reading: Optional[Reading] = None,
    *,
    train: Iterable[str] = (),
    tap: Iterable[str] = (),
    progress: Optional[Progress] = None,
    holdout: Optional[str] = None,
) -> Measured:
    """Stream ``data`` through ``model`` and estimate per-channel statistics of BatchNorm inputs.

    ``train`` BatchNorms run in training mode (normalize with batch statistics), ``tap``
    BatchNorms stay in eval mode; both are measured. ``model`` is not modified. With
    ``holdout`` a second estimate leaves out the held-out samples: ``"batches"`` every
    :data:`~.holdout.HOLDOUT_EVERY`-th batch, ``"samples"`` the last quarter of every batch
    (each batch then also runs its fit part alone, see :func:`~.holdout.holdout_split`). The
    estimate over all samples always comes from whole batches. ``reading`` holds the
    estimator, batching and providers (defaults if None). A model whose batch is fixed and
    cannot be freed (``reading.plan``, planned here when None) runs in chunks of its fixed
    batch, each chunk one batch of Algorithm 1. A pass that only taps (no ``train``) runs each
    batch in pieces of :data:`TAP_PIECE` samples and pools their statistics into the batch's
    (eval mode: the same statistics up to float rounding, at a quarter of the memory).
    """
    reading = reading if reading is not None else Reading()
    estimator, batch_size, max_batches, providers = (
        reading.estimator,
        reading.batch_size,
        reading.max_batches,
        reading.providers,
    )
    plan = reading.plan if reading.plan is not None else plan_batch(model, providers)
    # before the first batch is read: a batch too large is one line, not a MemoryError minutes in
    plan.check_memory(data, batch_size)
    train, tap = list(train), list(tap)
    if train and plan.chunk == 1:
        raise NabnError(
            f"the model fixes its batch to 1 and {plan.reason}: Algorithm 1 normalizes with the statistics of a "
            "batch of several samples, which this graph cannot run; export it with a dynamic batch axis "
            "(PyTorch: torch.onnx.export(..., dynamic_axes={'input': {0: 'N'}}))"
        )
    per_sample = _elements_per_sample(model, train + tap)
    # the statistics graph rewrites nodes and BatchNorm parameters only: the weights stay in `model`
    stats_model, weights = without_large_initializers(model)
    expose = ExposeBatchNormStatsPass(train=train, tap=tap, keep_outputs=False, shapes=per_sample is None)
    outputs = expose(stats_model).details["outputs"]
    session = make_session(
        stats_model, optimization=MEASURE, providers=providers, extra_initializers=weights, batch=plan
    )
    del stats_model, weights
    fetch: List[str] = []
    for stat in outputs.values():
        fetch += [stat.mean, stat.var] + ([stat.shape] if per_sample is None else [])
    everything = {name: estimator.new() for name in outputs}
    fit = {name: estimator.new() for name in outputs} if holdout else None
    batches = samples = held_samples = 0
    varied = False
    min_batch = 2 if plan.chunk is None else max(2, plan.chunk)
    for batch in iter_batches(
        data,
        input_specs(model),
        batch_size=max(batch_size, plan.chunk or 1),
        max_batches=max_batches,
        min_batch=min_batch,
    ):
        varied = varied or _varies(batch)
        # (part, counts for all samples, counts for the fit estimate)
        parts = [(batch, True, holdout is not None)]
        if holdout == "batches" and is_holdout(batches):
            parts = [(batch, True, False)]
            held_samples += batch.size
        elif holdout == "samples":
            fit_part, held_part = holdout_split(batch)
            if held_part is not None:
                parts = [(batch, True, False), (fit_part, False, True)]
                held_samples += held_part.size
        for part, for_all, for_fit in parts:
            runs = [(part.feeds, part.size)] if plan.chunk is None else list(chunks(part.feeds, plan.chunk, pad=False))
            if plan.chunk is not None and sum(n for _, n in runs) < part.size:
                warn_once(
                    logger,
                    "the model fixes its batch to %d: samples beyond a multiple of %d per batch are "
                    "not used for statistics",
                    plan.chunk,
                    plan.chunk,
                )
            for feeds, size in runs:
                # eval-mode taps only: the batch runs in pieces and their statistics are pooled back
                # into the batch's own (the same numbers up to float rounding, a quarter of the memory)
                pieces = [(feeds, size)] if train or size <= TAP_PIECE else list(chunks(feeds, TAP_PIECE, pad=None))
                measured: Dict[str, List[Tuple[np.ndarray, np.ndarray, int]]] = {name: [] for name in outputs}
                for piece, piece_size in pieces:
                    values = dict(zip(fetch, session.run(fetch, piece)))
                    for name, stat in outputs.items():
                        if per_sample is None:
                            shape = values[stat.shape]
                            count = int(np.prod(shape, dtype=np.int64) // shape[1])
                        else:
                            count = per_sample[name] * piece_size
                        measured[name].append((values[stat.mean], values[stat.var], count))
                for name in outputs:
                    mean, var, count = _pooled(measured[name])
                    if for_all:
                        everything[name].update(mean, var, count)
                    if fit is not None and for_fit:
                        fit[name].update(mean, var, count)
        batches += 1
        samples += batch.size
        if progress is not None:
            progress.update()
    for name, acc in everything.items():
        mean, var = acc.result()
        if not (np.isfinite(mean).all() and np.isfinite(var).all()):
            raise NabnError(
                f"the statistics measured at BatchNorm '{name}' are not finite (the activations overflow or are "
                "NaN on this data); check the data's scale and the model's outputs on it"
            )
    fit_stats = None
    if fit is not None and held_samples and all(acc.batches for acc in fit.values()):
        fit_stats = {name: acc.result() for name, acc in fit.items()}
    return Measured(
        {name: acc.result() for name, acc in everything.items()},
        fit_stats,
        batches,
        samples,
        held_samples if fit_stats is not None else 0,
        not varied,
    )


#: Samples per run of a pass that only taps eval-mode BatchNorms (statistics of the network as it
#: runs, which do not depend on how samples are grouped): MobileNet-v2's tap graph, one thread,
#: 1.88x inference in pieces of 16 against 2.20x in batches of 64, at a quarter of the memory
#: (``python -m tools.bench.bench_stats_graph MODEL DATA --batch-size 16``). Training-mode passes
#: run whole batches: Algorithm 1 normalizes each with its own statistics.
TAP_PIECE = 16


def _pooled(parts: List[Tuple[np.ndarray, np.ndarray, int]]) -> Tuple[np.ndarray, np.ndarray, int]:
    """One batch's per-channel mean, biased variance and count from its pieces' (in float64)."""
    if len(parts) == 1:
        return parts[0]
    counts = np.array([c for _, _, c in parts], dtype=np.float64)
    total = counts.sum()
    means = np.stack([np.asarray(m, dtype=np.float64).reshape(-1) for m, _, _ in parts])
    variances = np.stack([np.asarray(v, dtype=np.float64).reshape(-1) for _, v, _ in parts])
    weights = (counts / total)[:, None]
    mean = (weights * means).sum(axis=0)
    var = (weights * (variances + (means - mean) ** 2)).sum(axis=0)
    return mean, var, int(total)


def _varies(batch: Batch) -> bool:
    """Whether any float input differs between the samples of the batch."""
    for value in batch.feeds.values():
        if value.dtype.kind == "f" and value.shape[0] > 1 and np.any(value != value[:1]):
            return True
    return False


def collect_stats(
    model: ModelProto, data: DataLike, reading: Optional[Reading] = None, **kwargs
) -> Tuple[Stats, int, int]:
    """``(stats, batches, samples)`` of :func:`measure` (keywords ``train``, ``tap``, ``progress``)."""
    measured = measure(model, data, reading, **kwargs)
    return measured.stats, measured.batches, measured.samples


def _elements_per_sample(model: ModelProto, bn_names: Sequence[str]) -> Optional[Dict[str, int]]:
    """Elements per channel per sample at each BatchNorm input, when shape inference knows them all."""
    shapes = infer_shapes_light(model, batch_size=1)
    inputs = {n.name: n.input[0] for n in batchnorm_nodes(model)}
    out = {}
    for name in bn_names:
        shape = shapes.get(inputs[name])
        inner = [d for d in shape[2:] if d is not None] if shape is not None else []
        if shape is None or len(shape) < 2 or len(inner) < len(shape) - 2 or shape[0] != 1:
            return None
        out[name] = int(np.prod(inner, dtype=np.int64))
    return out


def fill_inserted_stats(
    model: ModelProto,
    clean: ModelProto,
    names: Sequence[str],
    data: DataLike,
    reading: Optional[Reading] = None,
    *,
    progress: Optional[Progress] = None,
    known: Optional[Stats] = None,
) -> Stats:
    """Measure the clean statistics of inserted BatchNorms and write them into ``model``.

    The BatchNorms ``names`` of ``clean`` are tapped in eval mode (the clean network runs as
    written); each gets ``mean = mu, var = s2, scale = sqrt(s2 + eps), B = mu``, the identity
    on data with those statistics, in ``model`` (and in ``clean`` when it is another model).
    ``progress`` advances once per batch. (Formerly ``engine.measure_inserted``: renamed so that
    it no longer shares its name with the step ``Calibrator.measure_inserted`` that calls it.)
    ``known``: statistics this function measured before on the same clean model and data
    (a sweep's earlier chip): written without reading the data.

    Returns:
        The statistics measured, ``{bn name: (mean, var)}``.
    """
    if known is not None:
        stats = {name: known[name] for name in names}
    else:
        reading = reading if reading is not None else Reading()
        if reading.plan is None:
            reading = dataclasses.replace(reading, plan=plan_batch(clean, reading.providers))
        stats, _, _ = collect_stats(clean, data, reading, tap=names, progress=progress)
    eps_of = {n.name: bn_epsilon(n) for n in batchnorm_nodes(model)}
    values = identity_values(stats, eps_of)
    WriteBatchNormStatsPass(values)(model)
    if clean is not model:
        WriteBatchNormStatsPass(values)(clean)
    return stats
