"""Robustness sweeps: accuracy of vanilla and NaBN models over noise scales and chip instances.

For every noise scale ``eta`` and chip ``seed`` the sweep simulates one chip with the
paper's noise model and measures

* **vanilla**: the model with that chip's noisy weights, BatchNorm statistics untouched;
* **nabn**: the same chip (same noisy weights) after :func:`~nabn_onnx.calibrate` on the
  calibration data, with the chosen method.

Both are evaluated on the test data, as in the paper's Tables I-II. The fused BatchNorms
of the model are split out once, with clean statistics measured once, so each chip costs
one calibration pass.

Sessions: by default each chip's vanilla and NaBN models get their own onnxruntime
session (:data:`~nabn_onnx.runtime.SERVE`), so onnxruntime constant-folds and pre-packs the
weights and fuses Conv+BatchNorm as it would on a deployed model. With
``reuse_sessions=True`` one session serves every vanilla chip and another every NaBN chip:
the analog weights (and the BatchNorm parameters) become *overridable initializers*, graph
inputs with stored defaults, fed per chip. That saves the session builds but every run
then computes with non-constant weights (no pre-packing, no fusion). Measured on the
sample models (``tools/bench_sweep.py``), a fed batch costs about twice a constant-weight
batch while a session build costs less than one batch, so reuse made the sweep's
evaluations 1.9 (ResNet) to 3.6 (MobileNet) times slower; per-chip sessions are the default.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
from onnx import ModelProto, numpy_helper

from ..api import split
from ..calibration import DEFAULT_ESTIMATOR, Estimator, calibrate
from ..data import DataLike, replayable
from ..errors import NabnError
from ..graph import batchnorm_nodes
from ..io import ModelLike, atomic_write_text, load_model
from ..noise import make_noise
from ..passes.inject import InjectWeightNoisePass, noisy_tensor_names
from ..progress import Progress
from .evaluate import Evaluator, OutputLike
from .metrics import IGNORE_INDEX, MetricLike

__all__ = ["sweep", "SweepReport", "parse_floats"]

logger = logging.getLogger(__name__)

_ROW_KEYS = ("noise", "eta", "seed", "vanilla", "nabn")


def parse_floats(text: str, what: str = "value") -> List[float]:
    """``"0.02,0.04"`` -> ``[0.02, 0.04]``; a one-line NabnError on anything else."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise NabnError(f"{what}s must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise NabnError(f"no {what} given")
    return values


def _spread(values: Sequence[float]) -> Dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
        "min": float(array.min()),
        "max": float(array.max()),
    }


@dataclass
class SweepReport:
    """Results of a sweep.

    Attributes:
        model: the model's name (file stem or graph name).
        metric: the metric's name.
        method: calibration method.
        settings: the noise settings shared by every chip (kind, sigma_t, sigma_s, ...).
        clean: the metric of the clean model.
        rows: one ``{"noise", "eta", "seed", "vanilla", "nabn"}`` per chip.
        seconds: wall time, and its parts (``"calibrate"``, ``"vanilla"``, ``"nabn"``, ``"sessions"``).
        reuse_sessions: whether chips shared sessions.
    """

    model: str
    metric: str
    method: str
    settings: Dict[str, object]
    clean: float
    rows: List[Dict[str, object]] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)
    reuse_sessions: bool = False

    def by_eta(self) -> List[Dict[str, object]]:
        """Per (noise, eta): chip count and mean, std (sample, ddof=1), min and max of vanilla and nabn."""
        groups: Dict[tuple, List[Dict[str, object]]] = {}
        for row in self.rows:
            groups.setdefault((row["noise"], row["eta"]), []).append(row)
        out = []
        for (noise, eta), rows in groups.items():
            entry: Dict[str, object] = {"noise": noise, "eta": eta, "chips": len(rows)}
            for key in ("vanilla", "nabn"):
                entry.update({f"{key}_{k}": v for k, v in _spread([r[key] for r in rows]).items()})
            out.append(entry)
        return out

    def to_dict(self) -> Dict[str, object]:
        return {
            "model": self.model,
            "metric": self.metric,
            "method": self.method,
            "settings": self.settings,
            "clean": self.clean,
            "rows": self.rows,
            "by_eta": self.by_eta(),
            "reuse_sessions": self.reuse_sessions,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([*_ROW_KEYS, "clean"])
        for row in self.rows:
            writer.writerow([*(row[k] for k in _ROW_KEYS), self.clean])
        return buffer.getvalue()

    def table(self, label: Optional[str] = None) -> str:
        """A markdown table like the paper's Tables I-II: a vanilla and a +NaBN row, one column per eta."""
        stats = self.by_eta()
        label = label or self.model
        header = "| Model | " + " | ".join(f"{s['noise'].upper()} η={s['eta']:g}" for s in stats) + " |"
        lines = [header, "|---|" + "---:|" * len(stats)]
        for key, name in (("vanilla", label), ("nabn", f"{label}+NaBN")):
            cells = [f"{100 * s[f'{key}_mean']:.2f} ± {100 * s[f'{key}_std']:.2f}" for s in stats]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        chips = sorted({r["seed"] for r in self.rows})
        s = self.settings
        if "sigma_t" in s:
            how = (f"(sigma_t = {s['sigma_t']}·eta, sigma_s = {s['sigma_s']}, temporal draw per {s['temporal']})")
        else:  # a device model: its own parameters
            how = "(" + ", ".join(f"{k} = {v}" for k, v in s.items() if k not in ("noise", "eta", "seed")) + ")"
        lines = [
            f"# Robustness sweep: {self.model}", "",
            f"{self.metric} (%) under {str(s['noise']).upper()} noise {how}, {len(chips)} chip(s) per eta, "
            f"mean ± std over chips; NaBN method '{self.method}'. Clean model: {100 * self.clean:.2f}%.", "",
            self.table(), "",
        ]
        return "\n".join(lines)

    def summary(self) -> str:
        """One line with the numbers."""
        stats = self.by_eta()
        worst = min(stats, key=lambda s: s["vanilla_mean"])
        return (
            f"swept {len(stats)} eta(s) x {len(self.rows) // max(len(stats), 1)} chip(s) of {self.model}: clean "
            f"{100 * self.clean:.2f}%, at {worst['noise']} eta={worst['eta']:g} vanilla {100 * worst['vanilla_mean']:.2f}% "
            f"vs NaBN {100 * worst['nabn_mean']:.2f}% ({self.metric}), in {self.seconds.get('total', 0.0):.1f}s"
        )

    def write(self, path: Union[str, Path]) -> Path:
        """Write as ``.json``, ``.md`` or ``.csv`` (by suffix), atomically."""
        path = Path(path)
        writers = {".json": self.to_json, ".md": self.to_markdown, ".csv": self.to_csv}
        if path.suffix not in writers:
            raise NabnError(f"report must end in .json, .md or .csv, got {path.name}")
        return atomic_write_text(path, writers[path.suffix]())


def _bn_param_names(model: ModelProto) -> List[str]:
    inits = {t.name for t in model.graph.initializer}
    names: List[str] = []
    for node in batchnorm_nodes(model):
        names += [n for n in node.input[1:5] if n in inits and n not in names]
    return names


def _structure(model: ModelProto) -> List[tuple]:
    return [(n.op_type, tuple(n.input), tuple(n.output)) for n in model.graph.node]


def _initializer_values(model: ModelProto, names: Iterable[str]) -> Dict[str, np.ndarray]:
    wanted = set(names)
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in wanted}


class _ChipRunner:
    """Evaluates chip variants of one graph: one session fed per chip, or a session per chip."""

    def __init__(self, reuse: bool, names: Callable[[ModelProto], List[str]], output: OutputLike, providers,
                 eval_options):
        self.reuse, self.names_of, self.output, self.providers = reuse, names, output, providers
        self.names: List[str] = []
        self.eval_options = eval_options
        self.evaluator: Optional[Evaluator] = None
        self.structure: Optional[List[tuple]] = None
        self.session_seconds = 0.0

    def _build(self, model: ModelProto, names: Sequence[str]) -> Evaluator:
        started = time.perf_counter()
        evaluator = Evaluator(model, output=self.output, overridable=names, providers=self.providers)
        self.session_seconds += time.perf_counter() - started
        return evaluator

    def run(self, model: ModelProto, test: DataLike) -> float:
        """Evaluate ``model``, which differs from earlier ones only in the values of ``names``."""
        if not self.reuse:
            return _scalar(self._build(model, ()).run(test, **self.eval_options).value)
        if self.evaluator is None:
            self.names = self.names_of(model)
            self.evaluator = self._build(model, self.names)
            self.structure = _structure(model)
        elif _structure(model) != self.structure:
            logger.warning("a chip's graph differs from the first chip's; evaluating it with its own session")
            return _scalar(self._build(model, ()).run(test, **self.eval_options).value)
        feeds = _initializer_values(model, self.names)
        return _scalar(self.evaluator.run(test, feeds=feeds, **self.eval_options).value)


def _scalar(value) -> float:
    if isinstance(value, dict):
        raise NabnError(f"a sweep needs a metric that gives one number, got {sorted(value)}")
    return float(value)


def _model_name(model: ModelLike, proto: ModelProto) -> str:
    if isinstance(model, ModelProto):
        return proto.graph.name or "model"
    return Path(model).stem


def sweep(
    model: ModelLike,
    calib: DataLike,
    test: DataLike,
    *,
    noise: str = "mul",
    etas: Sequence[float],
    seeds: Union[int, Sequence[int]] = 5,
    method: str = "auto",
    metric: MetricLike = "top1",
    sigma_t: float = 0.2,
    sigma_s: float = 0.1,
    temporal: str = "element",
    include_bias: bool = False,
    estimator: Estimator = DEFAULT_ESTIMATOR,
    batch_size: int = 64,
    calib_batches: Optional[int] = None,
    test_batches: Optional[int] = None,
    output: OutputLike = None,
    ignore_index: Optional[int] = IGNORE_INDEX,
    ignore_background: Optional[bool] = None,
    reuse_sessions: bool = False,
    providers: Optional[Sequence[str]] = None,
    show_progress: bool = False,
    device: Optional[Mapping[str, object]] = None,
) -> SweepReport:
    """Accuracy of vanilla and NaBN models over noise scales and simulated chips.

    Args:
        model: path or ``ModelProto`` (BatchNorm kept or fused; not modified).
        calib: calibration data (no labels needed).
        test: labelled test data.
        noise: ``"mul"`` or ``"add"``.
        etas: noise scales.
        seeds: number of chips ``K`` (seeds ``0..K-1``) or the seeds themselves.
        method: calibration method, ``"paper"``, ``"delta"`` or ``"auto"`` (see :func:`~nabn_onnx.calibrate`).
        metric: a one-number metric (``"top1"``, ``"top5"``, ``"miou"``, ``"pixel-acc"``,
            a :class:`~nabn_onnx.evaluation.metrics.Metric` or a callable).
        sigma_t: temporal spread relative to eta.
        sigma_s: spatial spread.
        temporal: ``"element"`` or ``"layer"`` (see :mod:`nabn_onnx.noise`).
        include_bias: also put noise on analog biases.
        estimator: how calibration combines batch statistics.
        batch_size: samples per batch for file and dict data.
        calib_batches: calibrate on at most this many batches.
        test_batches: evaluate on at most this many batches.
        output: model output the metric reads (index or name).
        ignore_index: segmentation label never counted.
        ignore_background: drop background pixels in segmentation metrics.
        reuse_sessions: one session for all chips, weights fed per chip, instead of a
            session per chip (the default; see the module docstring for why).
        providers: onnxruntime execution providers.
        show_progress: draw a progress bar over the (eta, seed) grid.
        device: parameters of a device model (``noise`` one of ``"pcm"``, ``"rram"``,
            ``"rram-cmo"``, ``"ideal"``; ``etas`` then scale its noise), e.g. ``{"t_inference": 3600}``.

    Returns:
        A :class:`SweepReport` with one row per (eta, seed).

    Raises:
        NabnError: bad model, data or settings (one-line message).
    """
    started = time.perf_counter()
    seed_list = list(range(seeds)) if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
    if not seed_list:
        raise NabnError("a sweep needs at least one seed")
    if not etas:
        raise NabnError("a sweep needs at least one eta")
    extra = dict(device or {})
    settings = make_noise(noise, float(etas[0]), sigma_t=sigma_t, sigma_s=sigma_s, temporal=temporal,
                          include_bias=include_bias, **extra).describe()
    noises = [make_noise(noise, float(eta), sigma_t=sigma_t, sigma_s=sigma_s, seed=seed, temporal=temporal,
                         include_bias=include_bias, **extra) for eta in etas for seed in seed_list]
    calib, test = replayable(calib), replayable(test)
    proto = load_model(copy.deepcopy(model) if isinstance(model, ModelProto) else model)
    weights = noisy_tensor_names(proto, include_bias=include_bias)
    if not weights:
        raise NabnError("the model has no analog layer with a constant weight: nothing to put noise on")
    eval_options = dict(metric=metric, batch_size=batch_size, max_batches=test_batches, ignore_index=ignore_index,
                        ignore_background=ignore_background)
    vanilla = _ChipRunner(reuse_sessions, lambda _: weights, output, providers, eval_options)
    clean = vanilla.run(proto, test)

    prepared = split(proto, calib, batch_size=batch_size, max_batches=calib_batches, providers=providers).model
    nabn = _ChipRunner(reuse_sessions, lambda first: weights + _bn_param_names(first), output, providers,
                       eval_options)
    timing = {"calibrate": 0.0, "vanilla": 0.0, "nabn": 0.0}
    report = SweepReport(_model_name(model, proto), _metric_name(metric), method, settings, clean,
                         reuse_sessions=reuse_sessions)
    with Progress(f"sweep {noise}", len(noises), enabled=show_progress) as bar:
        for chip in noises:
            t0 = time.perf_counter()
            noisy = InjectWeightNoisePass(chip)(copy.deepcopy(proto)).model
            vanilla_value = vanilla.run(noisy, test)
            t1 = time.perf_counter()
            calibrated = calibrate(prepared, calib, noise=chip, method=method, estimator=estimator,
                                   batch_size=batch_size, max_batches=calib_batches, providers=providers).model
            t2 = time.perf_counter()
            nabn_value = nabn.run(calibrated, test)
            t3 = time.perf_counter()
            timing["vanilla"] += t1 - t0
            timing["calibrate"] += t2 - t1
            timing["nabn"] += t3 - t2
            report.rows.append({"noise": chip.kind, "eta": chip.eta, "seed": chip.seed,
                                "vanilla": vanilla_value, "nabn": nabn_value})
            bar.update()
    timing["sessions"] = vanilla.session_seconds + nabn.session_seconds
    timing["total"] = time.perf_counter() - started
    report.seconds = timing
    logger.info("%s", report.summary())
    return report


def _metric_name(metric: MetricLike) -> str:
    if isinstance(metric, str):
        return metric
    return getattr(metric, "name", None) or getattr(metric, "__name__", None) or type(metric).__name__

