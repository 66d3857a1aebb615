"""Errors that are the user's to fix.

A :class:`NabnError` carries one line that says what is wrong and what to do; the
CLI prints it and exits 1. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["NabnError", "ModelError", "DataError", "NoiseConfigError", "NothingToDoError", "ResourceError"]


class NabnError(Exception):
    """A problem with the user's input: printed as one line, exit code 1."""


class ModelError(NabnError):
    """The model file is missing, unreadable, invalid or unsupported."""


class DataError(NabnError):
    """Calibration or test data does not fit the model."""


class NoiseConfigError(NabnError):
    """Noise parameters are out of range."""


class NothingToDoError(NabnError):
    """The model has nothing the requested operation applies to."""


class ResourceError(NabnError):
    """The job needs more of the machine than it has (a batch larger than the memory available)."""
