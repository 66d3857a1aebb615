"""The calibrate job: :class:`Calibrator`'s named steps and :func:`calibrate`.

``calibrate`` re-estimates the BatchNorm statistics of a (noisy) model on calibration data,
as a short sequence of named steps: decide what the given model is and what can be
recalibrated, split fused BatchNorms back out where a clean model is known, measure the
clean reference statistics, put one chip's noise on the weights, measure the noisy
statistics with the paper's train-mode semantics, choose, write back. The methods are in
:mod:`.methods`, the passes over the data in :mod:`.measure`, the choice in :mod:`.choice`.

**What the given model is.** With ``noise`` the model is clean and the chip is simulated
on it. With ``reference`` the model is the chip and ``reference`` the clean model. With
neither, **the model is the chip** (weights read back from a device, or written by another
simulator) and no clean model is known: then only BatchNorms that hold statistics of the
clean network (a kept BatchNorm's trained statistics, or one inserted by ``split --data`` on
the clean model) are recalibrated, with Algorithm 1; analog layers without such a
BatchNorm are left alone and the report says why (their clean statistics are unknown, so
a BatchNorm inserted now would map the chip's outputs back onto the chip's own broken
distribution). Without a clean model ``auto`` means ``paper``, checked against the
statistics as they were when the data has labels (:func:`~.choice.guard_chip`).
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..data import DataLike, check_batching, decoded_once, replayable
from ..errors import NabnError
from ..logs import once_per_job, warn_once
from ..model import (
    ModelLike,
    batchnorm_nodes,
    check_output,
    record,
    returns_like,
    save_model,
)
from ..noise import NoiseModel
from ..passes.inject import InjectWeightNoisePass
from ..passes.write_stats import WriteBatchNormStatsPass, bn_epsilon, read_bn_params
from ..progress import Progress
from ..runtime import SERVE, make_session
from .batchnorms import Stats, placeholder_values, running_stats
from .choice import choose_by_score, guard_chip
from .config import CalibrationConfig, CalibrationOptions, Reading
from .holdout import count_batches, holdout_mode
from .job import CalibrationJob
from .measure import Measured, fill_inserted_stats, measure
from .methods import get_method
from .prepare import prepare_job
from .report import CalibrationReport, CalibrationResult, LayerShift, layer_shift

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["calibrate", "Calibrator", "CleanRun"]

logger = logging.getLogger(__name__)


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


@dataclass
class CleanRun:
    """A clean model's measurements, reused by a ``reuse_clean`` calibrator across chips of one sweep.

    The entry holds the ``model`` and ``data`` objects themselves, so their ``id()`` (the
    cache key) cannot be taken by another object while the entry lives; :meth:`matches`
    also checks identity. The objects must not change between calls (the documented
    contract of ``reuse_clean``): identity says nothing about content.

    Attributes:
        model: the clean model object passed.
        data: the data object passed (before it was made replayable).
        run: the clean model's train-mode statistics.
        session: ``auto``'s clean reference session, or None.
        measured: the clean statistics of the BatchNorms this calibrator inserted (a fused
            model), None when it inserted none.
        references: ``auto``'s clean reference outputs on the scored parts (the scorer's
            cache, filled by the first chip; the same for every chip).
    """

    model: object
    data: object
    run: Optional[Measured]
    session: object
    measured: Optional[Stats] = None
    references: Dict[int, List[np.ndarray]] = field(default_factory=dict)

    @staticmethod
    def key(model: object, data: object) -> Tuple[int, int]:
        """The cache key of a ``(model, data)`` pair."""
        return (id(model), id(data))

    def matches(self, model: object, data: object) -> bool:
        """Whether this entry was measured on these very objects."""
        return self.model is model and self.data is data


class Calibrator:
    """A calibration as a short sequence of named steps, settings given once.

    Calling it runs, top to bottom: :meth:`check` (settings against the inputs, before any
    work), :meth:`prepare` (what the model is, what can be recalibrated, split, batch plan),
    :meth:`plan_holdout` (what ``auto`` scores on), then over the data
    :meth:`measure_inserted` (clean statistics of BatchNorms this run inserted),
    :meth:`measure_clean` (the clean train-mode statistics ``delta``/``auto`` need),
    :meth:`clean_session`, :meth:`put_noise` (one simulated chip), :meth:`measure_noisy`
    (Algorithm 1), :meth:`choose` (``auto``'s candidates, or the guard on a chip without its
    clean model), :meth:`write_back` and :meth:`report`, then the save. Each step reads and
    extends one job state (:class:`~.job.CalibrationJob`), so each can be run and tested on
    its own.
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
        self._clean: Dict[Tuple[int, int], CleanRun] = {}

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
        steps: Dict[str, float] = {}

        @contextmanager
        def step(name: str) -> Iterator[None]:
            begun = time.perf_counter()
            try:
                yield
            finally:
                steps[name] = steps.get(name, 0.0) + time.perf_counter() - begun

        with step("check"):
            self.check(model, data, reference, output)
        reuse = self.reuse_clean and reference is None
        cached = self._clean.get(CleanRun.key(model, data)) if reuse else None
        if cached is not None and not cached.matches(model, data):
            cached = None
        with once_per_job(), ExitStack() as cleanup:
            with step("prepare"):
                job = self.prepare(model, reference)
                # image folders are decoded on the first pass only (the job reads its data up to 7 times)
                source, data = data, decoded_once(replayable(data))
                if data is not source and hasattr(data, "close"):
                    cleanup.callback(data.close)  # the decoded images' folder, also when a step fails
                self.plan_holdout(job, data)
            if cached is not None and sorted(cached.measured or {}) != sorted(job.placeholders):
                cached = None  # not the same split (it cannot differ for one model and config, but never guess)
            with self.progress(job, data) as bar:
                with step("measure_inserted"):
                    self.measure_inserted(job, data, bar, known=cached.measured if cached is not None else None)
                if cached is not None:
                    job.clean_run, clean_session = cached.run, cached.session
                    per_pass = count_batches(data, self.config.data.batch_size, self.config.data.max_batches) or 0
                    bar.update(per_pass * (bool(job.placeholders) + bool(job.strategy.needs_clean)))
                else:
                    with step("measure_clean"):
                        self.measure_clean(job, data, bar)
                    with step("clean_session"):
                        clean_session = self.clean_session(job)
                    if reuse:
                        cached = CleanRun(model, source, job.clean_run, clean_session, job.measured or None)
                        self._clean[CleanRun.key(model, source)] = cached
                with step("put_noise"):
                    self.put_noise(job)
                with step("measure_noisy"):
                    self.measure_noisy(job, data, bar)
                with step("choose"):
                    self.choose(job, data, clean_session, bar, references=cached.references if cached else None)
                del clean_session
            with step("write_back"):
                layers = self.write_back(job)
        report = self.report(job, layers, started)
        if output is not None:
            with step("save"):
                save_model(job.model, output, external_data=external_data)
        report.steps = {name: seconds for name, seconds in steps.items() if not _skipped(job, name)}
        report.seconds = time.perf_counter() - started
        logger.debug("calibrate: %s", ", ".join(f"{name} {seconds:.2f}s" for name, seconds in report.steps.items()))
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

    def prepare(self, model: ModelLike, reference: Optional[ModelLike] = None) -> CalibrationJob:
        """Load, decide what the model is, split where a clean model is known, and plan batches."""
        return prepare_job(model, reference, self.config)

    def plan_holdout(self, job: CalibrationJob, data: DataLike) -> None:
        """How ``auto`` (and the guard of a chip without its clean model) holds samples out to score on."""
        # on a chip without its clean model, 'auto' checks Algorithm 1 against leaving it as it is
        if job.strategy.chooses or self._chip_guard_applies(job):
            job.holdout = holdout_mode(count_batches(data, self.config.data.batch_size, self.config.data.max_batches))

    def progress(self, job: CalibrationJob, data: DataLike) -> Progress:
        """A progress bar over every batch every step will run."""
        per_pass = count_batches(data, self.config.data.batch_size, self.config.data.max_batches)
        method = job.strategy
        passes = (1 if job.placeholders else 0) + (2 if method.needs_clean else 1)
        scoring = len(method.candidates) * per_pass if per_pass is not None and method.chooses else 0
        total = None if per_pass is None else passes * per_pass + scoring
        return Progress("calibrating", total, enabled=self.config.runtime.show_progress)

    def measure_inserted(
        self, job: CalibrationJob, data: DataLike, bar: Optional[Progress] = None, known: Optional[Stats] = None
    ) -> None:
        """Clean statistics of the BatchNorms inserted without them, written into both models.

        ``known``: the same statistics measured by an earlier call of a ``reuse_clean``
        calibrator (written without reading the data).
        """
        if job.placeholders:
            assert job.clean is not None, "prepare inserts placeholders only with a clean model"
            job.measured = fill_inserted_stats(
                job.model, job.clean, job.placeholders, data, self._reading(job), progress=bar, known=known
            )
        job.reference = running_stats(read_bn_params(job.model), job.names)

    def measure_clean(self, job: CalibrationJob, data: DataLike, bar: Optional[Progress] = None) -> None:
        """The clean model's train-mode statistics (``delta`` and ``auto`` map the noise's change from them)."""
        if job.strategy.needs_clean:
            assert job.clean is not None, "prepare keeps delta and auto only with a clean model"
            job.clean_run = measure(
                job.clean, data, self._reading(job), train=job.names, progress=bar, holdout=job.holdout
            )

    def clean_session(self, job: CalibrationJob):
        """``auto``'s clean reference session, built before the noise goes in (None otherwise).

        onnxruntime holds its own copy of the weights, so no second ModelProto is kept.
        """
        if not job.strategy.chooses:
            return None
        assert job.clean is not None
        return make_session(job.clean, optimization=SERVE, providers=self.config.runtime.providers, batch=job.plan)

    def put_noise(self, job: CalibrationJob) -> None:
        """One simulated chip's noise on the model's analog weights (nothing when the model is the chip)."""
        if self.config.noise is not None:
            InjectWeightNoisePass(self.config.noise)(job.model)

    def measure_noisy(self, job: CalibrationJob, data: DataLike, bar: Optional[Progress] = None) -> None:
        """Algorithm 1: the chip's train-mode statistics."""
        job.noisy_run = measure(job.model, data, self._reading(job), train=job.names, progress=bar, holdout=job.holdout)
        if job.noisy_run.constant:
            warn_once(
                logger,
                "the calibration data does not vary between samples (constant inputs): statistics "
                "measured on it say nothing about real data; calibrate on real inputs",
            )

    def choose(
        self,
        job: CalibrationJob,
        data: DataLike,
        clean_session=None,
        bar: Optional[Progress] = None,
        *,
        references: Optional[dict] = None,
    ) -> None:
        """Which statistics to write: the method's, ``auto``'s best candidate, or the chip guard's.

        ``references``: ``auto``'s clean outputs on the scored parts, kept across the chips
        of a ``reuse_clean`` calibrator (filled on first use).
        """
        job.chosen = job.method
        if job.strategy.chooses:
            assert job.holdout is not None, "plan_holdout() sets the hold-out for auto"
            choose_by_score(job, data, self._reading(job), clean_session, bar, references=references)
        elif self._chip_guard_applies(job):
            assert job.holdout is not None, "plan_holdout() sets the hold-out for the chip guard"
            guard_chip(job, data, self._reading(job))

    def write_back(self, job: CalibrationJob) -> List[LayerShift]:
        """Write the chosen statistics into the model; the per-layer shift they make."""
        assert job.noisy_run is not None, "measure_noisy runs before write_back"
        clean_stats = job.clean_run.stats if job.clean_run is not None else None
        new = get_method(job.chosen).statistics(job.names, job.reference, job.noisy_run.stats, clean_stats)
        eps_of = {n.name: bn_epsilon(n) for n in batchnorm_nodes(job.model)}
        layers = [
            layer_shift(name, job.origin[name], job.reference[name], new[name], eps_of[name]) for name in job.names
        ]
        # An inserted BatchNorm that the chosen statistics leave exactly as measured goes back to the
        # bit-exact identity placeholder (this is what keeps a noise-free delta/auto run bit for bit).
        for name in job.placeholders:
            if job.chosen == "none" or (
                job.chosen == "delta"
                and clean_stats is not None
                and _unchanged(job.noisy_run.stats[name], clean_stats[name])
            ):
                new[name] = placeholder_values(job.reference[name]["mean"].size, eps_of[name])
        WriteBatchNormStatsPass(new)(job.model)
        return layers

    def report(self, job: CalibrationJob, layers: List[LayerShift], started: float) -> CalibrationReport:
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

    def _reading(self, job: CalibrationJob) -> Reading:
        return self.config.reading(job.plan)

    def _chip_guard_applies(self, job: CalibrationJob) -> bool:
        """``auto`` was asked for on a chip without its clean model: :func:`~.choice.guard_chip` checks ``paper``."""
        return job.mode == "chip" and get_method(self.config.method).chooses


def _skipped(job: CalibrationJob, name: str) -> bool:
    """Steps that had nothing to do on this job (left out of the report's timings)."""
    if name == "measure_inserted":
        return not job.placeholders
    if name in ("measure_clean", "clean_session"):
        return not job.strategy.needs_clean
    if name == "put_noise":
        return job.mode != "simulated"
    return False


def _unchanged(noisy: Tuple[np.ndarray, np.ndarray], clean: Tuple[np.ndarray, np.ndarray]) -> bool:
    return bool(np.array_equal(noisy[0], clean[0]) and np.array_equal(noisy[1], clean[1]))
