"""Where the sample models live and what they are, without PyTorch (``_torch_models`` defines them)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["INPUT_SIZE", "MODEL_NAMES", "NUM_CLASSES", "SAMPLE_MODELS_DIR"]

SAMPLE_MODELS_DIR = Path(__file__).resolve().parents[2] / "sample_models"
INPUT_SIZE = 16
NUM_CLASSES = 10
MODEL_NAMES = ("resnet", "mobilenet")
