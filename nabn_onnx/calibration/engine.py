"""Calibration: re-estimate BatchNorm statistics of a (noisy) model on calibration data.

``calibrate`` runs the whole job: load, split fused BatchNorms back out, measure the clean
reference statistics the inserted BatchNorms need, put one chip's noise on the weights,
measure the noisy statistics with the paper's train-mode semantics, write them back.

Methods:

* ``"paper"`` (Algorithm 1): every BatchNorm normalizes each batch with the batch's own
  statistics while the batches stream through (so each layer is measured under the
  recalibrated layers before it) and its running statistics are replaced by the estimate.
* ``"delta"``: keep each BatchNorm's reference statistics and apply only the shift the
  noise causes, measured the same way on the clean and the noisy model:
  ``mean' = mean + (mu_noisy - mu_clean)``, ``var' = var * v_noisy / v_clean``. Without
  noise it changes nothing, bit for bit; it needs the clean weights.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from onnx import ModelProto

from ..data import DataLike, input_specs, iter_batches
from ..errors import NabnError, NothingToDoError
from ..graph import batchnorm_nodes, find_analog_layers
from ..io import ModelLike, load_model, read_record, record, save_model
from ..noise import NoiseModel
from ..passes.inject import InjectWeightNoisePass
from ..passes.split import PLACEHOLDER_EPSILON, SplitBatchNormPass
from ..passes.write_stats import WriteBatchNormStatsPass, bn_epsilon, read_bn_params
from ..progress import Progress
from ..runtime import MEASURE, make_session
from .statsgraph import ExposeBatchNormStatsPass
from .stats import DEFAULT_ESTIMATOR, Estimator

__all__ = ["calibrate", "collect_stats", "CalibrationResult", "CalibrationReport", "LayerShift", "METHODS",
           "name_batchnorms", "measure_inserted"]

logger = logging.getLogger(__name__)

METHODS = ("paper", "delta")
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


def collect_stats(
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
) -> Tuple[Stats, int, int]:
    """Stream ``data`` through ``model`` and estimate per-channel statistics of BatchNorm inputs.

    ``train`` BatchNorms run in training mode (normalize with batch statistics), ``tap``
    BatchNorms stay in eval mode; both are measured. ``model`` is not modified.

    Returns:
        ``({bn name: (mean, var)}, batches, samples)``.
    """
    stats_model = copy.deepcopy(model)
    expose = ExposeBatchNormStatsPass(train=train, tap=tap, keep_outputs=False)
    expose(stats_model)
    outputs = expose.outputs
    session = make_session(stats_model, optimization=MEASURE, providers=providers)
    del stats_model
    fetch: List[str] = []
    for stat in outputs.values():
        fetch += [stat.mean, stat.var, stat.shape]
    accumulators = {name: estimator.new() for name in outputs}
    batches = samples = 0
    for batch in iter_batches(data, input_specs(model), batch_size=batch_size, max_batches=max_batches, min_batch=2):
        values = dict(zip(fetch, session.run(fetch, batch.feeds)))
        for name, stat in outputs.items():
            shape = values[stat.shape]
            count = int(np.prod(shape, dtype=np.int64) // shape[1])
            accumulators[name].update(values[stat.mean], values[stat.var], count)
        batches += 1
        samples += batch.size
        if progress is not None:
            progress.update()
    return {name: acc.result() for name, acc in accumulators.items()}, batches, samples


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

    def to_dict(self) -> Dict[str, object]:
        return {
            "method": self.method,
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
        return (
            f"calibrated {len(self.layers)} BatchNorm layer(s) ({len(self.inserted)} inserted) with method "
            f"'{self.method}' on {self.batches} batch(es) / {self.samples} samples, {noise}{worst}, "
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
    method: str = "paper",
    estimator: Estimator = DEFAULT_ESTIMATOR,
    batch_size: int = 64,
    max_batches: Optional[int] = None,
    include: Optional[str] = None,
    exclude: Optional[str] = None,
    reference: Optional[ModelLike] = None,
    output=None,
    providers: Optional[Sequence[str]] = None,
    show_progress: bool = False,
) -> CalibrationResult:
    """Re-estimate the BatchNorm statistics of a model on a noisy chip.

    Args:
        model: path or ``ModelProto`` (not modified; a copy is calibrated).
        data: calibration data: an ``.npz`` path, a dict of arrays, an onnxruntime
            ``CalibrationDataReader`` or an iterable of feed dicts.
        noise: simulate this chip (the same noise ``inject`` writes with the same
            settings); None calibrates the model as given (already noisy, or the
            statistics come from a device).
        method: ``"paper"`` or ``"delta"`` (see the module docstring).
        estimator: how batch statistics are combined.
        batch_size: samples per batch for file and dict data.
        max_batches: use at most this many batches.
        include: regular expression of analog layer names to split (all by default).
        exclude: regular expression of analog layer names not to split.
        reference: the clean model, needed when ``model`` is already noisy and the clean
            statistics are not yet known (inserted placeholders, or ``method="delta"``).
        output: where to save the calibrated model (atomically); None to only return it.
        providers: onnxruntime execution providers.
        show_progress: draw a progress bar on a terminal.

    Returns:
        The calibrated model and a :class:`CalibrationReport`.

    Raises:
        NabnError: bad model, data or settings (one-line message).
    """
    started = time.perf_counter()
    if method not in METHODS:
        raise NabnError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
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
    names = [n.name for n in bns]
    eps_of = {n.name: bn_epsilon(n) for n in bns}
    inserted = set(read_record(proto, "inserted_bn", []) or [])
    before = {name: read_bn_params(proto, name) for name in names}
    placeholders = [name for name in names if name in inserted and _is_placeholder(before[name])]
    already_noisy = noise is None and read_record(proto, "inject") is not None
    clean = proto
    if reference is not None:
        clean = load_model(copy.deepcopy(reference) if isinstance(reference, ModelProto) else reference)
        SplitBatchNormPass(include=include, exclude=exclude)(clean)
        name_batchnorms(clean)
        if [n.name for n in batchnorm_nodes(clean)] != names:
            raise NabnError("the reference model's BatchNorms do not match the model's: give the same model before noise")
    elif (placeholders or method == "delta") and already_noisy:
        raise NabnError(
            "the model carries injected noise, so its clean statistics cannot be measured from it: pass the clean "
            "model as --reference, or calibrate the clean model with --noise"
        )
    passes = (1 if placeholders else 0) + (2 if method == "delta" else 1)
    total = passes * _count_batches(data, batch_size, max_batches)
    common = dict(estimator=estimator, batch_size=batch_size, max_batches=max_batches, providers=providers)
    with Progress("calibrating", total, enabled=show_progress) as bar:
        if placeholders:
            measure_inserted(proto, clean, placeholders, data, progress=bar, **common)
        reference_params = {name: read_bn_params(proto, name) for name in names}
        if method == "delta":
            clean_stats, _, _ = collect_stats(clean, data, train=names, progress=bar, **common)
        if noise is not None:
            InjectWeightNoisePass(noise)(proto)
        noisy_stats, batches, samples = collect_stats(proto, data, train=names, progress=bar, **common)
    if method == "paper":
        new = {name: {"mean": m, "var": v} for name, (m, v) in noisy_stats.items()}
    else:
        new = {}
        for name in names:
            ref_p = reference_params[name]
            (mn, vn), (mc, vc) = noisy_stats[name], clean_stats[name]
            new[name] = {"mean": ref_p["mean"] + (mn - mc), "var": ref_p["var"] * _safe_ratio(vn, vc)}
    WriteBatchNormStatsPass(new)(proto)
    layers = [
        _shift(name, "inserted" if name in inserted else "original", reference_params[name], new[name], eps_of[name])
        for name in names
    ]
    report = CalibrationReport(
        method=method,
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
        "method": method, "estimator": report.estimator, "batches": batches, "samples": samples,
        "noise": report.noise,
    })
    if output is not None:
        save_model(proto, output)
    report.seconds = time.perf_counter() - started
    return CalibrationResult(proto, report)


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
