"""What the given model is and what can be recalibrated: the job a calibration starts from.

With ``noise`` the model is clean and the chip is simulated on it (mode ``"simulated"``).
With ``reference`` the model is the chip and ``reference`` the clean model (``"reference"``);
both are split alike where the exporter folded BatchNorms. With neither, the model is the
chip and no clean model is known (``"chip"``): only BatchNorms holding clean statistics are
recalibrated (:func:`prepare_chip`).
"""

from __future__ import annotations

import copy
from typing import Optional

from onnx import ModelProto

from ..errors import NabnError, NothingToDoError
from ..model import (
    ModelLike,
    batchnorm_nodes,
    find_analog_layers,
    load_model,
    read_record,
    select_layers,
    skip_summary,
)
from ..passes import is_placeholder
from ..passes.split import SplitBatchNormPass
from ..passes.write_stats import bn_epsilon, read_bn_params
from ..runtime import plan_batch
from .batchnorms import name_batchnorms
from .config import CalibrationConfig
from .job import CalibrationJob

__all__ = ["prepare_job", "prepare_chip", "nothing_to_calibrate", "NEEDS_CLEAN"]

#: Why a method needs the clean model, and how to give it.
NEEDS_CLEAN = (
    "the clean model is needed to tell what the noise changed: pass it as --reference (API: reference=), "
    "or calibrate the clean model with --noise to simulate the chip"
)


def prepare_job(model: ModelLike, reference: Optional[ModelLike], config: CalibrationConfig) -> CalibrationJob:
    """Load, decide what the model is, split where a clean model is known, and plan batches.

    Args:
        model: the model to calibrate (a copy is loaded).
        reference: the clean model when ``model`` is the chip, else None.
        config: the calibration's settings.

    Returns:
        The job as :meth:`Calibrator.prepare` leaves it (``model``..``plan`` decided).

    Raises:
        NabnError: the inputs do not fit (noise on a noisy model, BatchNorms that do not match).
        NothingToDoError: nothing can be recalibrated.
    """
    noise, layers, providers = config.noise, config.layers, config.runtime.providers
    proto = _load_copy(model)
    if noise is not None and read_record(proto, "inject") is not None:
        raise NabnError(
            "the model already carries injected noise (nabn.inject); calibrate the clean model with "
            "--noise, or drop --noise to calibrate this chip as it is"
        )
    if noise is None and reference is None:
        job = prepare_chip(proto, config)
    else:
        split = SplitBatchNormPass(include=layers.include, exclude=layers.exclude)
        inserted = list(split(proto).details.get("inserted", []))
        name_batchnorms(proto)
        names = [n.name for n in batchnorm_nodes(proto)]
        if not names:
            raise NothingToDoError(nothing_to_calibrate(proto))
        clean = proto
        mode = "simulated"
        if reference is not None:
            mode = "reference"
            clean = _load_copy(reference)
            split(clean)
            name_batchnorms(clean)
            if [n.name for n in batchnorm_nodes(clean)] != names:
                raise NabnError(
                    "the reference model's BatchNorms do not match the model's: give the same model before noise"
                )
        recorded = set(read_record(proto, "inserted_bn", []) or [])
        params = read_bn_params(proto)
        eps_of = {n.name: bn_epsilon(n) for n in batchnorm_nodes(proto)}
        job = CalibrationJob.start(
            model=proto,
            clean=clean,
            mode=mode,
            method=config.method,
            names=names,
            placeholders=[n for n in names if n in recorded and is_placeholder(params[n], eps_of[n])],
            inserted=inserted,
            origin={n: "inserted" if n in recorded else "original" for n in names},
        )
    job.plan = plan_batch(job.model, providers)
    return job


def prepare_chip(proto: ModelProto, config: CalibrationConfig) -> CalibrationJob:
    """The model is the chip and no clean model is known: recalibrate what holds clean statistics.

    BatchNorms inserted without clean statistics, BatchNorms whose statistics are computed at
    run time and selected analog layers without a BatchNorm are left alone, with the reason.

    Raises:
        NabnError: ``delta`` was asked for (it needs the clean model).
        NothingToDoError: nothing holds clean statistics.
    """
    if config.method == "delta":
        raise NabnError(f"method 'delta' needs the clean model: {NEEDS_CLEAN}")
    name_batchnorms(proto)
    recorded = set(read_record(proto, "inserted_bn", []) or [])
    params = read_bn_params(proto)
    names, left, origin = [], {}, {}
    for node in batchnorm_nodes(proto):
        if node.name in recorded and is_placeholder(params[node.name], bn_epsilon(node)):
            left[node.name] = (
                "inserted without clean statistics: run 'split --data' on the clean model, or pass --reference"
            )
        elif any(params[node.name][k] is None for k in ("mean", "var")):
            left[node.name] = "statistics are computed at run time, not stored"
        else:
            names.append(node.name)
            origin[node.name] = "inserted" if node.name in recorded else "original"
    layers = find_analog_layers(proto)
    include, exclude = config.layers.include, config.layers.exclude
    selected = {id(layer.node) for layer in select_layers(layers, include, exclude)}
    for layer in layers:
        if layer.bn is None and id(layer.node) in selected:
            left[layer.name] = (
                "no BatchNorm and no clean model to measure one on: run 'split --data' on the clean "
                "model before programming the chip, or pass --reference"
            )
    if not names and (not layers or all(layer.skip_reason and layer.bn is None for layer in layers)):
        raise NothingToDoError(nothing_to_calibrate(proto))
    if not names:
        raise NothingToDoError(
            "nothing to recalibrate on this chip without its clean model: it has no BatchNorm holding trained "
            f"statistics ({len(left)} analog layer(s) or BatchNorm(s) left alone); {NEEDS_CLEAN}"
        )
    return CalibrationJob.start(
        model=proto, clean=None, mode="chip", method="paper", names=names, origin=origin, left=left
    )


def nothing_to_calibrate(proto: ModelProto) -> str:
    """The message when a model has neither a BatchNorm nor an analog layer to put one after."""
    why = skip_summary(find_analog_layers(proto))
    return (
        "the model has no BatchNormalization and no analog layer (Conv, ConvTranspose, Gemm, MatMul with a "
        "constant weight) to put one after" + (f" ({why})" if why else "")
    )


def _load_copy(model: ModelLike) -> ModelProto:
    return load_model(copy.deepcopy(model) if isinstance(model, ModelProto) else model)
