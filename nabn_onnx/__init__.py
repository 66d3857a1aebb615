"""nabn-onnx: Noise-Aware BatchNorm for ONNX models on analog PIM hardware."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version

try:
    # the installed distribution's version, so there is one source of truth: pyproject.toml
    __version__: str = _distribution_version("nabn-onnx")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

from .analog import insert_analog_io, strip_analog_io
from .api import inject, inspect_model, split
from .calibration import (
    CalibrationConfig,
    CalibrationReport,
    CalibrationResult,
    Calibrator,
    Estimator,
    InjectConfig,
    NabnSession,
    SplitConfig,
    TemporalNoise,
    calibrate,
)
from .data import IMAGENET_MEAN, IMAGENET_STD, ImageFolder
from .errors import DataError, ModelError, NabnError, NoiseConfigError, NothingToDoError
from .evaluation import (
    CheckConfig,
    CheckReport,
    DiagnoseConfig,
    DriftConfig,
    EvalConfig,
    SweepPlan,
    SweepSettings,
    Threshold,
    check,
    diagnose,
    drift_sweep,
    evaluate,
    make_executor,
    run_sweep,
    sweep,
)
from .model import load_model, save_model
from .noise import (
    AddNoise,
    DeviceNoise,
    IdealDevice,
    MulNoise,
    NoiseModel,
    PCMNoise,
    RRAMCMONoise,
    RRAMNoise,
    make_noise,
)
from .passes import (
    AnalogIO,
    InjectWeightNoisePass,
    InsertAnalogIOPass,
    Pass,
    PassResult,
    SplitBatchNormPass,
    StripAnalogIOPass,
)
from .settings import DataSettings, LayerSelection, RuntimeSettings

__all__ = [
    "__version__",
    "calibrate",
    "split",
    "inject",
    "inspect_model",
    "insert_analog_io",
    "strip_analog_io",
    "Calibrator",
    "CalibrationConfig",
    "SplitConfig",
    "InjectConfig",
    "DataSettings",
    "LayerSelection",
    "RuntimeSettings",
    "EvalConfig",
    "CheckConfig",
    "DiagnoseConfig",
    "DriftConfig",
    "NabnSession",
    "TemporalNoise",
    "CalibrationReport",
    "CalibrationResult",
    "Estimator",
    "NabnError",
    "ModelError",
    "DataError",
    "NoiseConfigError",
    "NothingToDoError",
    "load_model",
    "save_model",
    "ImageFolder",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NoiseModel",
    "MulNoise",
    "AddNoise",
    "make_noise",
    "DeviceNoise",
    "PCMNoise",
    "RRAMNoise",
    "RRAMCMONoise",
    "IdealDevice",
    "Pass",
    "PassResult",
    "SplitBatchNormPass",
    "InjectWeightNoisePass",
    "AnalogIO",
    "InsertAnalogIOPass",
    "StripAnalogIOPass",
    "evaluate",
    "sweep",
    "diagnose",
    "drift_sweep",
    "run_sweep",
    "SweepPlan",
    "SweepSettings",
    "make_executor",
    "check",
    "CheckReport",
    "Threshold",
]
