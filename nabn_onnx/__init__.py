"""nabn-onnx: Noise-Aware BatchNorm for ONNX models on analog PIM hardware."""

__version__ = "0.1.0"

from .calibration import CalibrationReport, CalibrationResult, Estimator, calibrate
from .errors import DataError, ModelError, NabnError, NoiseConfigError, NothingToDoError
from .io import load_model, save_model
from .noise import AddNoise, MulNoise, NoiseModel, make_noise
from .passes import InjectWeightNoisePass, Pass, PassResult, SplitBatchNormPass

__all__ = [
    "__version__",
    "calibrate", "CalibrationReport", "CalibrationResult", "Estimator",
    "NabnError", "ModelError", "DataError", "NoiseConfigError", "NothingToDoError",
    "load_model", "save_model",
    "NoiseModel", "MulNoise", "AddNoise", "make_noise",
    "Pass", "PassResult", "SplitBatchNormPass", "InjectWeightNoisePass",
]
