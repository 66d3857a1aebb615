"""nabn-onnx: Noise-Aware BatchNorm for ONNX models on analog PIM hardware."""

__version__ = "0.1.0"

from .api import inject, inspect_model, split
from .calibration import CalibrationReport, CalibrationResult, Estimator, NabnSession, TemporalNoise, calibrate
from .evaluation import diagnose, evaluate, sweep
from .errors import DataError, ModelError, NabnError, NoiseConfigError, NothingToDoError
from .images import ImageFolder
from .io import load_model, save_model
from .noise import AddNoise, DeviceNoise, IdealDevice, MulNoise, NoiseModel, PCMNoise, RRAMCMONoise, RRAMNoise, make_noise
from .passes import AnalogIO, InjectWeightNoisePass, InsertAnalogIOPass, Pass, PassResult, SplitBatchNormPass, StripAnalogIOPass
from .evaluation.drift import drift_sweep

__all__ = [
    "__version__",
    "calibrate", "split", "inject", "inspect_model", "NabnSession", "TemporalNoise", "CalibrationReport", "CalibrationResult", "Estimator",
    "NabnError", "ModelError", "DataError", "NoiseConfigError", "NothingToDoError",
    "load_model", "save_model", "ImageFolder",
    "NoiseModel", "MulNoise", "AddNoise", "make_noise",
    "DeviceNoise", "PCMNoise", "RRAMNoise", "RRAMCMONoise", "IdealDevice",
    "Pass", "PassResult", "SplitBatchNormPass", "InjectWeightNoisePass",
    "AnalogIO", "InsertAnalogIOPass", "StripAnalogIOPass",
    "evaluate", "sweep", "diagnose", "drift_sweep",
]
