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

Scale: a sweep is a :class:`SweepPlan` (the chips: one :class:`ChipTask` per noise kind,
eta and seed) measured with one :class:`SweepSettings`. :func:`run_sweep` splits the model
once, then hands every task to an executor (:mod:`nabn_onnx.evaluation.executors`: serial,
local processes, Ray), which runs the one function :func:`run_chip` wherever it runs, so a
chip's numbers do not depend on where it ran. Finished chips stream back in the order they
finish and are appended to a JSON-lines results file (:mod:`nabn_onnx.evaluation.results`),
which a later ``resume`` reads to skip them.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import logging
import os
import pickle
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from onnx import ModelProto, numpy_helper

from ..api import split
from ..calibration import DEFAULT_ESTIMATOR, Calibrator, Estimator
from ..calibration.config import CalibrationConfig
from ..data import DataLike, check_batching, data_fingerprint, replayable
from ..errors import NabnError
from ..model import ModelLike, atomic_write_text, batchnorm_nodes, load_model
from ..noise import NoiseModel, make_noise
from ..passes.inject import InjectWeightNoisePass, noisy_tensor_names
from ..progress import Progress
from ..runtime import check_providers
from ..settings import DataSettings, RuntimeSettings, with_options
from .evaluate import Evaluator, OutputLike
from .executors import Executor, SerialExecutor, crash_hook
from .metrics import IGNORE_INDEX, MetricLike
from .results import ResultsFile

__all__ = [
    "sweep",
    "run_sweep",
    "run_chip",
    "SweepPlan",
    "SweepSettings",
    "ChipTask",
    "SweepInputs",
    "SweepReport",
    "parse_floats",
]

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
        executor: where the chips ran (``"serial"``, ``"2 local processes"``, ``"Ray (local)"``).
        resumed: chips read back from the results file rather than run.
    """

    model: str
    metric: str
    method: str
    settings: Dict[str, Any]  # JSON-able records, as read back from results files
    clean: float
    rows: List[Dict[str, Any]] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)
    reuse_sessions: bool = False
    executor: str = "serial"
    resumed: int = 0

    def by_eta(self) -> List[Dict[str, Any]]:
        """Per (noise, eta): chip count and mean, std (sample, ddof=1), min and max of vanilla and nabn."""
        groups: Dict[tuple, List[Dict[str, Any]]] = {}
        for row in self.rows:
            groups.setdefault((row["noise"], row["eta"]), []).append(row)
        out = []
        for (noise, eta), rows in groups.items():
            entry: Dict[str, Any] = {"noise": noise, "eta": eta, "chips": len(rows)}
            for key in ("vanilla", "nabn"):
                entry.update({f"{key}_{k}": v for k, v in _spread([r[key] for r in rows]).items()})
            out.append(entry)
        return out

    def to_dict(self) -> Dict[str, object]:
        """JSON-able form of the sweep: settings, clean figure, one row per chip and the summary."""
        return {
            "model": self.model,
            "metric": self.metric,
            "method": self.method,
            "settings": self.settings,
            "clean": self.clean,
            "rows": self.rows,
            "by_eta": self.by_eta(),
            "reuse_sessions": self.reuse_sessions,
            "executor": self.executor,
            "resumed": self.resumed,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }

    def to_json(self) -> str:
        """The sweep as indented JSON (what ``--report`` writes)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_csv(self) -> str:
        """One CSV row per chip, with the clean model's figure on each."""
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
        """The sweep as a Markdown report: title, settings and the table."""
        chips = sorted({r["seed"] for r in self.rows})
        s = self.settings
        if "sigma_t" in s:
            how = f"(sigma_t = {s['sigma_t']}·eta, sigma_s = {s['sigma_s']}, temporal draw per {s['temporal']})"
        else:  # a device model: its own parameters
            how = "(" + ", ".join(f"{k} = {v}" for k, v in s.items() if k not in ("noise", "eta", "seed")) + ")"
        lines = [
            f"# Robustness sweep: {self.model}",
            "",
            (
                f"{self.metric} (%) under {str(s['noise']).upper()} noise {how}, {len(chips)} chip(s) per eta, "
                f"mean ± std over chips; NaBN method '{self.method}'. Clean model: {100 * self.clean:.2f}%."
            ),
            "",
            self.table(),
            "",
        ]
        return "\n".join(lines)

    def summary(self) -> str:
        """One line with the numbers."""
        stats = self.by_eta()
        worst = min(stats, key=lambda s: s["vanilla_mean"])
        return (
            f"swept {len(stats)} eta(s) x {len(self.rows) // max(len(stats), 1)} chip(s) of {self.model}: clean "
            f"{100 * self.clean:.2f}%, at {worst['noise']} eta={worst['eta']:g} "
            f"vanilla {100 * worst['vanilla_mean']:.2f}% "
            f"vs NaBN {100 * worst['nabn_mean']:.2f}% ({self.metric}), in {self.seconds.get('total', 0.0):.1f}s"
            + (f" on {self.executor}" if self.executor != "serial" else "")
            + (f" ({self.resumed} chip(s) resumed from the results file)" if self.resumed else "")
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

    def __init__(
        self, reuse: bool, names: Callable[[ModelProto], List[str]], output: OutputLike, providers, eval_options
    ):
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
    if not isinstance(model, (str, os.PathLike)):  # a ModelProto or an onnx_graphsurgeon.Graph
        return proto.graph.name or "model"
    return Path(model).stem


@dataclass(frozen=True)
class ChipTask:
    """One simulated chip: what a worker needs to know besides the shared inputs.

    Attributes:
        noise: ``"mul"`` or ``"add"``.
        eta: noise scale.
        seed: chip instance.
        sigma_t: temporal spread relative to eta.
        sigma_s: spatial spread.
        temporal: ``"element"`` or ``"layer"``.
        include_bias: also put noise on analog biases.
    """

    noise: str
    eta: float
    seed: int
    sigma_t: float = 0.2
    sigma_s: float = 0.1
    temporal: str = "element"
    include_bias: bool = False
    device: Tuple[Tuple[str, object], ...] = ()

    @property
    def key(self) -> Tuple[str, float, int]:
        """``(noise, eta, seed)``: how the results file names this chip."""
        return (self.noise, float(self.eta), int(self.seed))

    def noise_model(self) -> NoiseModel:
        """The chip's noise model, seeded by the task's seed."""
        return make_noise(
            self.noise,
            float(self.eta),
            sigma_t=self.sigma_t,
            sigma_s=self.sigma_s,
            seed=int(self.seed),
            temporal=self.temporal,
            include_bias=self.include_bias,
            **dict(self.device),
        )

    def __repr__(self) -> str:
        return f"{self.noise} eta={self.eta:g} seed={self.seed}"


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep covers: one noise kind and its settings, over etas x seeds.

    Attributes:
        noise: ``"mul"`` or ``"add"``.
        etas: noise scales.
        seeds: chip seeds (the same seeds for every eta).
        sigma_t: temporal spread relative to eta.
        sigma_s: spatial spread.
        temporal: ``"element"`` or ``"layer"``.
        include_bias: also put noise on analog biases.
        device: a device model's parameters, as sorted ``(name, value)`` pairs (picklable, hashable).
    """

    noise: str
    etas: Tuple[float, ...]
    seeds: Tuple[int, ...]
    sigma_t: float = 0.2
    sigma_s: float = 0.1
    temporal: str = "element"
    include_bias: bool = False
    device: Tuple[Tuple[str, object], ...] = ()

    @classmethod
    def of(
        cls,
        noise: str,
        etas: Sequence[float],
        seeds: Union[int, Sequence[int]] = 5,
        device: Optional[Mapping[str, object]] = None,
        **settings,
    ) -> SweepPlan:
        """A plan with ``seeds`` given as a count ``K`` (seeds ``0..K-1``) or as the seeds themselves.

        ``device`` parameters are given as a mapping.
        """
        seed_list = range(int(seeds)) if isinstance(seeds, (int, np.integer)) else seeds
        return cls(
            noise,
            tuple(float(e) for e in etas),
            tuple(int(s) for s in seed_list),
            device=tuple(sorted((device or {}).items())),
            **settings,
        )

    def tasks(self) -> List[ChipTask]:
        """One task per chip, eta-major (the order of the report's rows).

        Raises:
            NabnError: no eta, no seed, or invalid noise settings.
        """
        if not self.seeds:
            raise NabnError("a sweep needs at least one seed")
        if not self.etas:
            raise NabnError("a sweep needs at least one eta")
        tasks = [
            ChipTask(self.noise, eta, seed, self.sigma_t, self.sigma_s, self.temporal, self.include_bias, self.device)
            for eta in self.etas
            for seed in self.seeds
        ]
        for task in tasks:
            task.noise_model()  # validates here, before any work, rather than in a worker
        return tasks

    def shared_settings(self) -> Dict[str, object]:
        """The noise settings every chip shares (not eta, not seed)."""
        shared: Dict[str, object] = {
            "noise": self.noise,
            "sigma_t": self.sigma_t,
            "sigma_s": self.sigma_s,
            "temporal": self.temporal,
            "include_bias": self.include_bias,
        }
        if self.device:
            shared["device"] = dict(self.device)
        return shared


@dataclass(frozen=True)
class SweepSettings:
    """How each chip is calibrated and evaluated, and where its sessions run.

    Attributes:
        method: calibration method, ``"paper"``, ``"delta"`` or ``"auto"`` (see :func:`~nabn_onnx.calibrate`).
        metric: a one-number metric (``"top1"``, ``"top5"``, ``"miou"``, ``"pixel-acc"``, a
            :class:`~nabn_onnx.evaluation.metrics.Metric` or a callable; a name for parallel sweeps
            unless the object pickles).
        estimator: how calibration combines batch statistics.
        batch_size: samples per batch for file and dict data.
        calib_batches: calibrate on at most this many batches.
        test_batches: evaluate on at most this many batches.
        output: model output the metric reads (index or name).
        ignore_index: segmentation label never counted.
        ignore_background: drop background pixels in segmentation metrics.
        reuse_sessions: one session for all chips of a worker, weights fed per chip (see the module docstring).
        providers: onnxruntime execution providers, in order of preference (None: CPU).
    """

    method: str = "auto"
    metric: MetricLike = "top1"
    estimator: Estimator = DEFAULT_ESTIMATOR
    batch_size: int = 64
    calib_batches: Optional[int] = None
    test_batches: Optional[int] = None
    output: OutputLike = None
    ignore_index: Optional[int] = IGNORE_INDEX
    ignore_background: Optional[bool] = None
    reuse_sessions: bool = False
    providers: Optional[Tuple[str, ...]] = None

    def calibration(self, noise: Optional[NoiseModel]) -> CalibrationConfig:
        """The settings each chip's calibration runs with (``noise``: that chip)."""
        return CalibrationConfig(
            method=self.method,
            noise=noise,
            estimator=self.estimator,
            data=DataSettings(self.batch_size, self.calib_batches),
            runtime=RuntimeSettings(self.providers),
        )

    def eval_options(self) -> Dict[str, object]:
        """Keyword arguments for the evaluation of each chip."""
        return dict(
            metric=self.metric,
            batch_size=self.batch_size,
            max_batches=self.test_batches,
            ignore_index=self.ignore_index,
            ignore_background=self.ignore_background,
        )

    def describe(self) -> Dict[str, object]:
        """JSON-able, for the results file's header (a resumed sweep must match it)."""
        return {
            "method": self.method,
            "metric": _metric_name(self.metric),
            "estimator": asdict(self.estimator),
            "batch_size": self.batch_size,
            "calib_batches": self.calib_batches,
            "test_batches": self.test_batches,
            "output": self.output,
            "ignore_index": self.ignore_index,
            "ignore_background": self.ignore_background,
            "reuse_sessions": self.reuse_sessions,
            "providers": list(self.providers) if self.providers else None,
        }


@dataclass(frozen=True)
class SweepInputs:
    """What every chip of one sweep reads: models, data, settings. Plain and picklable.

    Executors replace the models and data (:meth:`map_shared`) by what their workers can
    reach: files in a shared folder, or references into Ray's object store.

    Attributes:
        key: identifies the sweep, so a worker keeps its loaded models and sessions across chips.
        clean: the clean model.
        prepared: the model with its fused BatchNorms split out and clean statistics measured.
        calib: calibration data.
        test: labelled test data.
        weights: the analog weights that get noise.
        settings: how each chip is measured.
    """

    key: str
    clean: Any  # ModelProto in the chip function; a file or object-store reference while shipped
    prepared: Any
    calib: object
    test: object
    weights: Tuple[str, ...]
    settings: SweepSettings

    def map_shared(self, fn: Callable[[object], object]) -> SweepInputs:
        """A copy with the shared models and data mapped by ``fn`` (e.g. written to files for workers)."""
        return replace(self, clean=fn(self.clean), prepared=fn(self.prepared), calib=fn(self.calib), test=fn(self.test))


class _ChipState:
    """What a worker keeps between chips of one sweep: the models and the session runners."""

    def __init__(self, inputs: SweepInputs):
        self.clean, self.prepared = inputs.clean, inputs.prepared
        settings, weights = inputs.settings, list(inputs.weights)
        options = settings.eval_options()
        self.vanilla = _ChipRunner(
            settings.reuse_sessions, lambda _: weights, settings.output, settings.providers, options
        )
        self.nabn = _ChipRunner(
            settings.reuse_sessions,
            lambda first: weights + _bn_param_names(first),
            settings.output,
            settings.providers,
            options,
        )
        # every chip calibrates the same prepared model on the same data: its clean statistics once
        self.calibrator = Calibrator(settings.calibration(None), reuse_clean=True)


#: Per-process cache: the state of the sweep this process last worked for.
_STATE: Dict[str, _ChipState] = {}


def run_chip(task: ChipTask, inputs: SweepInputs) -> Dict[str, object]:
    """Measure one chip: vanilla accuracy with its noisy weights, and NaBN accuracy after calibration.

    Every executor runs this same function, so a chip's numbers do not depend on where it ran.

    Returns:
        ``{"noise", "eta", "seed", "vanilla", "nabn", "seconds": {...}, "worker": "host:pid"}``.
    """
    crash_hook(task.seed)
    state = _STATE.get(inputs.key)
    if state is None:
        _STATE.clear()
        state = _STATE[inputs.key] = _ChipState(inputs)
    sessions_before = state.vanilla.session_seconds + state.nabn.session_seconds
    noise = task.noise_model()
    t0 = time.perf_counter()
    noisy = InjectWeightNoisePass(noise)(copy.deepcopy(state.clean)).model
    vanilla = state.vanilla.run(noisy, inputs.test)
    t1 = time.perf_counter()
    calibrated = state.calibrator.with_noise(noise)(state.prepared, inputs.calib).model
    t2 = time.perf_counter()
    nabn = state.nabn.run(calibrated, inputs.test)
    t3 = time.perf_counter()
    sessions = state.vanilla.session_seconds + state.nabn.session_seconds - sessions_before
    return {
        "noise": noise.kind,
        "eta": noise.eta,
        "seed": noise.seed,
        "vanilla": vanilla,
        "nabn": nabn,
        "seconds": {"vanilla": t1 - t0, "calibrate": t2 - t1, "nabn": t3 - t2, "sessions": sessions},
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }


def _fingerprint(model: ModelProto) -> str:
    """A digest of the graph and its weights, piece by piece (so models over 2 GB work too)."""
    digest = hashlib.sha256()
    graph = model.graph
    for part in (*graph.input, *graph.output, *graph.node):
        digest.update(part.SerializeToString())
    for tensor in graph.initializer:
        digest.update(tensor.name.encode())
        digest.update(numpy_helper.to_array(tensor).tobytes())
    return digest.hexdigest()[:16]


def _check_picklable(settings: SweepSettings) -> None:
    try:
        pickle.dumps(settings)
    except Exception as exc:  # what pickle raises depends on the object
        raise NabnError(
            f"a parallel sweep sends its settings to other processes, and they do not pickle ({exc}); "
            "give the metric by name"
        ) from None


def run_sweep(
    model: ModelLike,
    calib: DataLike,
    test: DataLike,
    plan: SweepPlan,
    settings: SweepSettings = SweepSettings(),
    *,
    executor: Optional[Executor] = None,
    results: Union[str, Path, None] = None,
    resume: bool = False,
    show_progress: bool = False,
) -> SweepReport:
    """Accuracy of vanilla and NaBN models over a plan of chips, on any executor, resumable.

    The model's fused BatchNorms are split out and their clean statistics measured once,
    here; then every chip (one :class:`ChipTask`) is measured by :func:`run_chip` on
    ``executor``. Each finished chip is appended to ``results`` (JSON lines, flushed and
    fsync-ed, see :mod:`nabn_onnx.evaluation.results`) as it ends.

    Args:
        model: path or ``ModelProto`` (BatchNorm kept or fused; not modified).
        calib: calibration data (no labels needed).
        test: labelled test data.
        plan: the chips.
        settings: how each chip is measured.
        executor: where chips run (:func:`~nabn_onnx.evaluation.executors.make_executor`;
            serial by default).
        results: the JSON-lines results file (None: none is written).
        resume: continue the sweep in ``results``: chips already there are not run again.
        show_progress: draw chips done / total and the ETA on a terminal.

    Returns:
        A :class:`SweepReport` with one row per chip of the plan, in plan order.

    Raises:
        NabnError: bad model, data or settings, or a results file of another sweep.
    """
    started = time.perf_counter()
    executor = executor or SerialExecutor()
    tasks = plan.tasks()
    if resume and results is None:
        raise NabnError("--resume needs --results: the file of the sweep to continue")
    if not isinstance(executor, SerialExecutor):
        _check_picklable(settings)
    if settings.providers:
        settings = replace(settings, providers=tuple(check_providers(settings.providers)))
    # the settings every chip's calibration and evaluation will refuse, refused before any work
    check_batching(calib, settings.batch_size, settings.calib_batches, min_batch=2)
    check_batching(test, settings.batch_size, settings.test_batches)
    calib, test = replayable(calib), replayable(test)
    proto = load_model(copy.deepcopy(model) if isinstance(model, ModelProto) else model)
    weights = noisy_tensor_names(proto, include_bias=plan.include_bias)
    if not weights:
        raise NabnError("the model has no analog layer with a constant weight: nothing to put noise on")
    clean = _ChipRunner(False, lambda _: weights, settings.output, settings.providers, settings.eval_options()).run(
        proto, test
    )
    store = None
    if results is not None:
        header = {
            "model": _model_name(model, proto),
            "fingerprint": _fingerprint(proto),
            "metric": _metric_name(settings.metric),
            "method": settings.method,
            "settings": plan.shared_settings(),
            "measure": settings.describe(),
            "calib": data_fingerprint(calib),
            "test": data_fingerprint(test),
            "clean": clean,
        }
        store = ResultsFile.open(results, header, resume=resume)
    try:
        done = {} if store is None else {k: _report_row(r) for k, r in store.rows.items()}
        todo = [t for t in tasks if t.key not in done]
        resumed = len(tasks) - len(todo)
        timing = {"calibrate": 0.0, "vanilla": 0.0, "nabn": 0.0, "sessions": 0.0}
        if todo:
            t0 = time.perf_counter()
            prepared = split(
                proto,
                calib,
                batch_size=settings.batch_size,
                max_batches=settings.calib_batches,
                providers=settings.providers,
            ).model
            timing["split"] = time.perf_counter() - t0
            inputs = SweepInputs(uuid.uuid4().hex, proto, prepared, calib, test, tuple(weights), settings)
            with Progress(f"sweep {plan.noise}", len(tasks), enabled=show_progress, initial=resumed) as bar:
                try:
                    for task, row in executor.run(run_chip, todo, inputs):
                        if store is not None:
                            store.append(row)
                        for part, seconds in row["seconds"].items():
                            timing[part] = timing.get(part, 0.0) + seconds
                        done[task.key] = _report_row(row)
                        bar.update()
                finally:
                    _STATE.clear()  # the serial executor's models and sessions
        if resumed:
            logger.info("resumed %s: %d of %d chip(s) were already done", results, resumed, len(tasks))
    finally:
        if store is not None:
            store.close()
    report = SweepReport(
        _model_name(model, proto),
        _metric_name(settings.metric),
        settings.method,
        make_noise(
            plan.noise,
            plan.etas[0],
            **dict(plan.device),
            **{k: v for k, v in plan.shared_settings().items() if k not in ("noise", "device")},
        ).describe(),
        clean,
        rows=[done[t.key] for t in tasks],
        reuse_sessions=settings.reuse_sessions,
        executor=executor.describe(),
        resumed=resumed,
    )
    timing["total"] = time.perf_counter() - started
    report.seconds = timing
    logger.info("%s", report.summary())
    return report


def _report_row(row: Mapping[str, Any]) -> Dict[str, Any]:
    return {
        "noise": row["noise"],
        "eta": float(row["eta"]),
        "seed": int(row["seed"]),
        "vanilla": row["vanilla"],
        "nabn": row["nabn"],
    }


#: keywords of :func:`sweep` that fill the :class:`SweepPlan` (the rest fill :class:`SweepSettings`)
_PLAN_KEYWORDS = ("noise", "etas", "seeds", "sigma_t", "sigma_s", "temporal", "include_bias", "device")


def sweep(
    model: ModelLike,
    calib: DataLike,
    test: DataLike,
    plan: Optional[SweepPlan] = None,
    settings: Optional[SweepSettings] = None,
    *,
    executor=None,
    show_progress: bool = False,
    **options: Any,
) -> SweepReport:
    """Accuracy of vanilla and NaBN models over noise scales and simulated chips.

    What the sweep covers is a :class:`SweepPlan`, how each chip runs a :class:`SweepSettings`;
    both can be given as objects or as flat keywords that fill them: ``noise`` (``"mul"``,
    ``"add"`` or a device model), ``etas``, ``seeds`` (a count ``K`` for seeds ``0..K-1``, or
    the seeds), ``sigma_t``, ``sigma_s``, ``temporal``, ``include_bias``, ``device`` (a device
    model's parameters, e.g. ``{"t_inference": 3600}``) for the plan; ``method``,
    ``metric``, ``estimator``, ``batch_size``, ``calib_batches``, ``test_batches``,
    ``output``, ``ignore_index``, ``ignore_background``, ``reuse_sessions``, ``providers``
    for the settings. Chips run serially unless an ``executor`` (:func:`make_executor`:
    local processes or Ray) is given; for a resumable sweep call :func:`run_sweep`.

    Args:
        model: path, ``ModelProto`` or ``onnx_graphsurgeon.Graph`` (BatchNorm kept or fused; not modified).
        calib: calibration data (no labels needed).
        test: labelled test data.
        plan: what the sweep covers (or its keywords; ``etas`` is then required).
        settings: how each chip is calibrated and evaluated (or its keywords).
        executor: where the chips run (None: serially in this process).
        show_progress: draw a progress bar over the chips.
        **options: the plan's and the settings' fields as keywords.

    Returns:
        A :class:`SweepReport` with one row per (eta, seed).

    Raises:
        NabnError: bad model, data or settings (one-line message).
        TypeError: an unknown keyword, or a plan given both as an object and as keywords.
    """
    plan_options = {key: options.pop(key) for key in _PLAN_KEYWORDS if key in options}
    if plan is None:
        if "etas" not in plan_options:
            raise TypeError("sweep() needs etas= (the noise scales) or a SweepPlan")
        plan = SweepPlan.of(
            plan_options.pop("noise", "mul"),
            plan_options.pop("etas"),
            plan_options.pop("seeds", 5),
            device=plan_options.pop("device", None),
            **plan_options,
        )
    elif plan_options:
        raise TypeError(f"sweep() got a SweepPlan and its keyword(s) {', '.join(sorted(plan_options))}: give one")
    if options.get("providers") is not None:
        options["providers"] = tuple(options["providers"]) or None
    settings = with_options(settings if settings is not None else SweepSettings(), options, "sweep")
    return run_sweep(model, calib, test, plan, settings, show_progress=show_progress, executor=executor)


def _metric_name(metric: MetricLike) -> str:
    if isinstance(metric, str):
        return metric
    return getattr(metric, "name", None) or getattr(metric, "__name__", None) or type(metric).__name__
