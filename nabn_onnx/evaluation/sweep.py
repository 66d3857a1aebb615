"""Robustness sweeps: accuracy of vanilla and NaBN models over noise scales and chip instances.

For every noise scale ``eta`` and chip ``seed`` the sweep simulates one chip with the
paper's noise model and measures

* **vanilla**: the model with that chip's noisy weights, BatchNorm statistics untouched;
* **nabn**: the same chip (same noisy weights) after :func:`~nabn_onnx.calibrate` on the
  calibration data, with the chosen method (or each of several methods).

Both are evaluated on the test data (or each of several named test sets), as in the
paper's Tables I-II, with a metric that gives one number or several
(``"dbnet:miou,dbnet:pixel-acc"``: rows then name their ``metric``). The fused BatchNorms
of the model are split out once, with clean statistics measured once, so each chip costs
one calibration pass per method.

Two entry points, one convention: :func:`run_sweep` takes the settings as objects (a
:class:`~nabn_onnx.evaluation.plan.SweepPlan` and a
:class:`~nabn_onnx.evaluation.plan.SweepSettings`) and adds results files and resuming;
:func:`sweep` is :func:`run_sweep` with the plan's and the settings' fields as flat keywords.

Sessions: by default each chip's vanilla and NaBN models get their own onnxruntime
session (:data:`~nabn_onnx.runtime.SERVE`). With ``reuse_sessions=True`` one session serves
every chip, weights fed as overridable initializers; measured on the sample models
(``tools/bench_sweep.py``), a fed batch costs about twice a constant-weight batch while a
session build costs less than one batch, so reuse made the sweep's evaluations 1.9
(ResNet) to 3.6 (MobileNet) times slower; per-chip sessions are the default.

Scale: :func:`run_sweep` hands every chip to an executor
(:mod:`nabn_onnx.evaluation.executors`), which runs
:func:`~nabn_onnx.evaluation.runner.run_chip` wherever it runs. Finished chips stream back
in the order they finish and are appended to a JSON-lines results file
(:mod:`nabn_onnx.evaluation.results`), which a later ``resume`` reads to skip them.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import pickle
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from onnx import ModelProto, numpy_helper

from ..api import split
from ..data import DataLike, check_batching, data_fingerprint, replayable
from ..errors import NabnError
from ..model import ModelLike, load_model
from ..noise import make_noise
from ..passes.inject import noisy_tensor_names
from ..progress import Progress
from ..runtime import check_providers
from .executors import Executor, SerialExecutor
from .plan import PLAN_KEYWORDS, ChipTask, SweepPlan, SweepSettings, metric_name, parse_floats, plan_and_settings
from .results import ResultsFile, check_results_path
from .runner import ChipRunner, MetricValue, SweepInputs, clear_state, one_number, run_chip
from .sweep_report import SweepReport

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
    "PLAN_KEYWORDS",
]

logger = logging.getLogger(__name__)

#: The runner class the sweep evaluates the clean model with (tests patch it here).
_ChipRunner = ChipRunner


def _model_name(model: ModelLike, proto: ModelProto) -> str:
    if not isinstance(model, (str, os.PathLike)):  # a ModelProto or an onnx_graphsurgeon.Graph
        return proto.graph.name or "model"
    return Path(model).stem


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


def _test_sets(test: Optional[DataLike], tests: Optional[Mapping[str, DataLike]]) -> List[Tuple[str, DataLike]]:
    """``(name, data)`` of the test sets: ``test`` (named ``"test"``) or the mapping ``tests``."""
    if tests is None:
        if test is None:
            raise TypeError("run_sweep() needs test data: test, or tests= (named test sets)")
        return [("test", test)]
    if test is not None:
        raise TypeError("run_sweep() got test data and tests=: give one")
    named = [(str(name), data) for name, data in tests.items()]
    if not named:
        raise NabnError("tests= names no test set")
    return named


def run_sweep(
    model: ModelLike,
    calib: DataLike,
    test: Optional[DataLike],
    plan: SweepPlan,
    settings: SweepSettings = SweepSettings(),  # noqa: B008 (frozen: one shared default is safe)
    *,
    tests: Optional[Mapping[str, DataLike]] = None,
    executor: Optional[Executor] = None,
    results: Union[str, Path, None] = None,
    resume: bool = False,
    show_progress: bool = False,
) -> SweepReport:
    """Accuracy of vanilla and NaBN models over a plan of chips, on any executor, resumable.

    The model's fused BatchNorms are split out and their clean statistics measured once,
    here; then every chip (one :class:`ChipTask`) is measured by
    :func:`~nabn_onnx.evaluation.runner.run_chip` on ``executor``. Each finished chip is
    appended to ``results`` (JSON lines, flushed and fsync-ed, see
    :mod:`nabn_onnx.evaluation.results`) as it ends.

    Several calibration methods (``settings.method`` a tuple) or several test sets
    (``tests``) measure every chip with each method on each test set; the report's rows then
    name their ``"method"`` and ``"test"``, and each method's numbers are those of a sweep of
    that method alone. A metric that gives several numbers (``settings.metric`` such as
    ``"dbnet:miou,dbnet:pixel-acc"`` or a sequence of metrics) does the same per number: rows
    also name their ``"metric"``, ``clean`` is ``{test: {metric: number}}``, and each
    metric's numbers are those of a sweep of that metric alone.

    Args:
        model: path or ``ModelProto`` (BatchNorm kept or fused; not modified).
        calib: calibration data (no labels needed).
        test: labelled test data (None when ``tests`` names the test sets).
        plan: the chips.
        settings: how each chip is measured.
        tests: several labelled test sets by name, instead of ``test``.
        executor: where chips run (:func:`~nabn_onnx.evaluation.executors.make_executor`;
            serial by default).
        results: the JSON-lines results file (None: none is written).
        resume: continue the sweep in ``results``: chips already there are not run again.
        show_progress: draw chips done / total and the ETA on a terminal.

    Returns:
        A :class:`SweepReport` with one row per chip of the plan, in plan order (per chip,
        one row per test set, method and metric when there are several).

    Raises:
        NabnError: bad model, data or settings, or a results file of another sweep.
        TypeError: both ``test`` and ``tests``, or neither.
    """
    started = time.perf_counter()
    named = _test_sets(test, tests)
    executor = executor or SerialExecutor()
    tasks = plan.tasks()
    if resume and results is None:
        raise NabnError("--resume needs --results: the file of the sweep to continue")
    if results is not None:
        check_results_path(results)
    if not isinstance(executor, SerialExecutor):
        _check_picklable(settings)
    if settings.providers:
        settings = replace(settings, providers=tuple(check_providers(settings.providers)))
    # the settings every chip's calibration and evaluation will refuse, refused before any work
    check_batching(calib, settings.batch_size, settings.calib_batches, min_batch=2)
    for _, data in named:
        check_batching(data, settings.batch_size, settings.test_batches)
    calib = replayable(calib)
    named = [(name, replayable(data)) for name, data in named]
    proto = load_model(copy.deepcopy(model) if isinstance(model, ModelProto) else model)
    weights = noisy_tensor_names(proto, include_bias=plan.include_bias)
    if not weights:
        raise NabnError("the model has no analog layer with a constant weight: nothing to put noise on")
    runner = _ChipRunner(False, lambda _: weights, settings.output, settings.providers, settings.eval_options())
    cleans = {name: runner.run(proto, data) for name, data in named}
    metrics = _metric_names(cleans)
    multi = len(named) > 1 or len(settings.methods) > 1 or bool(metrics)
    clean: Union[float, Dict[str, MetricValue]] = cleans if multi else one_number(cleans[named[0][0]])
    metric_label = _metric_label(settings, metrics)
    store = None
    if results is not None:
        header: Dict[str, object] = {
            "model": _model_name(model, proto),
            "fingerprint": _fingerprint(proto),
            "metric": metric_label,
            "method": settings.method if isinstance(settings.method, str) else list(settings.method),
            "settings": plan.shared_settings(),
            "measure": settings.describe(),
            "calib": data_fingerprint(calib),
            "test": {name: data_fingerprint(data) for name, data in named} if multi else data_fingerprint(named[0][1]),
            "clean": clean,
        }
        store = ResultsFile.open(results, header, resume=resume)
    try:
        done = {} if store is None else {k: _report_rows(r, multi, metrics) for k, r in store.rows.items()}
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
            inputs = SweepInputs(
                uuid.uuid4().hex,
                proto,
                prepared,
                calib,
                tuple(data for _, data in named) if len(named) > 1 else named[0][1],
                tuple(weights),
                settings,
                test_names=tuple(name for name, _ in named) if len(named) > 1 else (),
                metric_names=metrics,
            )
            with Progress(f"sweep {plan.noise}", len(tasks), enabled=show_progress, initial=resumed) as bar:
                try:
                    for task, row in executor.run(run_chip, todo, inputs):
                        if store is not None:
                            store.append(row)
                        for part, seconds in row["seconds"].items():
                            timing[part] = timing.get(part, 0.0) + seconds
                        done[task.key] = _report_rows(row, multi, metrics)
                        bar.update()
                finally:
                    clear_state()  # the serial executor's models and sessions
        if resumed:
            logger.info("resumed %s: %d of %d chip(s) were already done", results, resumed, len(tasks))
    finally:
        if store is not None:
            store.close()
    report = SweepReport(
        _model_name(model, proto),
        metric_label,
        settings.method_label,
        make_noise(
            plan.noise,
            plan.etas[0],
            **dict(plan.device),
            **{k: v for k, v in plan.shared_settings().items() if k not in ("noise", "device")},
        ).describe(),
        clean,
        rows=[row for t in tasks for row in done[t.key]],
        reuse_sessions=settings.reuse_sessions,
        executor=executor.describe(),
        resumed=resumed,
    )
    timing["total"] = time.perf_counter() - started
    report.seconds = timing
    logger.info("%s", report.summary())
    return report


def _metric_names(cleans: Mapping[str, MetricValue]) -> Tuple[str, ...]:
    """The names of the numbers the metric gives, from the clean model's figures (empty: one number)."""
    values = list(cleans.values())
    if not any(isinstance(v, dict) for v in values):
        return ()
    names = tuple(values[0]) if isinstance(values[0], dict) else ()
    if any(not isinstance(v, dict) or tuple(v) != names for v in values):
        got = "; ".join(f"{name}: {sorted(v) if isinstance(v, dict) else 'one number'}" for name, v in cleans.items())
        raise NabnError(f"the metric must give the same numbers on every test set, got {got}")
    return names


def _metric_label(settings: SweepSettings, metrics: Tuple[str, ...]) -> str:
    """The metric as reports and results files record it: as given, or its numbers' names joined by commas."""
    if metrics and not isinstance(settings.metric, str):
        return ",".join(metrics)
    return metric_name(settings.metric)


def _report_rows(row: Mapping[str, Any], multi: bool, metrics: Tuple[str, ...] = ()) -> List[Dict[str, Any]]:
    """The report rows of one chip's record: one, or one per (test set, method[, metric])."""
    chip = {"noise": row["noise"], "eta": float(row["eta"]), "seed": int(row["seed"])}
    if not multi:
        return [{**chip, "vanilla": row["vanilla"], "nabn": row["nabn"]}]
    chosen = row.get("chosen", {})  # absent in results files written before it was recorded
    if metrics:
        return [
            {
                **chip,
                "vanilla": vanilla[metric],
                "nabn": row["nabn"][method][test][metric],
                "test": test,
                "method": method,
                "metric": metric,
                **({"chosen": chosen[method]} if method in chosen else {}),
            }
            for test, vanilla in row["vanilla"].items()
            for method in row["nabn"]
            for metric in metrics
        ]
    return [
        {
            **chip,
            "vanilla": vanilla,
            "nabn": row["nabn"][method][test],
            "test": test,
            "method": method,
            **({"chosen": chosen[method]} if method in chosen else {}),
        }
        for test, vanilla in row["vanilla"].items()
        for method in row["nabn"]
    ]


def sweep(
    model: ModelLike,
    calib: DataLike,
    test: Optional[DataLike],
    plan: Optional[SweepPlan] = None,
    settings: Optional[SweepSettings] = None,
    *,
    tests: Optional[Mapping[str, DataLike]] = None,
    executor: Optional[Executor] = None,
    results: Union[str, Path, None] = None,
    resume: bool = False,
    show_progress: bool = False,
    **options: Any,
) -> SweepReport:
    """:func:`run_sweep` with the plan's and the settings' fields as flat keywords.

    What the sweep covers is a :class:`SweepPlan`, how each chip runs a :class:`SweepSettings`;
    both can be given as objects or as flat keywords that fill them: ``noise`` (``"mul"``,
    ``"add"`` or a device model), ``etas``, ``seeds`` (a count ``K`` for seeds ``0..K-1``, or
    the seeds), ``sigma_t``, ``sigma_s``, ``temporal``, ``include_bias``, ``device`` (a device
    model's parameters, e.g. ``{"t_inference": 3600}``) for the plan; every field of
    :class:`SweepSettings` (``method``, a name or a tuple of names, ``metric``, one or several,
    ``estimator``, ``batch_size``, ``calib_batches``, ``test_batches``, ``output``,
    ``ignore_index``, ``ignore_background``, ``reuse_sessions``, ``providers``) for the
    settings. Every other argument is :func:`run_sweep`'s: chips run serially unless an
    ``executor`` (:func:`make_executor`: local processes or Ray) is given, and ``results``
    with ``resume`` make the sweep resumable.

    Args:
        model: path, ``ModelProto`` or ``onnx_graphsurgeon.Graph`` (BatchNorm kept or fused; not modified).
        calib: calibration data (no labels needed).
        test: labelled test data (None when ``tests`` names the test sets).
        plan: what the sweep covers (or its keywords; ``etas`` is then required).
        settings: how each chip is calibrated and evaluated (or its keywords).
        tests: several labelled test sets by name, instead of ``test``.
        executor: where the chips run (None: serially in this process).
        results: the JSON-lines results file (None: none is written).
        resume: continue the sweep in ``results``: chips already there are not run again.
        show_progress: draw a progress bar over the chips.
        **options: the plan's and the settings' fields as keywords.

    Returns:
        A :class:`SweepReport` with one row per (eta, seed) (and test set, method and metric, when several).

    Raises:
        NabnError: bad model, data or settings (one-line message).
        TypeError: an unknown keyword, or a plan given both as an object and as keywords.
    """
    plan, settings = plan_and_settings(plan, settings, options, "sweep")
    return run_sweep(
        model,
        calib,
        test,
        plan,
        settings,
        tests=tests,
        executor=executor,
        results=results,
        resume=resume,
        show_progress=show_progress,
    )
