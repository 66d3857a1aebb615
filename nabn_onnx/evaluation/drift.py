"""Accuracy against time since programming: what each remedy keeps of a drifting chip.

For each chip (``seed``) and each time ``t`` since programming, the device model (PCM by
default, :mod:`nabn_onnx.noise`) gives the weights at ``t``: the programming noise and the
drift coefficients are the chip's and fixed, only the drift and the accumulated read noise
change with ``t``. Five ways to serve that chip are scored on labelled test data:

* **vanilla**: the model as trained, on the chip at ``t``;
* **GDC**: aihwkit's global drift compensation (one output scale per layer, read out
  against the just-programmed weights);
* **NaBN once**: BatchNorm statistics calibrated once, at the first time in the list
  (programming time), then left alone while the chip drifts;
* **NaBN once + GDC**: the same statistics, with global drift compensation on the chip;
* **NaBN each**: recalibrated at every ``t`` (a chip that can afford a calibration pass
  whenever it is read);
* **dynamic**: :class:`~nabn_onnx.calibration.NabnSession` starting from the NaBN-once
  statistics and updating them while it serves: it first serves the calibration data
  ``warmup`` times as unlabelled traffic, then the test data, on the chip at ``t`` (with
  the device's ``read_per_draw``, a fresh read noise every batch); its accuracy is that of
  the test batches as served.

The clean model's accuracy is the ceiling.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
from onnx import ModelProto

from ..api import split
from ..calibration import DEFAULT_ESTIMATOR, Estimator, NabnSession, TemporalNoise, calibrate
from ..data import DataLike, input_specs, iter_batches, replayable
from ..errors import NabnError
from ..model import ModelLike, load_model
from ..noise import DeviceNoise, NoiseModel, PCMNoise
from ..passes import InjectWeightNoisePass
from ..passes.inject import noisy_tensor_names
from ..progress import Progress
from ..settings import with_options
from .drift_report import DEFAULT_TIMES, METHODS, DriftReport, parse_times, time_label
from .evaluate import evaluate
from .metrics import make_metric

__all__ = ["drift_sweep", "DriftConfig", "DriftReport", "parse_times", "time_label", "METHODS", "DEFAULT_TIMES"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftConfig:
    """The settings of a drift sweep (:func:`drift_sweep`), or its flat keywords.

    Attributes:
        device: the device model, a :class:`~nabn_onnx.noise.DeviceNoise` (its ``t_inference``,
            ``seed`` and ``compensation`` are set per chip and time); PCM with aihwkit's
            defaults when None.
        times: seconds since programming; the first is when NaBN-once calibrates.
        seeds: number of chips ``K`` (seeds ``0..K-1``) or the seeds.
        method: calibration method (see :func:`~nabn_onnx.calibrate`).
        metric: a one-number metric name (``"top1"``, ``"top5"``, ...).
        momentum: NabnSession momentum for the dynamic column.
        warmup: passes over the calibration data the dynamic session serves before the test data.
        estimator: how calibration combines batch statistics.
        batch_size: samples per batch.
        calib_batches: calibrate on at most this many batches.
        providers: onnxruntime execution providers.
    """

    device: Optional[NoiseModel] = None
    times: Sequence[float] = DEFAULT_TIMES
    seeds: Union[int, Sequence[int]] = 3
    method: str = "auto"
    metric: str = "top1"
    momentum: float = 0.9
    warmup: int = 2
    estimator: Estimator = DEFAULT_ESTIMATOR
    batch_size: int = 64
    calib_batches: Optional[int] = None
    providers: Optional[Tuple[str, ...]] = None

    @classmethod
    def build(cls, config: Optional[DriftConfig], options: Dict[str, Any], call: str = "drift_sweep") -> DriftConfig:
        """``config`` (defaults if None) with the flat keyword ``options`` (its fields) filled in."""
        return with_options(config if config is not None else cls(), options, call)


def _with_weights(model: ModelProto, source: ModelProto, names: Sequence[str]) -> ModelProto:
    """A copy of ``model`` whose initializers ``names`` hold ``source``'s values."""
    out = copy.deepcopy(model)
    values = {t.name: t for t in source.graph.initializer if t.name in set(names)}
    for tensor in out.graph.initializer:
        if tensor.name in values:
            tensor.CopyFrom(values[tensor.name])
    return out


def _without_inject_record(model: ModelProto) -> ModelProto:
    keep = [p for p in model.metadata_props if p.key != "nabn.inject"]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    return model


def _serve(
    model: ModelProto, chip: DeviceNoise, calib, test, metric, momentum: float, warmup: int, batch_size: int, providers
) -> float:
    """Dynamic calibration while serving: warm-up traffic, then the test set, scored as served."""
    session = NabnSession(model, momentum=momentum, noise=TemporalNoise(chip), providers=providers)
    specs = input_specs(model)
    output = session.get_outputs()[0].name
    for _ in range(warmup):
        for batch in iter_batches(calib, specs, batch_size=batch_size, min_batch=2):
            session.run([output], batch.feeds)
    scorer = make_metric(metric)
    for batch in iter_batches(test, specs, batch_size=batch_size, min_batch=2):
        (logits,) = session.run([output], batch.feeds)
        scorer.update(logits, batch.labels)
    result = scorer.result()
    if isinstance(result, dict):
        raise NabnError(f"drift needs a metric that gives one number, got {sorted(result)}")
    return float(result)


def drift_sweep(
    model: ModelLike,
    calib: DataLike,
    test: DataLike,
    config: Optional[DriftConfig] = None,
    *,
    show_progress: bool = False,
    **options: Any,
) -> DriftReport:
    """Accuracy of vanilla, GDC, NaBN-once (with and without GDC), NaBN-each and dynamic NaBN over time.

    Args:
        model: path or ``ModelProto`` (BatchNorm kept or fused; not modified).
        calib: calibration data (no labels needed).
        test: labelled test data.
        config: the sweep's settings (:class:`DriftConfig`), or give them as keywords.
        show_progress: progress bar over (seed, time).
        **options: :class:`DriftConfig`'s fields as flat keywords: ``device``, ``times``,
            ``seeds``, ``method``, ``metric``, ``momentum``, ``warmup``, ``estimator``,
            ``batch_size``, ``calib_batches``, ``providers``.

    Returns:
        A :class:`DriftReport`.

    Raises:
        NabnError: not a device model, a time the device was not measured at, bad data or settings.
        TypeError: an unknown keyword.
    """
    config = DriftConfig.build(config, dict(options))
    device, times, seeds, method, metric = config.device, config.times, config.seeds, config.method, config.metric
    momentum, warmup, estimator = config.momentum, config.warmup, config.estimator
    batch_size, calib_batches, providers = config.batch_size, config.calib_batches, config.providers
    started = time.perf_counter()
    device = device if device is not None else PCMNoise()
    if not isinstance(device, DeviceNoise):
        raise NabnError(f"drift needs a device model (pcm, rram, rram-cmo, ideal), got {device.kind}")
    times = [float(t) for t in times]
    if not times:
        raise NabnError("give at least one time")
    for t in times:  # the device checks each time (RRAM accepts only its measured ones)
        dataclasses.replace(device, t_inference=t)
    seed_list = list(range(seeds)) if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
    if not seed_list:
        raise NabnError("give at least one seed")
    if warmup < 0:
        raise NabnError(f"warmup must be >= 0, got {warmup}")
    calib, test = replayable(calib), replayable(test)
    proto = load_model(copy.deepcopy(model) if isinstance(model, ModelProto) else model)
    weights = noisy_tensor_names(proto, include_bias=device.include_bias)
    if not weights:
        raise NabnError("the model has no analog layer with a constant weight: nothing to put noise on")

    def score(m: ModelProto) -> float:
        value = evaluate(m, test, metric, batch_size=batch_size, providers=providers)
        if isinstance(value, dict):
            raise NabnError(f"drift needs a metric that gives one number, got {sorted(value)}")
        return value

    clean = score(proto)
    prepared = split(proto, calib, batch_size=batch_size, max_batches=calib_batches, providers=providers).model
    settings = {k: v for k, v in device.describe().items() if k not in ("seed", "t_inference", "compensation")}
    report = DriftReport(_name(model, proto), metric, settings, clean, times[0], momentum, warmup)
    timing = dict.fromkeys(("vanilla", "gdc", "calibrate", "nabn", "dynamic"), 0.0)

    def recalibrate(noise: DeviceNoise) -> ModelProto:
        return calibrate(
            prepared,
            calib,
            noise=noise,
            method=method,
            estimator=estimator,
            batch_size=batch_size,
            max_batches=calib_batches,
            providers=providers,
        ).model

    with Progress("drift", len(seed_list) * len(times), enabled=show_progress) as bar:
        for seed in seed_list:
            base = dataclasses.replace(device, seed=seed, compensation="none")
            t0 = time.perf_counter()
            once = recalibrate(dataclasses.replace(base, t_inference=times[0]))
            timing["calibrate"] += time.perf_counter() - t0
            # the NaBN-once statistics with the clean weights, for the serving session
            once_clean = _without_inject_record(_with_weights(once, prepared, weights))
            for t in times:
                chip = dataclasses.replace(base, t_inference=t)
                row: Dict[str, float] = {"t": t, "seed": seed}
                t0 = time.perf_counter()
                noisy = InjectWeightNoisePass(chip)(copy.deepcopy(proto)).model
                row["vanilla"] = score(noisy)
                t1 = time.perf_counter()
                gdc_chip = dataclasses.replace(chip, compensation="global")
                gdc = InjectWeightNoisePass(gdc_chip)(copy.deepcopy(proto)).model
                row["gdc"] = score(gdc)
                t2 = time.perf_counter()
                each = once if t == times[0] else recalibrate(chip)
                t3 = time.perf_counter()
                chip_split = InjectWeightNoisePass(chip)(copy.deepcopy(prepared)).model
                row["nabn_once"] = score(_with_weights(once, chip_split, weights))
                chip_gdc = InjectWeightNoisePass(dataclasses.replace(chip, compensation="global"))(
                    copy.deepcopy(prepared)
                ).model
                row["nabn_once_gdc"] = score(_with_weights(once, chip_gdc, weights))
                row["nabn_each"] = score(each)
                t4 = time.perf_counter()
                row["dynamic"] = _serve(once_clean, chip, calib, test, metric, momentum, warmup, batch_size, providers)
                t5 = time.perf_counter()
                timing["vanilla"] += t1 - t0
                timing["gdc"] += t2 - t1
                timing["calibrate"] += t3 - t2
                timing["nabn"] += t4 - t3
                timing["dynamic"] += t5 - t4
                report.rows.append(row)
                logger.info("seed %d t=%s: %s", seed, time_label(t), row)
                bar.update()
    timing["total"] = time.perf_counter() - started
    report.seconds = timing
    return report


def _name(model: ModelLike, proto: ModelProto) -> str:
    if not isinstance(model, (str, os.PathLike)):  # a ModelProto or an onnx_graphsurgeon.Graph
        return proto.graph.name or "model"
    return Path(model).stem
