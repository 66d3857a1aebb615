"""The settings of a calibration: one object, built from its parts or from flat keywords.

:class:`CalibrationConfig` is to :func:`~nabn_onnx.calibrate` what onnxruntime's
``StaticQuantConfig`` is to ``quantize``: what to do (``method``, the simulated chip's
``noise``, the ``estimator``) and how (which ``layers``, how the ``data`` is read, where the
sessions run). :class:`Reading` is the part every pass over the data of one job shares.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Tuple, TypedDict

from ..errors import NabnError
from ..noise import NoiseModel
from ..runtime import BatchPlan
from ..settings import DataSettings, LayerSelection, RuntimeSettings, with_options
from .methods import selectable_methods
from .stats import DEFAULT_ESTIMATOR, Estimator

__all__ = [
    "CalibrationConfig",
    "CalibrationOptions",
    "SplitConfig",
    "SplitOptions",
    "InjectConfig",
    "InjectOptions",
    "Reading",
    "METHODS",
]

#: The ``method="..."`` names users may ask for: ``("auto", "paper", "delta")``, from the
#: method registry (:mod:`nabn_onnx.calibration.methods`).
METHODS = selectable_methods()


class InjectOptions(TypedDict, total=False):
    """The flat keywords :func:`~nabn_onnx.inject` accepts besides ``noise`` (each fills a field of InjectConfig)."""

    include: Optional[str]
    exclude: Optional[str]


class SplitOptions(TypedDict, total=False):
    """The flat keywords :func:`~nabn_onnx.split` accepts (each fills a field of :class:`SplitConfig`)."""

    estimator: Estimator
    batch_size: int
    max_batches: Optional[int]
    include: Optional[str]
    exclude: Optional[str]
    providers: Optional[Sequence[str]]
    show_progress: bool


class CalibrationOptions(SplitOptions, total=False):
    """The flat keywords :func:`~nabn_onnx.calibrate` accepts: :class:`SplitOptions`' and these two."""

    method: str
    noise: Optional[NoiseModel]


@dataclass(frozen=True)
class CalibrationConfig:
    """What a calibration does and how.

    Attributes:
        method: ``"auto"``, ``"paper"`` or ``"delta"`` (see :mod:`nabn_onnx.calibration.methods`).
        noise: simulate this chip on the clean model (the same noise ``inject`` writes with the
            same settings); None: the model is the chip itself.
        estimator: how batch statistics are combined.
        data: batch size and number of batches.
        layers: which analog layers get a BatchNorm where the exporter folded it.
        runtime: execution providers and the progress bar.
    """

    method: str = "auto"
    noise: Optional[NoiseModel] = None
    estimator: Estimator = DEFAULT_ESTIMATOR
    data: DataSettings = field(default_factory=DataSettings)
    layers: LayerSelection = field(default_factory=LayerSelection)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)

    def __post_init__(self):
        if self.method not in METHODS:
            raise NabnError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")

    @classmethod
    def build(
        cls, config: Optional[CalibrationConfig], options: Mapping[str, Any], call: str = "calibrate"
    ) -> CalibrationConfig:
        """``config`` (default settings if None) with the flat keyword ``options`` filled in."""
        return with_options(config if config is not None else cls(), options, call)

    def reading(self, plan: Optional[BatchPlan] = None) -> Reading:
        """The settings every pass over the data shares, for a model whose batches follow ``plan``."""
        return Reading(self.estimator, self.data, self.runtime.providers, plan)

    def replace(self, **changes) -> CalibrationConfig:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Reading:
    """How each pass over the data of one job reads it and runs sessions.

    Attributes:
        estimator: how batch statistics are combined.
        data: batch size and number of batches.
        providers: onnxruntime execution providers.
        plan: how sessions take batches (fixed-batch models); None: planned per model.
    """

    estimator: Estimator = DEFAULT_ESTIMATOR
    data: DataSettings = field(default_factory=DataSettings)
    providers: Optional[Tuple[str, ...]] = None
    plan: Optional[BatchPlan] = None

    @property
    def batch_size(self) -> int:
        """Samples per batch."""
        return self.data.batch_size

    @property
    def max_batches(self) -> Optional[int]:
        """At most this many batches."""
        return self.data.max_batches


@dataclass(frozen=True)
class SplitConfig:
    """How ``split`` inserts BatchNorms and, with data, measures their clean statistics.

    Attributes:
        layers: which analog layers get a BatchNorm.
        estimator: how batch statistics are combined when measuring.
        data: batch size and number of batches when measuring.
        runtime: execution providers and the progress bar.
    """

    layers: LayerSelection = field(default_factory=LayerSelection)
    estimator: Estimator = DEFAULT_ESTIMATOR
    data: DataSettings = field(default_factory=DataSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)

    @classmethod
    def build(cls, config: Optional[SplitConfig], options: Mapping[str, Any]) -> SplitConfig:
        """``config`` (default settings if None) with the flat keyword ``options`` filled in."""
        return with_options(config if config is not None else cls(), options, "split")

    def reading(self, plan: Optional[BatchPlan] = None) -> Reading:
        """The settings the measuring pass uses."""
        return Reading(self.estimator, self.data, self.runtime.providers, plan)


@dataclass(frozen=True)
class InjectConfig:
    """Which chip ``inject`` writes into which layers.

    Attributes:
        noise: the noise model and seed (required: :meth:`build` refuses None).
        layers: which analog layers get noise (all by default).
    """

    noise: Optional[NoiseModel] = None
    layers: LayerSelection = field(default_factory=LayerSelection)

    @classmethod
    def build(cls, config: Optional[InjectConfig], options: Mapping[str, Any]) -> InjectConfig:
        """``config`` (default settings if None) with the flat keyword ``options`` filled in.

        Raises:
            TypeError: no noise model, neither in ``config`` nor as ``noise=``.
        """
        built = with_options(config if config is not None else cls(), options, "inject")
        if built.noise is None:
            raise TypeError("inject() needs the noise: give noise= or config=InjectConfig(noise)")
        return built
