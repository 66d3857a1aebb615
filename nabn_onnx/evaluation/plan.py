"""What a robustness sweep covers and how each chip is measured: the plan, its chips, the settings.

A sweep is a :class:`SweepPlan` (the chips: one :class:`ChipTask` per noise kind, eta and
seed) measured with one :class:`SweepSettings` (calibration methods, metric, batching,
sessions). Both are frozen and picklable: executors send them to other processes as they are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..calibration import DEFAULT_ESTIMATOR, Estimator
from ..calibration.config import CalibrationConfig
from ..errors import NabnError
from ..noise import NoiseModel, make_noise
from ..settings import DataSettings, RuntimeSettings, with_options
from .evaluate import OutputLike
from .metrics import IGNORE_INDEX, MetricLike

__all__ = [
    "ChipTask",
    "SweepPlan",
    "SweepSettings",
    "PLAN_KEYWORDS",
    "plan_and_settings",
    "parse_floats",
    "metric_name",
]


def parse_floats(text: str, what: str = "value") -> List[float]:
    """``"0.02,0.04"`` -> ``[0.02, 0.04]``; a one-line NabnError on anything else."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise NabnError(f"{what}s must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise NabnError(f"no {what} given")
    return values


def metric_name(metric: Union[MetricLike, Sequence[MetricLike]]) -> str:
    """A metric's name as reports and results files record it: the name given, or the object's name.

    Several metrics in a list or tuple: their names joined by commas.
    """
    if isinstance(metric, str):
        return metric
    if isinstance(metric, (list, tuple)) and len(metric) > 1:
        return ",".join(metric_name(m) for m in metric)
    return getattr(metric, "name", None) or getattr(metric, "__name__", None) or type(metric).__name__


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


#: The most chips one sweep runs: past this, a typo (``--seeds 1000000000``) would exhaust memory
#: listing the chips, long before the first one ran.
MAX_CHIPS = 100_000


def _check_chip_count(count: int) -> None:
    if count > MAX_CHIPS:
        raise NabnError(
            f"a sweep of {count} chips (etas x seeds) is more than {MAX_CHIPS:,}; give fewer seeds or etas, "
            "or split the sweep into several results files"
        )


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
        if isinstance(seeds, (int, np.integer)):
            _check_chip_count(len(etas) * int(seeds))
            seed_list: Sequence[int] = range(int(seeds))
        else:
            seed_list = seeds
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
        _check_chip_count(len(self.etas) * len(self.seeds))
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
        method: calibration method, ``"paper"``, ``"delta"`` or ``"auto"`` (see :func:`~nabn_onnx.calibrate`),
            or several methods as a tuple: each chip is then calibrated once per method, and each
            report row says its method.
        metric: the metric (``"top1"``, ``"top5"``, ``"miou"``, ``"pixel-acc"``, a
            :class:`~nabn_onnx.evaluation.metrics.Metric` or a callable; a name for parallel sweeps
            unless the object pickles), or a metric that gives several numbers (names joined by
            commas, ``"dbnet:miou,dbnet:pixel-acc"``, or a tuple of metrics): each report row
            then says its ``metric``.
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

    method: Union[str, Tuple[str, ...]] = "auto"
    metric: Union[MetricLike, Tuple[MetricLike, ...]] = "top1"
    estimator: Estimator = DEFAULT_ESTIMATOR
    batch_size: int = 64
    calib_batches: Optional[int] = None
    test_batches: Optional[int] = None
    output: OutputLike = None
    ignore_index: Optional[int] = IGNORE_INDEX
    ignore_background: Optional[bool] = None
    reuse_sessions: bool = False
    providers: Optional[Tuple[str, ...]] = None

    def __post_init__(self) -> None:
        if not isinstance(self.method, str):
            methods = tuple(self.method)
            if not methods or not all(isinstance(m, str) for m in methods):
                raise NabnError(f"method must be a method name or a tuple of them, got {self.method!r}")
            # one method given as a sequence is that method: the sweep of today, row for row
            object.__setattr__(self, "method", methods[0] if len(methods) == 1 else methods)

    @property
    def methods(self) -> Tuple[str, ...]:
        """The calibration methods, in order (one for a one-method sweep)."""
        return (self.method,) if isinstance(self.method, str) else tuple(self.method)

    @property
    def method_label(self) -> str:
        """The method as reports and results files record it: the name, or the names joined by commas."""
        return ",".join(self.methods)

    def calibration(self, noise: Optional[NoiseModel], method: Optional[str] = None) -> CalibrationConfig:
        """The settings each chip's calibration runs with.

        Args:
            noise: the chip.
            method: one of :attr:`methods` (required when there are several).
        """
        if method is None:
            if len(self.methods) > 1:
                raise ValueError("calibration(): this sweep has several methods; name one")
            method = self.methods[0]
        return CalibrationConfig(
            method=method,
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
            "method": self.method if isinstance(self.method, str) else list(self.method),
            "metric": metric_name(self.metric),
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


#: The flat keywords that fill a :class:`SweepPlan` (its fields); the other settings keywords fill
#: :class:`SweepSettings`.
PLAN_KEYWORDS = tuple(f.name for f in fields(SweepPlan))


def plan_and_settings(
    plan: Optional[SweepPlan], settings: Optional[SweepSettings], options: Dict[str, Any], call: str
) -> Tuple[SweepPlan, SweepSettings]:
    """The plan and settings of a sweep given as objects, flat keywords, or both.

    ``options`` holds flat keywords: the fields of :class:`SweepPlan` (:data:`PLAN_KEYWORDS`;
    ``seeds`` may be a count, ``device`` a mapping) fill the plan, every other keyword a field
    of :class:`SweepSettings` (:func:`~nabn_onnx.settings.with_options`). ``options`` is emptied.

    Raises:
        TypeError: no plan and no ``etas``; a plan and plan keywords; an unknown keyword.
    """
    plan_options = {key: options.pop(key) for key in PLAN_KEYWORDS if key in options}
    if plan is None:
        if "etas" not in plan_options:
            raise TypeError(f"{call}() needs etas= (the noise scales) or a SweepPlan")
        plan = SweepPlan.of(
            plan_options.pop("noise", "mul"),
            plan_options.pop("etas"),
            plan_options.pop("seeds", 5),
            device=plan_options.pop("device", None),
            **plan_options,
        )
    elif plan_options:
        raise TypeError(f"{call}() got a SweepPlan and its keyword(s) {', '.join(sorted(plan_options))}: give one")
    if options.get("providers") is not None:
        options["providers"] = tuple(options["providers"]) or None
    settings = with_options(settings if settings is not None else SweepSettings(), options, call)
    options.clear()
    return plan, settings
