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
import csv
import dataclasses
import io
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
from onnx import ModelProto

from ..api import split
from ..calibration import DEFAULT_ESTIMATOR, Estimator, NabnSession, TemporalNoise, calibrate
from ..data import DataLike, input_specs, iter_batches, replayable
from ..errors import NabnError
from ..model import ModelLike, atomic_write_text, load_model
from ..noise import DeviceNoise, NoiseModel, PCMNoise
from ..passes import InjectWeightNoisePass
from ..passes.inject import noisy_tensor_names
from ..progress import Progress
from .evaluate import evaluate
from .metrics import make_metric

__all__ = ["drift_sweep", "DriftReport", "parse_times", "METHODS", "DEFAULT_TIMES"]

logger = logging.getLogger(__name__)

#: Column keys and their labels, in table order.
METHODS = {
    "vanilla": "vanilla",
    "gdc": "GDC",
    "nabn_once": "NaBN once",
    "nabn_once_gdc": "NaBN once + GDC",
    "nabn_each": "NaBN each",
    "dynamic": "dynamic NaBN",
}
#: 1 s, 1 h, 1 day, 1 month (30 days), 1 year (365 days).
DEFAULT_TIMES = (1.0, 3600.0, 86400.0, 30 * 86400.0, 365 * 86400.0)
_UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0, "mo": 30 * 86400.0, "y": 365 * 86400.0}


def parse_times(text: str) -> List[float]:
    """``"1s,1h,1d,1mo,1y"`` (or plain seconds) to seconds."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        match = re.fullmatch(r"([0-9.eE+-]+)\s*(s|min|h|d|w|mo|y)?", item)
        try:
            value = float(match.group(1)) * _UNITS[match.group(2) or "s"] if match else None
        except ValueError:
            value = None
        if value is None or not np.isfinite(value) or value < 0:
            raise NabnError(f"times must be numbers of seconds or like 1h, 1d, 1mo, 1y; got {item!r}")
        out.append(value)
    if not out:
        raise NabnError("give at least one time")
    return out


def time_label(seconds: float) -> str:
    """``3600`` to ``"1h"``: the largest unit that divides it, else seconds."""
    for unit in ("y", "mo", "d", "h", "min"):
        if seconds >= _UNITS[unit] and (seconds / _UNITS[unit]).is_integer():
            return f"{seconds / _UNITS[unit]:g}{unit}"
    return f"{seconds:g}s"


@dataclass
class DriftReport:
    """One row per (time, seed) with the metric of every method.

    Attributes:
        model: model name.
        metric: metric name.
        device: the device settings (without time and seed).
        clean: metric of the clean model.
        program_time: when NaBN-once was calibrated (seconds).
        rows: ``{"t", "seed", "vanilla", "gdc", "nabn_once", "nabn_once_gdc", "nabn_each", "dynamic"}``.
        seconds: wall time per phase.
    """

    model: str
    metric: str
    device: Dict[str, object]
    clean: float
    program_time: float
    momentum: float
    warmup: int
    rows: List[Dict[str, float]] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, payload: Dict[str, Any]) -> DriftReport:
        """The report back from :meth:`to_dict` (a ``.json`` report)."""
        keys = ("model", "metric", "device", "clean", "program_time", "momentum", "warmup", "rows", "seconds")
        return cls(**{k: payload[k] for k in keys})

    def by_time(self) -> List[Dict[str, float]]:
        """Per time: mean and std (over chips) of every method."""
        out = []
        for t in sorted({r["t"] for r in self.rows}):
            rows = [r for r in self.rows if r["t"] == t]
            entry: Dict[str, float] = {"t": t, "chips": len(rows)}
            for key in METHODS:
                values = np.array([r[key] for r in rows], dtype=float)
                entry[f"{key}_mean"] = float(values.mean())
                entry[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            out.append(entry)
        return out

    def table(self) -> str:
        """Markdown: one row per time, one column per method (percent, mean ± std over chips)."""
        lines = ["| time since programming | " + " | ".join(METHODS.values()) + " |", "|---|" + "---:|" * len(METHODS)]
        for s in self.by_time():
            cells = [f"{100 * s[f'{k}_mean']:.2f} ± {100 * s[f'{k}_std']:.2f}" for k in METHODS]
            lines.append(f"| {time_label(s['t'])} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """Markdown: the device, the chips and the protocol, then :meth:`table`."""
        d = self.device
        settings = ", ".join(f"{k} = {v}" for k, v in d.items() if k not in ("noise", "seed", "t_inference"))
        chips = len({r["seed"] for r in self.rows})
        return "\n".join(
            [
                f"# Drift: {self.model}",
                "",
                (
                    f"{self.metric} (%) on a {str(d['noise']).upper()} chip ({settings}), {chips} chip(s), "
                    "mean ± std over "
                    f"chips. NaBN once: calibrated at {time_label(self.program_time)}; dynamic: NabnSession, momentum "
                    f"{self.momentum}, {self.warmup} warm-up pass(es) over the calibration data. Clean model: "
                    f"{100 * self.clean:.2f}%."
                ),
                "",
                self.table(),
                "",
            ]
        )

    def to_dict(self) -> Dict[str, object]:
        """JSON-ready: the fields, plus :meth:`by_time`."""
        return {
            "model": self.model,
            "metric": self.metric,
            "device": self.device,
            "clean": self.clean,
            "program_time": self.program_time,
            "momentum": self.momentum,
            "warmup": self.warmup,
            "rows": self.rows,
            "by_time": self.by_time(),
            "seconds": self.seconds,
        }

    def write(self, path: Union[str, Path]) -> Path:
        """``.json``, ``.md`` or ``.csv`` (one line per chip and time), written atomically."""
        path = Path(path)
        if path.suffix == ".md":
            text = self.to_markdown()
        elif path.suffix == ".csv":
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=["t", "seed", *METHODS], lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.rows)
            text = buffer.getvalue()
        else:
            text = json.dumps(self.to_dict(), indent=2) + "\n"
        atomic_write_text(path, text)
        return path

    def summary(self) -> str:
        """One line: the clean metric and every method at the last time."""
        last = self.by_time()[-1]
        parts = ", ".join(f"{label} {100 * last[f'{k}_mean']:.2f}%" for k, label in METHODS.items())
        return (
            f"drift of {self.model} over {len(self.by_time())} time(s) x {last['chips']} chip(s): clean "
            f"{100 * self.clean:.2f}%; at {time_label(last['t'])}: {parts} ({self.metric}), in "
            f"{self.seconds.get('total', 0.0):.1f}s"
        )

    def plot(self, path: Union[str, Path], title: Optional[str] = None) -> Path:
        """Metric against time since programming (log axis), one line per method, chips as a band."""
        from .plots import pyplot, save_figure

        plt = pyplot()
        stats = self.by_time()
        t = np.array([s["t"] for s in stats])
        fig, ax = plt.subplots(figsize=(7, 4.2))
        styles = ("o-", "s--", "v-", "^--", "D-", "x:")  # methods often coincide: tell them apart
        for (key, label), style in zip(METHODS.items(), styles):
            mean = 100 * np.array([s[f"{key}_mean"] for s in stats])
            std = 100 * np.array([s[f"{key}_std"] for s in stats])
            (line,) = ax.plot(t, mean, style, label=label, markersize=5, alpha=0.85)
            ax.fill_between(t, mean - std, mean + std, color=line.get_color(), alpha=0.15)
        ax.axhline(100 * self.clean, color="black", linestyle="--", linewidth=1, label="clean")
        ax.set_xscale("log")
        ax.set_xticks(t)
        ax.set_xticklabels([time_label(v) for v in t])
        ax.set_xlabel("time since programming")
        ax.set_ylabel(f"{self.metric} (%)")
        ax.set_title(title or f"{self.model} on {str(self.device['noise']).upper()}: accuracy over time")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        try:
            return save_figure(fig, path)
        finally:
            plt.close(fig)


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
    *,
    device: Optional[NoiseModel] = None,
    times: Sequence[float] = DEFAULT_TIMES,
    seeds: Union[int, Sequence[int]] = 3,
    method: str = "auto",
    metric: str = "top1",
    momentum: float = 0.9,
    warmup: int = 2,
    estimator: Estimator = DEFAULT_ESTIMATOR,
    batch_size: int = 64,
    calib_batches: Optional[int] = None,
    providers: Optional[Sequence[str]] = None,
    show_progress: bool = False,
) -> DriftReport:
    """Accuracy of vanilla, GDC, NaBN-once (with and without GDC), NaBN-each and dynamic NaBN over time.

    Args:
        model: path or ``ModelProto`` (BatchNorm kept or fused; not modified).
        calib: calibration data (no labels needed).
        test: labelled test data.
        device: the device model, a :class:`~nabn_onnx.noise.DeviceNoise` (its ``t_inference``,
            ``seed`` and ``compensation`` are set here); PCM with aihwkit's defaults when None.
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
        show_progress: progress bar over (seed, time).

    Returns:
        A :class:`DriftReport`.
    """
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
