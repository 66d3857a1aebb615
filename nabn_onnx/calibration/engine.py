"""Calibration: re-estimate BatchNorm statistics of a (noisy) model on calibration data.

``calibrate`` runs the whole job as a short sequence of named steps (see :func:`calibrate`):
decide what the given model is and what can be recalibrated, split fused BatchNorms back
out where a clean model is known, measure the clean reference statistics, put one chip's
noise on the weights, measure the noisy statistics with the paper's train-mode semantics,
choose, write back.

**What the given model is.** With ``noise`` the model is clean and the chip is simulated
on it. With ``reference`` the model is the chip and ``reference`` the clean model. With
neither, **the model is the chip** (weights read back from a device, or written by another
simulator) and no clean model is known: then only BatchNorms that hold statistics of the
clean network (a kept BatchNorm's trained statistics, or one inserted by ``split --data`` on
the clean model) are recalibrated, with Algorithm 1; analog layers without such a
BatchNorm are left alone and the report says why (their clean statistics are unknown, so
a BatchNorm inserted now would map the chip's outputs back onto the chip's own broken
distribution).

Methods:
* ``"paper"`` (Algorithm 1): every BatchNorm normalizes each batch with the batch's own
  statistics while the batches stream through (so each layer is measured under the
  recalibrated layers before it) and its running statistics are replaced by the estimate.
* ``"delta"``: keep each BatchNorm's reference statistics and apply only the change the
  noise causes, measured the same way on the clean and the noisy model. Needs the clean
  model. The noise is modelled per channel as the affine map that takes the clean
  activations' distribution (mean ``mu_c``, variance ``v_c``) to the noisy one
  (``mu_n``, ``v_n``)::

      x_noisy = mu_n + a * (x_clean - mu_c),      a = sqrt(v_n / v_c)

  The BatchNorm's stored statistics (``mean``, ``var``) describe the distribution it was
  trained for, which need not be the calibration data's (data unlike the training data is
  the case ``delta`` exists for). Pushing that distribution through the same map gives::

      mean' = mu_n + a * (mean - mu_c)  =  mean + (mu_n - mu_c) + (a - 1) * (mean - mu_c)
      var'  = a^2 * var                 =  var * v_n / v_c

  (the second form of ``mean'`` is the one computed: without noise it is ``mean`` bit for
  bit). Shifting the mean by ``mu_n - mu_c`` alone, as earlier versions did, leaves the
  offset ``mean - mu_c`` unscaled while the variance is rescaled, which is inconsistent as
  soon as the stored mean is off the calibration data's.
* ``"auto"`` (default; needs the clean model): ``delta``, ``paper``, their average
  (``"blend"``) and ``"none"`` (the statistics left as they are) are estimated on part of
  the calibration data and scored without labels on the rest
  (:mod:`nabn_onnx.calibration.select`): how far the calibrated noisy model's outputs are
  from the clean model's. The winner is written with the statistics of all samples,
  measured on whole batches exactly as the method alone would measure them. What is held
  out: with :data:`HOLDOUT_EVERY` or more batches, every 4th batch (free: it runs whole
  anyway); with fewer, or when the number of batches cannot be known in advance (a
  reader), the last quarter of every batch, which costs a second run of each batch's fit
  part but leaves a score even with one batch. A batch too small to split (under 4
  samples) only fits; when nothing could be held out, the candidates are scored in-sample,
  and the report says so. ``"none"`` in the
  running means the choice is never worse than doing nothing on its own score. Without
  noise ``delta`` scores exactly 0 and changes no output. Under severe noise (even the best
  score above :data:`~nabn_onnx.calibration.select.SEVERE`) it falls back to ``paper``.
  Without a clean model ``auto`` means ``paper``, and the report says so.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from onnx import ModelProto

from ..data import Batch, DataLike, check_batching, input_specs, iter_batches, replayable
from ..errors import NabnError, NothingToDoError
from ..logs import once_per_job, warn_once
from ..model import (
    ModelLike,
    batchnorm_nodes,
    check_output,
    find_analog_layers,
    infer_shapes_light,
    load_model,
    read_record,
    record,
    returns_like,
    save_model,
    select_layers,
    skip_summary,
    without_large_initializers,
)
from ..noise import NoiseModel
from ..passes.inject import InjectWeightNoisePass
from ..passes.split import SplitBatchNormPass
from ..passes.write_stats import WriteBatchNormStatsPass, bn_epsilon, is_placeholder, read_bn_params
from ..progress import Progress
from ..reports import Report
from ..runtime import DYNAMIC, MEASURE, SERVE, BatchPlan, chunks, make_session, plan_batch, run_chunked
from .config import METHODS, CalibrationConfig, CalibrationOptions, Reading
from .select import choose_candidate
from .statsgraph import ExposeBatchNormStatsPass

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "calibrate",
    "count_batches",
    "Calibrator",
    "CalibrationConfig",
    "measure",
    "collect_stats",
    "CalibrationResult",
    "CalibrationReport",
    "LayerShift",
    "METHODS",
    "name_batchnorms",
    "measure_inserted",
    "is_placeholder",
    "HOLDOUT_EVERY",
    "holdout_split",
    "is_holdout",
]

logger = logging.getLogger(__name__)

#: ``auto`` holds out the last 1/k of every calibration batch to score the candidates on.
HOLDOUT_EVERY = 4
#: Candidates ``auto`` scores, in order of preference on ties.
CANDIDATES = ("delta", "blend", "paper", "none")
Stats = Dict[str, Tuple[np.ndarray, np.ndarray]]


def name_batchnorms(model: ModelProto) -> int:
    """Give every unnamed BatchNormalization a unique name (its output's); returns how many."""
    taken = {n.name for n in model.graph.node if n.name}
    count = 0
    for node in batchnorm_nodes(model):
        if not node.name:
            name = node.output[0]
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            count += 1
    return count


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


def held_out(mode: str):
    """The scoring selector for a hold-out mode: ``(index, batch) -> held-out part or None``."""
    if mode == "batches":
        return lambda index, batch: batch if is_holdout(index) else None
    return lambda index, batch: holdout_split(batch)[1]


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
    :data:`HOLDOUT_EVERY`-th batch, ``"samples"`` the last quarter of every batch (each batch
    then also runs its fit part alone, see :func:`holdout_split`). The estimate over all
    samples always comes from whole batches. ``reading`` holds the estimator, batching and
    providers (defaults if None). A model whose batch is fixed and cannot be freed
    (``reading.plan``, planned here when None) runs in chunks of its fixed batch, each chunk
    one batch of Algorithm 1.
    """
    reading = reading if reading is not None else Reading()
    estimator, batch_size, max_batches, providers = (
        reading.estimator,
        reading.batch_size,
        reading.max_batches,
        reading.providers,
    )
    plan = reading.plan if reading.plan is not None else plan_batch(model, providers)
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
                values = dict(zip(fetch, session.run(fetch, feeds)))
                for name, stat in outputs.items():
                    if per_sample is None:
                        shape = values[stat.shape]
                        count = int(np.prod(shape, dtype=np.int64) // shape[1])
                    else:
                        count = per_sample[name] * size
                    if for_all:
                        everything[name].update(values[stat.mean], values[stat.var], count)
                    if fit is not None and for_fit:
                        fit[name].update(values[stat.mean], values[stat.var], count)
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


@dataclass
class LayerShift:
    """How one BatchNorm's statistics moved.

    Attributes:
        bn: BatchNormalization name.
        origin: ``"original"`` or ``"inserted"``.
        channels: channel count.
        mean_shift: average over channels of ``|mean' - mean| / sqrt(var + eps)``.
        var_ratio: geometric mean over channels of ``var' / var``.
    """

    bn: str
    origin: str
    channels: int
    mean_shift: float
    var_ratio: float


@dataclass
class CalibrationReport(Report):
    """What a calibration did, with per-layer statistic shifts; ``write`` takes ``.json`` and ``.md``.

    Attributes:
        method: the method asked for.
        chosen: the statistics written (``auto`` picks one of :data:`CANDIDATES`).
        scores: ``auto``'s score per candidate (lower is better), or None.
        estimator: the estimator's settings.
        noise: the simulated chip's settings, or None.
        batches: calibration batches.
        samples: calibration samples.
        seconds: wall time.
        inserted: BatchNorms inserted by this run's split.
        layers: per recalibrated BatchNorm, how its statistics moved.
        mode: ``"simulated"`` (noise on a clean model), ``"reference"`` (the model is the
            chip, the clean model given) or ``"chip"`` (the model is the chip, no clean model).
        left: BatchNorms or analog layers left alone, with the reason.
        scored_on: samples ``auto`` scored on (0: none).
        in_sample: ``auto`` scored on the samples it fitted (no batch could be split).
        note: why the method ran as it did (e.g. ``auto`` without a clean model).
        batch: how the model's batch dimension was handled.
        test: the task metric of the clean, noisy and calibrated model on labelled test data
            (``{"metric", "clean", "noisy", "calibrated"}``), when it was measured.
    """

    FORMATS: ClassVar[Dict[str, str]] = {".json": "to_json", ".md": "to_markdown"}

    method: str
    estimator: Dict[str, object]
    noise: Optional[Dict[str, object]]
    batches: int
    samples: int
    seconds: float
    inserted: List[str] = field(default_factory=list)
    layers: List[LayerShift] = field(default_factory=list)
    chosen: str = ""
    scores: Optional[Dict[str, float]] = None
    mode: str = "simulated"
    left: Dict[str, str] = field(default_factory=dict)
    scored_on: int = 0
    in_sample: bool = False
    note: str = ""
    batch: str = "dynamic batch"
    test: Optional[Dict[str, object]] = None

    def to_dict(self) -> Dict[str, object]:
        """JSON-able form of the report (what ``--report`` writes)."""
        out: Dict[str, object] = {
            "method": self.method,
            "chosen": self.chosen,
            "scores": self.scores,
            "scored_on": self.scored_on,
            "in_sample": self.in_sample,
            "mode": self.mode,
            "note": self.note,
            "batch": self.batch,
            "estimator": self.estimator,
            "noise": self.noise,
            "batches": self.batches,
            "samples": self.samples,
            "seconds": round(self.seconds, 3),
            "inserted": self.inserted,
            "layers": [vars(layer) for layer in self.layers],
            "left": self.left,
        }
        if self.test is not None:
            out["test"] = self.test
        return out

    def summary(self) -> str:
        """One line with the numbers: what was recalibrated, how, on what, and what was left alone and why."""
        if self.noise:
            noise = f"{self.noise['noise']} eta={self.noise['eta']:g} seed={self.noise['seed']}"
            if self.noise.get("t_inference") is not None:  # device models: the time since programming matters
                noise += f" t={self.noise['t_inference']:g}s"
        else:
            noise = "the model as the chip" + (" (clean reference given)" if self.mode == "reference" else "")
        shifts = [layer.mean_shift for layer in self.layers]
        worst = f", largest mean shift {max(shifts):.3g} std" if shifts else ""
        method = f"'{self.method}'"
        if self.chosen != self.method:
            how = f"chose '{self.chosen}'"
            if self.scores is not None:
                kind = "calibration (in-sample)" if self.in_sample else "held-out"
                how += f", scored on {self.scored_on} {kind} samples"
            method += f" ({how})"
        verb = "left the statistics of" if self.chosen == "none" else "calibrated"
        line = (
            f"{verb} {len(self.layers)} BatchNorm layer(s) ({len(self.inserted)} inserted) with method "
            f"{method} on {self.batches} batch(es) / {self.samples} samples, {noise}{worst}, in {self.seconds:.2f}s"
        )
        if self.chosen == "none":
            line += "; no candidate beat the statistics as they were on its score, so they are unchanged"
        if self.batch != "dynamic batch":
            line += f"; {self.batch}"
        if self.note:
            line += f"; {self.note}"
        if self.left:
            reasons: Dict[str, List[str]] = {}
            for name, why in self.left.items():
                reasons.setdefault(why, []).append(name)
            line += "; left alone: " + "; ".join(
                f"{len(names)} ({', '.join(names[:2])}{', ...' if len(names) > 2 else ''}): {why}"
                for why, names in reasons.items()
            )
        return line

    def to_markdown(self) -> str:
        """The report as a Markdown table, one row per BatchNorm."""
        lines = [
            "# Calibration report",
            "",
            self.summary(),
            "",
            "| BatchNorm | origin | channels | mean shift (std) | variance ratio |",
            "|---|---|---:|---:|---:|",
        ]
        for layer in self.layers:
            lines.append(
                f"| {layer.bn} | {layer.origin} | {layer.channels} | {layer.mean_shift:.4f} | {layer.var_ratio:.4f} |"
            )
        if self.left:
            lines += ["", "| left alone | why |", "|---|---|"]
            lines += [f"| {name} | {why} |" for name, why in self.left.items()]
        text = "\n".join(lines) + "\n"
        if self.test is not None:
            test = self.test
            text += f"\n| model | {test['metric']} |\n|---|---:|\n" + "".join(
                f"| {k} | {'n/a' if test[k] is None else f'{100 * test[k]:.2f}%'} |\n"  # type: ignore[operator]
                for k in ("clean", "noisy", "calibrated")
            )
        return text


@dataclass
class CalibrationResult:
    """The calibrated model and its report."""

    model: ModelProto
    report: CalibrationReport


def _measured_bn_values(stats: Stats, eps_of: Dict[str, float]) -> Dict[str, Dict[str, np.ndarray]]:
    """Parameters that make each inserted BatchNorm the identity on data with these statistics."""
    out = {}
    for name, (mean, var) in stats.items():
        out[name] = {"scale": np.sqrt(var + eps_of[name]), "bias": mean, "mean": mean, "var": var}
    return out


def measure_inserted(
    model: ModelProto,
    clean: ModelProto,
    names: Sequence[str],
    data: DataLike,
    reading: Optional[Reading] = None,
    *,
    progress: Optional[Progress] = None,
) -> Stats:
    """Measure the clean statistics of inserted BatchNorms and write them into ``model``.

    The BatchNorms ``names`` of ``clean`` are tapped in eval mode (the clean network runs as
    written); each gets ``mean = mu, var = s2, scale = sqrt(s2 + eps), B = mu``, the identity
    on data with those statistics, in ``model`` (and in ``clean`` when it is another model).
    ``progress`` advances once per batch.
    """
    reading = reading if reading is not None else Reading()
    if reading.plan is None:
        reading = dataclasses.replace(reading, plan=plan_batch(clean, reading.providers))
    stats, _, _ = collect_stats(clean, data, reading, tap=names, progress=progress)
    eps_of = {n.name: bn_epsilon(n) for n in batchnorm_nodes(model)}
    values = _measured_bn_values(stats, eps_of)
    WriteBatchNormStatsPass(values)(model)
    if clean is not model:
        WriteBatchNormStatsPass(values)(clean)
    return stats


# --------------------------------------------------------------------------------------------
# The calibration job, step by step.


@dataclass
class _Job:
    """One calibration's state, extended by each step.

    :meth:`Calibrator.prepare` decides the first fields before any data is read; the steps
    after it add the statistics measured and the choice.

    Attributes:
        model: the model being calibrated (it becomes the calibrated chip).
        clean: the clean model with the same BatchNorms (the same object as ``model`` until
            the noise goes in), or None when no clean model is known.
        mode: see :attr:`CalibrationReport.mode`.
        method: the method that runs (``auto`` becomes ``paper`` without a clean model).
        names: BatchNorms recalibrated.
        placeholders: inserted BatchNorms whose clean statistics are measured first.
        inserted: BatchNorms inserted by this run's split.
        origin: ``"original"`` or ``"inserted"`` per BatchNorm.
        left: BatchNorms or analog layers left alone, with the reason.
        note: why the method runs as it does.
        plan: how sessions take batches.
        reference: each recalibrated BatchNorm's statistics before calibration.
        holdout: how ``auto`` (or the chip guard) holds samples out, None when nothing is scored.
        clean_run: the clean model's train-mode statistics (``delta``/``auto``).
        noisy_run: the chip's train-mode statistics (Algorithm 1).
        chosen: the statistics written (a method or ``auto``'s candidate).
        scores: ``auto``'s (or the guard's) score per candidate.
        scored_on: samples the scores were computed on.
        in_sample: the scores were computed on the samples the candidates were estimated on.
    """

    model: ModelProto
    clean: Optional[ModelProto]
    mode: str
    method: str
    names: List[str]
    placeholders: List[str]
    inserted: List[str]
    origin: Dict[str, str]
    left: Dict[str, str]
    note: str
    plan: BatchPlan
    reference: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)
    holdout: Optional[str] = None
    clean_run: Optional[Measured] = None
    noisy_run: Optional[Measured] = None
    chosen: str = ""
    scores: Optional[Dict[str, float]] = None
    scored_on: int = 0
    in_sample: bool = False


_NEEDS_CLEAN = (
    "the clean model is needed to tell what the noise changed: pass it as --reference (API: reference=), "
    "or calibrate the clean model with --noise to simulate the chip"
)


def _load(model: ModelLike) -> ModelProto:
    return load_model(copy.deepcopy(model) if isinstance(model, ModelProto) else model)


def _nothing_to_calibrate(proto: ModelProto) -> str:
    why = skip_summary(find_analog_layers(proto))
    return (
        "the model has no BatchNormalization and no analog layer (Conv, ConvTranspose, Gemm, MatMul with a "
        "constant weight) to put one after" + (f" ({why})" if why else "")
    )


def calibrate(
    model: ModelLike,
    data: DataLike,
    config: Optional[CalibrationConfig] = None,
    *,
    reference: Optional[ModelLike] = None,
    output=None,
    external_data: Optional[bool] = None,
    **options: Unpack[CalibrationOptions],
) -> CalibrationResult:
    """Re-estimate the BatchNorm statistics of a model on a noisy chip.

    ``calibrate(model, data, config)`` is ``Calibrator(config)(model, data)``; the settings
    come as a :class:`CalibrationConfig` or as its flat keywords (``noise=``, ``method=``,
    ``estimator=``, ``batch_size=``, ``max_batches=``, ``include=``, ``exclude=``,
    ``providers=``, ``show_progress=``), which fill in ``config``'s fields.

    Args:
        model: path, ``ModelProto`` or ``onnx_graphsurgeon.Graph`` (not modified; a copy is
            calibrated; a graph gives a graph back in the result).
        data: calibration data: an ``.npz`` path, a dict of arrays, an onnxruntime
            ``CalibrationDataReader`` or an iterable of feed dicts.
        config: the settings (defaults: ``auto``, no simulated noise, batches of 64).
        reference: the clean model when ``model`` is the chip (enables ``delta``/``auto`` and
            BatchNorms inserted where the exporter folded them).
        output: where to save the calibrated model (atomically); None to only return it.
        external_data: store the output's tensors in ``<output>.data`` (None: only above 2 GB).
        **options: flat settings keywords (:class:`CalibrationOptions`).

    Returns:
        The calibrated model and a :class:`CalibrationReport`.

    Raises:
        NabnError: bad model, data or settings, or nothing that can be recalibrated (one line).
    """
    calibrator = Calibrator(CalibrationConfig.build(config, options))
    return calibrator(model, data, reference=reference, output=output, external_data=external_data)


class Calibrator:
    """A calibration as a short sequence of named steps, settings given once.

    Calling it runs, top to bottom: :meth:`check` (settings against the inputs, before any
    work), :meth:`prepare` (what the model is, what can be recalibrated, split, batch plan),
    :meth:`plan_holdout` (what ``auto`` scores on), then over the data
    :meth:`measure_inserted` (clean statistics of BatchNorms this run inserted),
    :meth:`measure_clean` (the clean train-mode statistics ``delta``/``auto`` need),
    :meth:`put_noise` (one simulated chip), :meth:`measure_noisy` (Algorithm 1),
    :meth:`choose` (``auto``'s candidates, or the guard on a chip without its clean model),
    :meth:`write_back` and :meth:`report`, then the save. Each step reads and extends one
    job state (:class:`_Job`), so each can be run and tested on its own.
    """

    def __init__(self, config: Optional[CalibrationConfig] = None, *, reuse_clean: bool = False):
        """Settings for every call.

        Args:
            config: the settings (defaults if None).
            reuse_clean: the calls calibrate chips of one clean model on one data source (a
                sweep): the clean model's train-mode statistics and ``auto``'s clean session
                are measured on the first call and reused while the same ``model`` and
                ``data`` objects are passed (which must not change in between). Each chip's
                noise can differ (``replace`` the config's ``noise`` per call with :meth:`with_noise`).
        """
        self.config = config if config is not None else CalibrationConfig()
        self.reuse_clean = reuse_clean
        self._clean: Dict[Tuple[int, int], Tuple[object, object, Optional[Measured], object]] = {}

    def with_noise(self, noise: Optional[NoiseModel]) -> Calibrator:
        """The same calibrator (and its reused clean measurements) for another chip's noise."""
        other = Calibrator(self.config.replace(noise=noise), reuse_clean=self.reuse_clean)
        other._clean = self._clean
        return other

    @returns_like("model")
    def __call__(
        self,
        model: ModelLike,
        data: DataLike,
        *,
        reference: Optional[ModelLike] = None,
        output=None,
        external_data: Optional[bool] = None,
    ) -> CalibrationResult:
        """Calibrate ``model`` on ``data`` (arguments as for :func:`calibrate`)."""
        started = time.perf_counter()
        self.check(model, data, reference, output)
        key = (id(model), id(data))
        cached = self._clean.get(key) if self.reuse_clean and reference is None else None
        with once_per_job():
            job = self.prepare(model, reference)
            source, data = data, replayable(data)
            self.plan_holdout(job, data)
            with self.progress(job, data) as bar:
                self.measure_inserted(job, data, bar)
                if cached is not None and not job.placeholders:
                    job.clean_run, clean_session = cached[2], cached[3]
                    bar.update(count_batches(data, self.config.data.batch_size, self.config.data.max_batches) or 0)
                else:
                    self.measure_clean(job, data, bar)
                    clean_session = self.clean_session(job)
                    if self.reuse_clean and reference is None and not job.placeholders:
                        # the objects are kept so that their ids stay theirs while the entry lives
                        self._clean[key] = (model, source, job.clean_run, clean_session)
                self.put_noise(job)
                self.measure_noisy(job, data, bar)
                self.choose(job, data, clean_session, bar)
                del clean_session
            layers = self.write_back(job)
        report = self.report(job, layers, started)
        if output is not None:
            save_model(job.model, output, external_data=external_data)
        report.seconds = time.perf_counter() - started
        return CalibrationResult(job.model, report)

    # ---- the steps, in order

    def check(self, model: ModelLike, data: DataLike, reference: Optional[ModelLike], output) -> None:
        """Refuse settings that cannot work with these inputs, before any work is done."""
        if self.config.noise is not None and reference is not None:
            raise NabnError(
                "give either --noise (the model is clean; a chip is simulated on it) or --reference (the "
                "model is the chip; this is the clean one), not both"
            )
        if output is not None:
            check_output(model, output, {"the reference model": reference, "the calibration data": data})
        check_batching(data, self.config.data.batch_size, self.config.data.max_batches, min_batch=2)

    def prepare(self, model: ModelLike, reference: Optional[ModelLike] = None) -> _Job:
        """Load, decide what the model is, split where a clean model is known, and plan batches."""
        noise, layers, providers = self.config.noise, self.config.layers, self.config.runtime.providers
        proto = _load(model)
        if noise is not None and read_record(proto, "inject") is not None:
            raise NabnError(
                "the model already carries injected noise (nabn.inject); calibrate the clean model with "
                "--noise, or drop --noise to calibrate this chip as it is"
            )
        if noise is None and reference is None:
            job = self._prepare_chip(proto)
        else:
            split = SplitBatchNormPass(include=layers.include, exclude=layers.exclude)
            inserted = list(split(proto).details.get("inserted", []))
            name_batchnorms(proto)
            names = [n.name for n in batchnorm_nodes(proto)]
            if not names:
                raise NothingToDoError(_nothing_to_calibrate(proto))
            clean = proto
            mode = "simulated"
            if reference is not None:
                mode = "reference"
                clean = _load(reference)
                split(clean)
                name_batchnorms(clean)
                if [n.name for n in batchnorm_nodes(clean)] != names:
                    raise NabnError(
                        "the reference model's BatchNorms do not match the model's: give the same model before noise"
                    )
            recorded = set(read_record(proto, "inserted_bn", []) or [])
            params = read_bn_params(proto)
            eps_of = {n.name: bn_epsilon(n) for n in batchnorm_nodes(proto)}
            placeholders = [n for n in names if n in recorded and is_placeholder(params[n], eps_of[n])]
            origin = {n: "inserted" if n in recorded else "original" for n in names}
            job = _Job(proto, clean, mode, self.config.method, names, placeholders, inserted, origin, {}, "", DYNAMIC)
        job.plan = plan_batch(job.model, providers)
        return job

    def _prepare_chip(self, proto: ModelProto) -> _Job:
        """The model is the chip and no clean model is known: recalibrate what holds clean statistics."""
        if self.config.method == "delta":
            raise NabnError(f"method 'delta' needs the clean model: {_NEEDS_CLEAN}")
        name_batchnorms(proto)
        recorded = set(read_record(proto, "inserted_bn", []) or [])
        params = read_bn_params(proto)
        names, left, origin = [], {}, {}
        for node in batchnorm_nodes(proto):
            if node.name in recorded and is_placeholder(params[node.name], bn_epsilon(node)):
                left[node.name] = (
                    "inserted without clean statistics: run 'split --data' on the clean model, or pass --reference"
                )
            elif any(params[node.name][k] is None for k in ("mean", "var")):
                left[node.name] = "statistics are computed at run time, not stored"
            else:
                names.append(node.name)
                origin[node.name] = "inserted" if node.name in recorded else "original"
        layers = find_analog_layers(proto)
        include, exclude = self.config.layers.include, self.config.layers.exclude
        selected = {id(layer.node) for layer in select_layers(layers, include, exclude)}
        for layer in layers:
            if layer.bn is None and id(layer.node) in selected:
                left[layer.name] = (
                    "no BatchNorm and no clean model to measure one on: run 'split --data' on the clean "
                    "model before programming the chip, or pass --reference"
                )
        if not names and (not layers or all(layer.skip_reason and layer.bn is None for layer in layers)):
            raise NothingToDoError(_nothing_to_calibrate(proto))
        if not names:
            raise NothingToDoError(
                "nothing to recalibrate on this chip without its clean model: it has no BatchNorm holding trained "
                f"statistics ({len(left)} analog layer(s) or BatchNorm(s) left alone); {_NEEDS_CLEAN}"
            )
        return _Job(proto, None, "chip", "paper", names, [], [], origin, left, "", DYNAMIC)

    def plan_holdout(self, job: _Job, data: DataLike) -> None:
        """How ``auto`` (and the guard of a chip without its clean model) holds samples out to score on."""
        # on a chip without its clean model, 'auto' checks Algorithm 1 against leaving it as it is
        if job.method == "auto" or self._guards_chip(job):
            job.holdout = holdout_mode(count_batches(data, self.config.data.batch_size, self.config.data.max_batches))

    def progress(self, job: _Job, data: DataLike) -> Progress:
        """A progress bar over every batch every step will run."""
        per_pass = count_batches(data, self.config.data.batch_size, self.config.data.max_batches)
        needs_clean = job.method in ("delta", "auto")
        passes = (1 if job.placeholders else 0) + (2 if needs_clean else 1)
        scoring = len(CANDIDATES) * per_pass if per_pass is not None and job.method == "auto" else 0
        total = None if per_pass is None else passes * per_pass + scoring
        return Progress("calibrating", total, enabled=self.config.runtime.show_progress)

    def measure_inserted(self, job: _Job, data: DataLike, bar: Optional[Progress] = None) -> None:
        """Clean statistics of the BatchNorms inserted without them, written into both models."""
        if job.placeholders:
            assert job.clean is not None, "prepare inserts placeholders only with a clean model"
            measure_inserted(job.model, job.clean, job.placeholders, data, self._reading(job), progress=bar)
        job.reference = _running_stats(read_bn_params(job.model), job.names)

    def measure_clean(self, job: _Job, data: DataLike, bar: Optional[Progress] = None) -> None:
        """The clean model's train-mode statistics (``delta`` and ``auto`` map the noise's change from them)."""
        if job.method in ("delta", "auto"):
            assert job.clean is not None, "prepare keeps delta and auto only with a clean model"
            job.clean_run = measure(
                job.clean, data, self._reading(job), train=job.names, progress=bar, holdout=job.holdout
            )

    def clean_session(self, job: _Job):
        """``auto``'s clean reference session, built before the noise goes in (None otherwise).

        onnxruntime holds its own copy of the weights, so no second ModelProto is kept.
        """
        if job.method != "auto":
            return None
        assert job.clean is not None
        return make_session(job.clean, optimization=SERVE, providers=self.config.runtime.providers, batch=job.plan)

    def put_noise(self, job: _Job) -> None:
        """One simulated chip's noise on the model's analog weights (nothing when the model is the chip)."""
        if self.config.noise is not None:
            InjectWeightNoisePass(self.config.noise)(job.model)

    def measure_noisy(self, job: _Job, data: DataLike, bar: Optional[Progress] = None) -> None:
        """Algorithm 1: the chip's train-mode statistics."""
        job.noisy_run = measure(job.model, data, self._reading(job), train=job.names, progress=bar, holdout=job.holdout)
        if job.noisy_run.constant:
            warn_once(
                logger,
                "the calibration data does not vary between samples (constant inputs): statistics "
                "measured on it say nothing about real data; calibrate on real inputs",
            )

    def choose(self, job: _Job, data: DataLike, clean_session=None, bar: Optional[Progress] = None) -> None:
        """Which statistics to write: the method's, ``auto``'s best candidate, or the chip guard's."""
        job.chosen = job.method
        if job.method == "auto":
            assert job.holdout is not None, "plan_holdout() sets the hold-out for auto"
            _choose(job, data, self._reading(job), clean_session, bar)
        elif self._guards_chip(job):
            assert job.holdout is not None, "plan_holdout() sets the hold-out for the chip guard"
            _guard_chip(job, data, self._reading(job))

    def write_back(self, job: _Job) -> List[LayerShift]:
        """Write the chosen statistics into the model; the per-layer shift they make."""
        assert job.noisy_run is not None, "measure_noisy runs before write_back"
        clean_stats = job.clean_run.stats if job.clean_run is not None else None
        new = _new_stats(job.chosen, job.names, job.reference, job.noisy_run.stats, clean_stats)
        eps_of = {n.name: bn_epsilon(n) for n in batchnorm_nodes(job.model)}
        layers = [_shift(name, job.origin[name], job.reference[name], new[name], eps_of[name]) for name in job.names]
        # An inserted BatchNorm that the chosen statistics leave exactly as measured goes back to the
        # bit-exact identity placeholder (this is what keeps a noise-free delta/auto run bit for bit).
        for name in job.placeholders:
            if job.chosen == "none" or (
                job.chosen == "delta"
                and clean_stats is not None
                and _unchanged(job.noisy_run.stats[name], clean_stats[name])
            ):
                new[name] = _placeholder_values(job.reference[name]["mean"].size, eps_of[name])
        WriteBatchNormStatsPass(new)(job.model)
        return layers

    def report(self, job: _Job, layers: List[LayerShift], started: float) -> CalibrationReport:
        """The report, also recorded as the model's ``nabn.calibrate`` provenance."""
        assert job.noisy_run is not None, "measure_noisy runs before report"
        config = self.config
        report = CalibrationReport(
            method=config.method,
            chosen=job.chosen,
            scores=job.scores,
            estimator={k: getattr(config.estimator, k) for k in config.estimator.__dataclass_fields__},
            noise=config.noise.describe() if config.noise is not None else None,
            batches=job.noisy_run.batches,
            samples=job.noisy_run.samples,
            seconds=time.perf_counter() - started,
            inserted=job.inserted,
            layers=layers,
            mode=job.mode,
            left=job.left,
            scored_on=job.scored_on,
            in_sample=job.in_sample,
            note=job.note,
            batch=job.plan.describe(),
        )
        record(
            job.model,
            "calibrate",
            {
                "method": config.method,
                "chosen": job.chosen,
                "estimator": report.estimator,
                "batches": report.batches,
                "samples": report.samples,
                "noise": report.noise,
                "mode": job.mode,
                "recalibrated": len(job.names),
                "left": len(job.left),
            },
        )
        return report

    # ---- helpers

    def _reading(self, job: _Job) -> Reading:
        return self.config.reading(job.plan)

    def _guards_chip(self, job: _Job) -> bool:
        return job.mode == "chip" and self.config.method == "auto"


def _choose(job: _Job, data: DataLike, reading: Reading, clean_session, bar: Optional[Progress]) -> None:
    """``auto``: estimate every candidate on the fit samples and score it on the held-out ones."""
    clean_run, noisy_run = job.clean_run, job.noisy_run
    assert clean_run is not None and noisy_run is not None and job.holdout is not None
    fit_noisy, fit_clean = noisy_run.fit, clean_run.fit
    in_sample = fit_noisy is None or fit_clean is None
    if fit_noisy is None or fit_clean is None:
        fit_noisy, fit_clean = noisy_run.stats, clean_run.stats
    candidates = {name: _new_stats(name, job.names, job.reference, fit_noisy, fit_clean) for name in CANDIDATES}
    if in_sample:
        warn_once(
            logger,
            "auto: no calibration batch had the 4 or more samples needed to hold some out; "
            "the candidates are scored on the samples they were estimated on",
        )
    job.chosen, job.scores = choose_candidate(
        clean_session,
        job.model,
        candidates,
        data,
        reading,
        select=None if in_sample else held_out(job.holdout),
        progress=bar,
    )
    logger.info("auto: scores %s, chose %s", job.scores, job.chosen)
    job.scored_on = noisy_run.samples if in_sample else noisy_run.held
    job.in_sample = in_sample


def _guard_chip(job: _Job, data: DataLike, reading: Reading) -> None:
    """``auto`` on a chip without its clean model: Algorithm 1 against the statistics as they are.

    Without a clean model there are no clean outputs to compare with; when the calibration
    data has labels and the model is a classifier, the two are compared by top-1 on the
    held-out samples, and Algorithm 1 is kept only if it is not worse (BatchNorms trained on
    other data than the calibration data can lose more to Algorithm 1 than the noise costs).
    Without labels the result cannot be checked, and the note says so.
    """
    noisy_run = job.noisy_run
    assert noisy_run is not None and job.holdout is not None
    fit = noisy_run.fit
    in_sample = fit is None
    if fit is None:
        fit = noisy_run.stats
    candidates = {
        "paper": {n: {"mean": fit[n][0], "var": fit[n][1]} for n in job.names},
        "none": {n: {"mean": job.reference[n]["mean"], "var": job.reference[n]["var"]} for n in job.names},
    }
    select = None if in_sample else held_out(job.holdout)
    output = job.model.graph.output[0].name
    scores: Dict[str, float] = {}
    job.chosen, job.in_sample = "paper", in_sample
    job.note = (
        "Algorithm 1 ('paper') ran and could not be checked: without the clean model (--reference) "
        "or labels in the calibration data nothing tells whether it helped; measure it with --test"
    )
    for name, values in candidates.items():
        WriteBatchNormStatsPass(values)(job.model)
        session = make_session(job.model, optimization=SERVE, providers=reading.providers, batch=job.plan)
        hits = total = 0
        for index, batch in enumerate(
            iter_batches(
                data,
                input_specs(job.model),
                batch_size=reading.batch_size,
                max_batches=reading.max_batches,
                min_batch=2,
            )
        ):
            part = batch if select is None else select(index, batch)
            if part is None:
                continue
            if part.labels is None:
                return
            (logits,) = run_chunked(session, [output], part.feeds, job.plan.chunk)
            labels = np.asarray(part.labels).reshape(-1)
            if logits.ndim != 2 or len(logits) != len(labels) or labels.dtype.kind not in "iu":
                return
            hits += int((logits.argmax(axis=1) == labels).sum())
            total += len(labels)
        del session
        if not total:
            return
        scores[name] = hits / total
    job.chosen = "paper" if scores["paper"] >= scores["none"] else "none"
    job.scores, job.scored_on = scores, total
    where = "calibration (in-sample)" if in_sample else "held-out"
    job.note = (
        f"no clean model: 'auto' compared Algorithm 1 with the statistics as they were by top-1 on {total} {where} "
        f"labelled samples ({100 * scores['paper']:.1f}% against {100 * scores['none']:.1f}%) and kept "
        + ("Algorithm 1" if job.chosen == "paper" else "the statistics as they were")
    )


def _new_stats(
    method: str, names: Sequence[str], reference: Dict[str, Dict[str, np.ndarray]], noisy: Stats, clean: Optional[Stats]
) -> Dict[str, Dict[str, np.ndarray]]:
    """The statistics each candidate writes.

    ``paper`` the noisy ones, ``delta`` the reference mapped by the noise's per-channel affine
    change (module docstring), ``blend`` the average of the two (geometric for variances),
    ``none`` the reference itself.
    """
    out = {}
    for name in names:
        mean_r, var_r = reference[name]["mean"], reference[name]["var"]
        if method == "none":
            out[name] = {"mean": mean_r, "var": var_r}
            continue
        mean_n, var_n = noisy[name]
        if method == "paper":
            out[name] = {"mean": mean_n, "var": var_n}
            continue
        assert clean is not None, f"{method!r} needs the clean statistics"
        mean_c, var_c = clean[name]
        ratio = _safe_ratio(var_n, var_c)
        mean_d = mean_r + (mean_n - mean_c) + (np.sqrt(ratio) - 1.0) * (mean_r - mean_c)
        var_d = var_r * ratio
        if method == "delta":
            out[name] = {"mean": mean_d, "var": var_d}
        else:
            out[name] = {"mean": 0.5 * (mean_d + mean_n), "var": np.sqrt(var_d * var_n)}
    return out


def _unchanged(noisy: Tuple[np.ndarray, np.ndarray], clean: Tuple[np.ndarray, np.ndarray]) -> bool:
    return bool(np.array_equal(noisy[0], clean[0]) and np.array_equal(noisy[1], clean[1]))


def _running_stats(
    params: Dict[str, Dict[str, Optional[np.ndarray]]], names: Sequence[str]
) -> Dict[str, Dict[str, np.ndarray]]:
    """``{name: {"mean", "var"}}`` of the BatchNorms recalibrated, from :func:`read_bn_params`."""
    out = {}
    for name in names:
        mean, var = params[name]["mean"], params[name]["var"]
        if mean is None or var is None:
            raise NabnError(
                f"BatchNormalization '{name}' reads its running statistics from a computed tensor, "
                "not an initializer: it cannot be recalibrated"
            )
        out[name] = {"mean": mean, "var": var}
    return out


def _placeholder_values(channels: int, eps: float) -> Dict[str, np.ndarray]:
    """The exact-identity placeholder of an inserted BatchNorm (``var = 1 - eps``, exact in its dtype)."""
    return {
        "scale": np.ones(channels),
        "bias": np.zeros(channels),
        "mean": np.zeros(channels),
        "var": np.full(channels, 1.0 - np.float64(np.float32(eps))),
    }


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, 1 where the clean variance is zero (a dead channel stays as it was)."""
    out = np.ones_like(num)
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return out


def _shift(
    name: str, origin: str, before: Dict[str, np.ndarray], after: Dict[str, np.ndarray], eps: float
) -> LayerShift:
    mean0, var0 = before["mean"], before["var"]
    mean1, var1 = np.asarray(after["mean"], np.float64), np.asarray(after["var"], np.float64)
    shift = float(np.mean(np.abs(mean1 - mean0) / np.sqrt(var0 + eps)))
    ratio = float(np.exp(np.mean(np.log((var1 + eps) / (var0 + eps)))))
    return LayerShift(name, origin, int(mean0.size), shift, ratio)


def count_batches(data: DataLike, batch_size: int, max_batches: Optional[int]) -> Optional[int]:
    """Number of batches when it can be known without reading the data; None otherwise."""
    from ..data import count_samples

    if batch_size < 1:  # iter_batches reports it
        return None
    samples = count_samples(data)
    total = None if samples is None else -(-samples // batch_size)
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    return total
