"""Calibration: re-estimate BatchNorm statistics of a (noisy) model on calibration data.

``calibrate`` runs the whole job: load, split fused BatchNorms back out, measure the clean
reference statistics the inserted BatchNorms need, put one chip's noise on the weights,
measure the noisy statistics with the paper's train-mode semantics, write them back.

Methods:

* ``"auto"`` (default) picks per model between the two below, see last.
* ``"paper"`` (Algorithm 1): every BatchNorm normalizes each batch with the batch's own
  statistics while the batches stream through (so each layer is measured under the
  recalibrated layers before it) and its running statistics are replaced by the estimate.
* ``"delta"``: keep each BatchNorm's reference statistics and apply only the shift the
  noise causes, measured the same way on the clean and the noisy model:
  ``mean' = mean + (mu_noisy - mu_clean)``, ``var' = var * v_noisy / v_clean``. Without
  noise it changes nothing, bit for bit; it needs the clean weights.
* ``"auto"``: both of the above (and their average, ``"blend"``) are estimated on all but
  every :data:`HOLDOUT_EVERY`-th calibration batch, scored without labels by how far the
  calibrated noisy model's outputs are from the clean model's on the held-out batches
  (:mod:`nabn_onnx.calibration.select`), and the winner is written with the statistics of
  all batches. Without noise ``delta`` scores zero, so ``auto`` changes no output. Under
  severe noise (even the best score above :data:`~nabn_onnx.calibration.select.SEVERE`)
  it falls back to ``paper``.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from onnx import ModelProto

from ..data import DataLike, input_specs, iter_batches, replayable
from ..errors import NabnError, NothingToDoError
from ..graph import batchnorm_nodes, find_analog_layers, infer_shapes_light
from ..io import ModelLike, check_output, load_model, read_record, record, save_model, without_large_initializers
from ..noise import NoiseModel
from ..passes.inject import InjectWeightNoisePass
from ..passes.split import PLACEHOLDER_EPSILON, SplitBatchNormPass
from ..passes.write_stats import WriteBatchNormStatsPass, bn_epsilon, read_bn_params
from ..progress import Progress
from ..runtime import MEASURE, SERVE, make_session
from .select import choose_candidate
from .statsgraph import ExposeBatchNormStatsPass
from .stats import DEFAULT_ESTIMATOR, Estimator

__all__ = ["calibrate", "collect_stats", "CalibrationResult", "CalibrationReport", "LayerShift", "METHODS",
           "name_batchnorms", "measure_inserted"]

logger = logging.getLogger(__name__)

METHODS = ("auto", "paper", "delta")
#: ``auto`` holds out every k-th calibration batch to score the candidates on.
HOLDOUT_EVERY = 4
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


@dataclass
class Measured:
    """Statistics from one pass over the data.

    Attributes:
        stats: ``{bn name: (mean, var)}`` over all batches.
        fit: the same over the batches that were not held out (``holdout_every``), else None.
        batches: batches seen.
        samples: samples seen.
    """

    stats: Stats
    fit: Optional[Stats]
    batches: int
    samples: int


def is_holdout(batch_index: int, holdout_every: int) -> bool:
    """Whether batch ``batch_index`` (0-based) is held out: every ``holdout_every``-th batch."""
    return holdout_every > 0 and batch_index % holdout_every == holdout_every - 1


def measure(
    model: ModelProto,
    data: DataLike,
    *,
    train: Iterable[str] = (),
    tap: Iterable[str] = (),
    estimator: Estimator = DEFAULT_ESTIMATOR,
    batch_size: int = 64,
    max_batches: Optional[int] = None,
    providers: Optional[Sequence[str]] = None,
    progress: Optional[Progress] = None,
    holdout_every: int = 0,
) -> Measured:
    """Stream ``data`` through ``model`` and estimate per-channel statistics of BatchNorm inputs.

    ``train`` BatchNorms run in training mode (normalize with batch statistics), ``tap``
    BatchNorms stay in eval mode; both are measured. ``model`` is not modified. With
    ``holdout_every=k`` a second estimate leaves out every k-th batch (see :func:`is_holdout`).
    """
    train, tap = list(train), list(tap)
    per_sample = _elements_per_sample(model, train + tap)
    # the statistics graph rewrites nodes and BatchNorm parameters only: the weights stay in `model`
    stats_model, weights = without_large_initializers(model)
    expose = ExposeBatchNormStatsPass(train=train, tap=tap, keep_outputs=False, shapes=per_sample is None)
    expose(stats_model)
    outputs = expose.outputs
    session = make_session(stats_model, optimization=MEASURE, providers=providers, extra_initializers=weights)
    del stats_model, weights
    fetch: List[str] = []
    for stat in outputs.values():
        fetch += [stat.mean, stat.var] + ([stat.shape] if per_sample is None else [])
    everything = {name: estimator.new() for name in outputs}
    fit = {name: estimator.new() for name in outputs} if holdout_every else None
    batches = samples = 0
    for batch in iter_batches(data, input_specs(model), batch_size=batch_size, max_batches=max_batches, min_batch=2):
        values = dict(zip(fetch, session.run(fetch, batch.feeds)))
        held_out = is_holdout(batches, holdout_every)
        for name, stat in outputs.items():
            if per_sample is None:
                shape = values[stat.shape]
                count = int(np.prod(shape, dtype=np.int64) // shape[1])
            else:
                count = per_sample[name] * batch.size
            everything[name].update(values[stat.mean], values[stat.var], count)
            if fit is not None and not held_out:
                fit[name].update(values[stat.mean], values[stat.var], count)
        batches += 1
        samples += batch.size
        if progress is not None:
            progress.update()
    fit_stats = None
    if fit is not None and all(acc.batches for acc in fit.values()):
        fit_stats = {name: acc.result() for name, acc in fit.items()}
    return Measured({name: acc.result() for name, acc in everything.items()}, fit_stats, batches, samples)


def collect_stats(model: ModelProto, data: DataLike, **kwargs) -> Tuple[Stats, int, int]:
    """:func:`measure` returning ``({bn name: (mean, var)}, batches, samples)``."""
    measured = measure(model, data, **kwargs)
    return measured.stats, measured.batches, measured.samples


def _elements_per_sample(model: ModelProto, bn_names: Sequence[str]) -> Optional[Dict[str, int]]:
    """Elements per channel per sample at each BatchNorm input, when shape inference knows them all."""
    shapes = infer_shapes_light(model, batch_size=1)
    inputs = {n.name: n.input[0] for n in batchnorm_nodes(model)}
    out = {}
    for name in bn_names:
        shape = shapes.get(inputs[name])
        if shape is None or len(shape) < 2 or any(d is None for d in shape[2:]) or shape[0] != 1:
            return None
        out[name] = int(np.prod(shape[2:], dtype=np.int64))
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
class CalibrationReport:
    """What a calibration did, with per-layer statistic shifts."""

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

    def to_dict(self) -> Dict[str, object]:
        return {
            "method": self.method,
            "chosen": self.chosen,
            "scores": self.scores,
            "estimator": self.estimator,
            "noise": self.noise,
            "batches": self.batches,
            "samples": self.samples,
            "seconds": round(self.seconds, 3),
            "inserted": self.inserted,
            "layers": [vars(l) for l in self.layers],
        }

    def summary(self) -> str:
        """One line with the numbers."""
        noise = "no noise injected" if not self.noise else f"{self.noise['noise']} eta={self.noise['eta']:g} seed={self.noise['seed']}"
        shifts = [l.mean_shift for l in self.layers]
        worst = f", largest mean shift {max(shifts):.3g} std" if shifts else ""
        method = f"'{self.method}'" + (f" (chose '{self.chosen}')" if self.chosen != self.method else "")
        return (
            f"calibrated {len(self.layers)} BatchNorm layer(s) ({len(self.inserted)} inserted) with method "
            f"{method} on {self.batches} batch(es) / {self.samples} samples, {noise}{worst}, "
            f"in {self.seconds:.2f}s"
        )

    def to_markdown(self) -> str:
        lines = [f"# Calibration report", "", self.summary(), "",
                 "| BatchNorm | origin | channels | mean shift (std) | variance ratio |",
                 "|---|---|---:|---:|---:|"]
        for l in self.layers:
            lines.append(f"| {l.bn} | {l.origin} | {l.channels} | {l.mean_shift:.4f} | {l.var_ratio:.4f} |")
        return "\n".join(lines) + "\n"


@dataclass
class CalibrationResult:
    """The calibrated model and its report."""

    model: ModelProto
    report: CalibrationReport


def _is_placeholder(params: Dict[str, Optional[np.ndarray]]) -> bool:
    if any(v is None for v in params.values()):
        return False
    return (
        np.all(params["scale"] == 1.0)
        and np.all(params["bias"] == 0.0)
        and np.all(params["mean"] == 0.0)
        and np.all(params["var"] == np.float32(1.0 - PLACEHOLDER_EPSILON))
    )


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
    *,
    estimator: Estimator = DEFAULT_ESTIMATOR,
    batch_size: int = 64,
    max_batches: Optional[int] = None,
    providers: Optional[Sequence[str]] = None,
    show_progress: bool = False,
    progress: Optional[Progress] = None,
) -> Stats:
    """Measure the clean statistics of inserted BatchNorms and write them into ``model``.

    The BatchNorms ``names`` of ``clean`` are tapped in eval mode (the clean network runs as
    written); each gets ``mean = mu, var = s2, scale = sqrt(s2 + eps), B = mu``, the identity
    on data with those statistics, in ``model`` (and in ``clean`` when it is another model).
    """
    bar = progress or Progress("measuring", _count_batches(data, batch_size, max_batches), enabled=show_progress)
    stats, _, _ = collect_stats(clean, data, tap=names, estimator=estimator, batch_size=batch_size,
                                max_batches=max_batches, providers=providers, progress=bar)
    if progress is None:
        bar.close()
    eps_of = {n.name: bn_epsilon(n) for n in batchnorm_nodes(model)}
    values = _measured_bn_values(stats, eps_of)
    WriteBatchNormStatsPass(values)(model)
    if clean is not model:
        WriteBatchNormStatsPass(values)(clean)
    return stats


def calibrate(
    model: ModelLike,
    data: DataLike,
    *,
    noise: Optional[NoiseModel] = None,
    method: str = "auto",
    estimator: Estimator = DEFAULT_ESTIMATOR,
    batch_size: int = 64,
    max_batches: Optional[int] = None,
    include: Optional[str] = None,
    exclude: Optional[str] = None,
    reference: Optional[ModelLike] = None,
    output=None,
    providers: Optional[Sequence[str]] = None,
    show_progress: bool = False,
    external_data: Optional[bool] = None,
) -> CalibrationResult:
    """Re-estimate the BatchNorm statistics of a model on a noisy chip.

    Args:
        model: path or ``ModelProto`` (not modified; a copy is calibrated).
        data: calibration data: an ``.npz`` path, a dict of arrays, an onnxruntime
            ``CalibrationDataReader`` or an iterable of feed dicts.
        noise: simulate this chip (the same noise ``inject`` writes with the same
            settings); None calibrates the model as given (already noisy, or the
            statistics come from a device).
        method: ``"auto"``, ``"paper"`` or ``"delta"`` (see the module docstring).
        estimator: how batch statistics are combined.
        batch_size: samples per batch for file and dict data.
        max_batches: use at most this many batches.
        include: regular expression of analog layer names to split (all by default).
        exclude: regular expression of analog layer names not to split.
        reference: the clean model, needed when ``model`` is already noisy and the clean
            statistics are not yet known (inserted placeholders, or a method other than ``"paper"``).
        output: where to save the calibrated model (atomically); None to only return it.
        providers: onnxruntime execution providers.
        show_progress: draw a progress bar on a terminal.
        external_data: store the output's tensors in ``<output>.data`` (None: only above 2 GB).

    Returns:
        The calibrated model and a :class:`CalibrationReport`.

    Raises:
        NabnError: bad model, data or settings (one-line message).
    """
    started = time.perf_counter()
    if method not in METHODS:
        raise NabnError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if output is not None:
        check_output(model, output)
    proto = load_model(copy.deepcopy(model) if isinstance(model, ModelProto) else model)
    if noise is not None and read_record(proto, "inject") is not None:
        raise NabnError("the model already carries injected noise (nabn.inject); calibrate the clean model with --noise, or drop --noise")
    split = SplitBatchNormPass(include=include, exclude=exclude)(proto)
    name_batchnorms(proto)
    bns = batchnorm_nodes(proto)
    if not bns:
        layers = find_analog_layers(proto)
        why = "; ".join(f"{l.name}: {l.skip_reason}" for l in layers[:3] if l.skip_reason)
        raise NothingToDoError(
            "the model has no BatchNormalization and no analog layer (Conv, ConvTranspose, Gemm, MatMul with a "
            "constant weight) to put one after" + (f" ({why})" if why else "")
        )
    data = replayable(data)
    names = [n.name for n in bns]
    eps_of = {n.name: bn_epsilon(n) for n in bns}
    inserted = set(read_record(proto, "inserted_bn", []) or [])
    before = read_bn_params(proto)
    placeholders = [name for name in names if name in inserted and _is_placeholder(before[name])]
    already_noisy = noise is None and read_record(proto, "inject") is not None
    clean = proto
    if reference is not None:
        clean = load_model(copy.deepcopy(reference) if isinstance(reference, ModelProto) else reference)
        SplitBatchNormPass(include=include, exclude=exclude)(clean)
        name_batchnorms(clean)
        if [n.name for n in batchnorm_nodes(clean)] != names:
            raise NabnError("the reference model's BatchNorms do not match the model's: give the same model before noise")
    elif (placeholders or method != "paper") and already_noisy:
        raise NabnError(
            "the model carries injected noise, so its clean statistics cannot be measured from it: pass the clean "
            "model as --reference, or calibrate the clean model with --noise"
        )
    needs_clean = method in ("delta", "auto")
    holdout = HOLDOUT_EVERY if method == "auto" else 0
    passes = (1 if placeholders else 0) + (2 if needs_clean else 1)
    per_pass = _count_batches(data, batch_size, max_batches)
    total = None
    if per_pass is not None:  # auto also scores 3 candidates on the held-out batches
        total = passes * per_pass + (3 * (per_pass // HOLDOUT_EVERY) if method == "auto" else 0)
    common = dict(estimator=estimator, batch_size=batch_size, max_batches=max_batches, providers=providers)
    chosen, scores = method, None
    with Progress("calibrating", total, enabled=show_progress) as bar:
        if placeholders:
            measure_inserted(proto, clean, placeholders, data, progress=bar, **common)
        reference_params = read_bn_params(proto)
        clean_run = measure(clean, data, train=names, progress=bar, holdout_every=holdout, **common) if needs_clean else None
        # The clean reference outputs for ``auto`` come from a session built before the noise goes in
        # (onnxruntime holds its own copy of the weights, so no second ModelProto is kept).
        clean_session = make_session(clean, optimization=SERVE, providers=providers) if method == "auto" else None
        if noise is not None:
            InjectWeightNoisePass(noise)(proto)
        noisy_run = measure(proto, data, train=names, progress=bar, holdout_every=holdout, **common)
        batches, samples = noisy_run.batches, noisy_run.samples
        if method == "auto":
            in_sample = noisy_run.fit is None or clean_run.fit is None
            fit_noisy = noisy_run.stats if in_sample else noisy_run.fit
            fit_clean = clean_run.stats if in_sample else clean_run.fit
            candidates = {name: _new_stats(name, names, reference_params, fit_noisy, fit_clean)
                          for name in ("delta", "blend", "paper")}
            held = None if in_sample else {i for i in range(batches) if is_holdout(i, HOLDOUT_EVERY)}
            chosen, scores = choose_candidate(clean_session, proto, candidates, data, batch_indices=held,
                                              batch_size=batch_size, max_batches=max_batches, providers=providers,
                                              progress=bar)
            del clean_session
            logger.info("auto: scores %s, chose %s", scores, chosen)
    new = _new_stats(chosen, names, reference_params, noisy_run.stats, clean_run.stats if clean_run else None)
    layers = [
        _shift(name, "inserted" if name in inserted else "original", reference_params[name], new[name], eps_of[name])
        for name in names
    ]
    # An inserted BatchNorm that the chosen statistics leave exactly as measured goes back to the
    # bit-exact identity placeholder (this is what keeps a noise-free delta/auto run bit for bit).
    for name in placeholders:
        if chosen == "delta" and _unchanged(noisy_run.stats[name], clean_run.stats[name]):
            new[name] = _placeholder_values(reference_params[name]["mean"].size)
    WriteBatchNormStatsPass(new)(proto)
    report = CalibrationReport(
        method=method,
        chosen=chosen,
        scores=scores,
        estimator=vars(estimator) if not hasattr(estimator, "__dataclass_fields__") else {
            k: getattr(estimator, k) for k in estimator.__dataclass_fields__},
        noise=noise.describe() if noise is not None else None,
        batches=batches,
        samples=samples,
        seconds=time.perf_counter() - started,
        inserted=list(split.details.get("inserted", [])),
        layers=layers,
    )
    record(proto, "calibrate", {
        "method": method, "chosen": chosen, "estimator": report.estimator, "batches": batches, "samples": samples,
        "noise": report.noise,
    })
    if output is not None:
        save_model(proto, output, external_data=external_data)
    report.seconds = time.perf_counter() - started
    return CalibrationResult(proto, report)


def _new_stats(method: str, names: Sequence[str], reference: Dict[str, Dict[str, np.ndarray]], noisy: Stats,
               clean: Optional[Stats]) -> Dict[str, Dict[str, np.ndarray]]:
    """The statistics each method writes: ``paper`` the noisy ones, ``delta`` the reference moved
    by the noise-induced shift, ``blend`` the average of the two (geometric for variances)."""
    out = {}
    for name in names:
        mean_n, var_n = noisy[name]
        if method == "paper":
            out[name] = {"mean": mean_n, "var": var_n}
            continue
        mean_c, var_c = clean[name]
        mean_d = reference[name]["mean"] + (mean_n - mean_c)
        var_d = reference[name]["var"] * _safe_ratio(var_n, var_c)
        if method == "delta":
            out[name] = {"mean": mean_d, "var": var_d}
        else:
            out[name] = {"mean": 0.5 * (mean_d + mean_n), "var": np.sqrt(var_d * var_n)}
    return out


def _unchanged(noisy: Tuple[np.ndarray, np.ndarray], clean: Tuple[np.ndarray, np.ndarray]) -> bool:
    return bool(np.array_equal(noisy[0], clean[0]) and np.array_equal(noisy[1], clean[1]))


def _placeholder_values(channels: int) -> Dict[str, np.ndarray]:
    return {"scale": np.ones(channels), "bias": np.zeros(channels), "mean": np.zeros(channels),
            "var": np.full(channels, 1.0 - PLACEHOLDER_EPSILON)}


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, 1 where the clean variance is zero (a dead channel stays as it was)."""
    out = np.ones_like(num)
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return out


def _shift(name: str, origin: str, before: Dict[str, np.ndarray], after: Dict[str, np.ndarray], eps: float) -> LayerShift:
    mean0, var0 = before["mean"], before["var"]
    mean1, var1 = np.asarray(after["mean"], np.float64), np.asarray(after["var"], np.float64)
    shift = float(np.mean(np.abs(mean1 - mean0) / np.sqrt(var0 + eps)))
    ratio = float(np.exp(np.mean(np.log((var1 + eps) / (var0 + eps)))))
    return LayerShift(name, origin, int(mean0.size), shift, ratio)


def _count_batches(data: DataLike, batch_size: int, max_batches: Optional[int]) -> Optional[int]:
    """Number of batches when it can be known without reading the data; None otherwise."""
    import os
    import zipfile
    from pathlib import Path

    total = None
    if batch_size < 1:  # iter_batches reports it
        return None
    if isinstance(data, (str, os.PathLike)) and Path(data).suffix == ".npz" and Path(data).is_file():
        try:
            with zipfile.ZipFile(data) as archive, archive.open(archive.namelist()[0]) as fh:
                version = np.lib.format.read_magic(fh)
                shape = (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(fh)[0]
            total = -(-shape[0] // batch_size)
        except (zipfile.BadZipFile, OSError, ValueError, IndexError):
            total = None
    elif isinstance(data, dict) and data:
        total = -(-len(next(iter(data.values()))) // batch_size)
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    return total
