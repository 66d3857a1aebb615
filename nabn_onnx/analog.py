"""Insert or strip a model's analog periphery (output noise, ADC, DAC): the call behind ``nabn-onnx analog``.

:func:`insert_analog_io` measures each analog layer's input range on calibration data, puts
the periphery around the layers (:class:`~nabn_onnx.passes.analog_io.InsertAnalogIOPass`)
and saves the model; :func:`strip_analog_io` removes exactly what was inserted
(:class:`~nabn_onnx.passes.analog_io.StripAnalogIOPass`), giving back the original graph.
Both refuse, with a :class:`~nabn_onnx.errors.NabnError`, to save a model they did not change.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Union

from onnx import ModelProto

from .errors import NabnError
from .model import load_model, save_model
from .passes import PassResult
from .passes.analog_io import AnalogIO, InsertAnalogIOPass, StripAnalogIOPass, measure_input_ranges

__all__ = ["insert_analog_io", "strip_analog_io"]

#: a path, a ``ModelProto`` or an onnx-graphsurgeon graph (what :func:`nabn_onnx.model.load_model` takes)
ModelLike = Union[str, "os.PathLike[str]", ModelProto, Any]


def insert_analog_io(
    model: ModelLike,
    data: Any,
    settings: AnalogIO,
    *,
    include: Optional[str] = None,
    exclude: Optional[str] = None,
    batch_size: int = 64,
    max_batches: Optional[int] = 8,
    output: Union[str, os.PathLike, None] = None,
    external_data: Optional[bool] = None,
) -> PassResult:
    """Put the analog periphery around every selected analog layer.

    Args:
        model: path, ``ModelProto`` (changed in place) or onnx-graphsurgeon graph.
        data: calibration data (``.npz`` path, image folder or iterable of feeds), to
            measure each layer's input range.
        settings: the periphery's stages and their ranges.
        include: only layers whose name matches this regex.
        exclude: not layers whose name matches this regex.
        batch_size: batch size of the measurement.
        max_batches: measure input ranges on at most this many batches.
        output: where to save the model (not saved when None).
        external_data: store the weights beside the output (automatic above 2 GB when None).

    Returns:
        The pass's result: ``details["layers"]`` the layers changed, ``details["skipped"]``
        those left out and why.

    Raises:
        NabnError: no analog layer got the periphery.
    """
    proto = load_model(model)
    ranges = measure_input_ranges(
        proto, data, batch_size=batch_size, max_batches=max_batches, include=include, exclude=exclude
    )
    result = InsertAnalogIOPass(settings, ranges, include=include, exclude=exclude)(proto)
    if not result.modified:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(result.details.get("skipped", {}).items())[:3])
        raise NabnError("no analog layer to put the periphery around" + (f" ({reasons})" if reasons else ""))
    if output is not None:
        save_model(proto, output, external_data=external_data)
    return result


def strip_analog_io(
    model: ModelLike,
    *,
    output: Union[str, os.PathLike, None] = None,
    external_data: Optional[bool] = None,
) -> PassResult:
    """Remove the periphery :func:`insert_analog_io` inserted; the original graph comes back.

    Args:
        model: path, ``ModelProto`` (changed in place) or onnx-graphsurgeon graph.
        output: where to save the model (not saved when None).
        external_data: store the weights beside the output (automatic above 2 GB when None).

    Returns:
        The pass's result: ``details["layers"]`` the layers given back their digital form.

    Raises:
        NabnError: the model carries no periphery (no ``nabn.analog`` record).
    """
    proto = load_model(model)
    result = StripAnalogIOPass()(proto)
    if not result.modified:
        name = model if isinstance(model, (str, os.PathLike)) else "the model"
        raise NabnError(f"{name} carries no analog periphery ops (nabn.analog): nothing to strip")
    if output is not None:
        save_model(proto, output, external_data=external_data)
    return result
