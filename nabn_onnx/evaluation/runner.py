"""The per-chip work of a sweep, wherever it runs: inject a chip's noise, evaluate, calibrate, evaluate.

Every executor (:mod:`nabn_onnx.evaluation.executors`: serial, local processes, Ray) runs
the one function :func:`run_chip` with the plain, picklable :class:`SweepInputs`, so a
chip's numbers do not depend on where it ran. A worker keeps its loaded models and session
runners (:class:`ChipState`) between chips of one sweep, in a per-process cache that
:func:`clear_state` empties.

Sessions: by default each chip's vanilla and NaBN models get their own onnxruntime
session, so onnxruntime constant-folds and pre-packs the weights and fuses Conv+BatchNorm
as it would on a deployed model. With ``reuse_sessions=True`` one :class:`ChipRunner`
session serves every chip, the analog weights (and BatchNorm parameters) fed per chip as
overridable initializers (see :mod:`nabn_onnx.evaluation.sweep` for what that costs).

A sweep of several calibration methods calibrates each chip once per method, with that
method's own calibrator and NaBN runner, so each method's numbers are those of a
one-method sweep; a sweep of several test sets evaluates each model on each of them; a
metric that gives several numbers (``"dbnet:miou,dbnet:pixel-acc"``) gives them all from
the one evaluation of each model on each test set.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import time
from dataclasses import dataclass, replace
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from onnx import ModelProto, numpy_helper

from ..calibration import Calibrator
from ..data import DataLike
from ..errors import NabnError
from ..model import batchnorm_nodes
from ..passes.inject import InjectWeightNoisePass
from .evaluate import Evaluator, OutputLike
from .executors import crash_hook
from .plan import ChipTask, SweepSettings

__all__ = [
    "ChipRunner",
    "ChipState",
    "SweepInputs",
    "run_chip",
    "clear_state",
    "bn_param_names",
    "MetricValue",
    "one_number",
]

logger = logging.getLogger(__name__)


def bn_param_names(model: ModelProto) -> List[str]:
    """The initializers that hold BatchNorm scale, bias, mean and variance, in node order."""
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


#: What a chip's evaluation gives: one number, or ``{metric name: number}`` for a metric that gives several.
MetricValue = Union[float, Dict[str, float]]


def _value(value) -> MetricValue:
    if isinstance(value, dict):
        return {str(name): float(number) for name, number in value.items()}
    return float(value)


def one_number(value: MetricValue) -> float:
    """``value`` when it is one number.

    Raises:
        NabnError: ``value`` holds several numbers (the metric's names are in the message).
    """
    if isinstance(value, dict):
        raise NabnError(f"a sweep needs a metric that gives one number, got {sorted(value)}")
    return float(value)


class ChipRunner:
    """Evaluates chip variants of one graph: one session fed per chip, or a session per chip.

    Args:
        reuse: one session for every chip, the values of ``names(first model)`` fed per chip.
        names: which initializers differ from chip to chip, given the first chip's model.
        output: the model output the metric reads.
        providers: onnxruntime execution providers.
        eval_options: keywords of :meth:`Evaluator.run` (metric, batching, ...).
    """

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

    def run(self, model: ModelProto, test: DataLike) -> MetricValue:
        """Evaluate ``model``, which differs from earlier ones only in the values of ``names``.

        Returns:
            The metric: a float, or ``{name: float}`` when it gives several numbers.
        """
        if not self.reuse:
            return _value(self._build(model, ()).run(test, **self.eval_options).value)
        if self.evaluator is None:
            self.names = self.names_of(model)
            self.evaluator = self._build(model, self.names)
            self.structure = _structure(model)
        elif _structure(model) != self.structure:
            logger.warning("a chip's graph differs from the first chip's; evaluating it with its own session")
            return _value(self._build(model, ()).run(test, **self.eval_options).value)
        feeds = _initializer_values(model, self.names)
        return _value(self.evaluator.run(test, feeds=feeds, **self.eval_options).value)


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
        test: labelled test data; with ``test_names``, a tuple of test sets in that order.
        weights: the analog weights that get noise.
        settings: how each chip is measured.
        test_names: the names of several test sets (empty: ``test`` is the one test set).
        metric_names: the names of the numbers a metric that gives several gives (empty: the
            metric gives one number).
    """

    key: str
    clean: object  # ModelProto in the chip function; a file or object-store reference while shipped
    prepared: object
    calib: object
    test: object
    weights: Tuple[str, ...]
    settings: SweepSettings
    test_names: Tuple[str, ...] = ()
    metric_names: Tuple[str, ...] = ()

    @property
    def multi(self) -> bool:
        """Whether chips are measured per method and test set (several of either, or several metrics)."""
        return bool(self.test_names) or len(self.settings.methods) > 1 or bool(self.metric_names)

    def measure(self, runner: ChipRunner, model: ModelProto, data: DataLike) -> MetricValue:
        """``runner``'s metric of ``model`` on ``data``: one number, or one per name of :attr:`metric_names`.

        Raises:
            NabnError: the metric gives several numbers where the sweep expects one, or other ones.
        """
        value = runner.run(model, data)
        if not self.metric_names:
            return one_number(value)
        if not isinstance(value, dict) or tuple(value) != self.metric_names:
            got = sorted(value) if isinstance(value, dict) else "one number"
            raise NabnError(f"the sweep's metric gave {got}, not {list(self.metric_names)}")
        return value

    def test_sets(self) -> List[Tuple[str, object]]:
        """``(name, data)`` of every test set (the one test set is named ``"test"``)."""
        if self.test_names:
            return list(zip(self.test_names, self.test))  # type: ignore[call-overload]
        return [("test", self.test)]

    def map_shared(self, fn: Callable[[object], object]) -> SweepInputs:
        """A copy with the shared models and data mapped by ``fn`` (e.g. written to files for workers)."""
        test = tuple(fn(t) for t in self.test) if self.test_names else fn(self.test)  # type: ignore[attr-defined]
        return replace(self, clean=fn(self.clean), prepared=fn(self.prepared), calib=fn(self.calib), test=test)


class ChipState:
    """What a worker keeps between chips of one sweep: the models and the session runners.

    Attributes:
        clean: the clean model.
        prepared: the split model with clean statistics.
        vanilla: the runner of the noisy, uncalibrated models.
        nabn: per calibration method, the runner of the calibrated models.
        calibrators: per calibration method, its calibrator (clean statistics measured once).
    """

    def __init__(self, inputs: SweepInputs):
        self.clean, self.prepared = inputs.clean, inputs.prepared
        settings, weights = inputs.settings, list(inputs.weights)
        options = settings.eval_options()
        self.vanilla = ChipRunner(
            settings.reuse_sessions, lambda _: weights, settings.output, settings.providers, options
        )
        self.nabn = {
            method: ChipRunner(
                settings.reuse_sessions,
                lambda first: weights + bn_param_names(first),
                settings.output,
                settings.providers,
                options,
            )
            for method in settings.methods
        }
        # every chip calibrates the same prepared model on the same data: its clean statistics once
        self.calibrators = {
            method: Calibrator(settings.calibration(None, method), reuse_clean=True) for method in settings.methods
        }

    @property
    def session_seconds(self) -> float:
        """Seconds spent building sessions so far, over every runner."""
        return self.vanilla.session_seconds + sum(r.session_seconds for r in self.nabn.values())


#: Per-process cache: the state of the sweep this process last worked for.
_STATE: Dict[str, ChipState] = {}


def clear_state() -> None:
    """Drop this process's cached models and sessions (a serial sweep calls it when it ends)."""
    _STATE.clear()


def run_chip(task: ChipTask, inputs: SweepInputs) -> Dict[str, object]:
    """Measure one chip: vanilla accuracy with its noisy weights, and NaBN accuracy after calibration.

    Every executor runs this same function, so a chip's numbers do not depend on where it ran.

    Returns:
        ``{"noise", "eta", "seed", "vanilla", "nabn", "seconds": {...}, "worker": "host:pid"}``.
        With several methods or test sets, ``"vanilla"`` is ``{test: value}`` and ``"nabn"``
        is ``{method: {test: value}}``, and ``"chosen"`` is ``{method: statistics it wrote}``
        (what ``"auto"`` chose). With a metric that gives several numbers, so it is too, each
        ``value`` then being ``{metric: number}``.
    """
    crash_hook(task.seed)
    state = _STATE.get(inputs.key)
    if state is None:
        _STATE.clear()
        state = _STATE[inputs.key] = ChipState(inputs)
    sessions_before = state.session_seconds
    noise = task.noise_model()
    methods = inputs.settings.methods
    tests = inputs.test_sets()
    t0 = time.perf_counter()
    noisy = InjectWeightNoisePass(noise)(copy.deepcopy(state.clean)).model
    vanilla = {name: inputs.measure(state.vanilla, noisy, data) for name, data in tests}
    t1 = time.perf_counter()
    calibrate_seconds = nabn_seconds = 0.0
    nabn: Dict[str, Dict[str, MetricValue]] = {}
    chosen: Dict[str, str] = {}
    for method in methods:
        t2 = time.perf_counter()
        result = state.calibrators[method].with_noise(noise)(state.prepared, inputs.calib)
        calibrated = result.model
        chosen[method] = result.report.chosen
        t3 = time.perf_counter()
        nabn[method] = {name: inputs.measure(state.nabn[method], calibrated, data) for name, data in tests}
        calibrate_seconds += t3 - t2
        nabn_seconds += time.perf_counter() - t3
    sessions = state.session_seconds - sessions_before
    if inputs.multi:
        vanilla_value: object = vanilla
        nabn_value: object = nabn
    else:
        vanilla_value, nabn_value = vanilla["test"], nabn[methods[0]]["test"]
    record: Dict[str, object] = {
        "noise": noise.kind,
        "eta": noise.eta,
        "seed": noise.seed,
        "vanilla": vanilla_value,
        "nabn": nabn_value,
        "seconds": {"vanilla": t1 - t0, "calibrate": calibrate_seconds, "nabn": nabn_seconds, "sessions": sessions},
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }
    if inputs.multi:
        # which statistics each method wrote ("auto" picks one); a one-method record stays as it was
        record["chosen"] = chosen
    return record
