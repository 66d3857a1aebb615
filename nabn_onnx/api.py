"""The library calls behind the CLI commands (besides :func:`nabn_onnx.calibrate`)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Optional

from onnx import ModelProto

from .calibration import InjectConfig, InjectOptions, SplitConfig, SplitOptions, count_batches, fill_inserted_stats
from .data import DataLike, check_batching
from .errors import NabnError, NothingToDoError
from .model import (
    ModelLike,
    check_output,
    find_analog_layers,
    from_model,
    load_model,
    record,
    save_model,
    select_layers,
    skip_summary,
)
from .noise import NoiseModel
from .passes.base import PassResult
from .passes.inject import InjectWeightNoisePass
from .passes.split import SplitBatchNormPass
from .progress import Progress

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["split", "inject", "inspect_model"]


def _load_copy(model: ModelLike) -> ModelProto:
    return load_model(copy.deepcopy(model) if isinstance(model, ModelProto) else model)


def split(
    model: ModelLike,
    data: Optional[DataLike] = None,
    config: Optional[SplitConfig] = None,
    *,
    output=None,
    external_data: Optional[bool] = None,
    **options: Unpack[SplitOptions],
) -> PassResult:
    """Insert a BatchNormalization after every selected analog layer that lacks one.

    Args:
        model: path, ``ModelProto`` or ``onnx_graphsurgeon.Graph`` (not modified).
        data: optional calibration data; with it the inserted BatchNorms get the clean
            statistics measured on it, without it the exact-identity placeholder.
        config: which layers (``layers``), and how the data is measured; or give them as flat
            keywords: ``include=``/``exclude=`` (regular expressions of layer names),
            ``batch_size=``, ``max_batches=``, ``estimator=``, ``providers=``, ``show_progress=``.
        output: save the result here (atomically).
        external_data: store the output's tensors in ``<output>.data`` (None: only above 2 GB).
        **options: flat settings keywords (:class:`~nabn_onnx.calibration.config.SplitOptions`).

    Returns:
        The pass result: ``model`` (an ``onnx_graphsurgeon.Graph`` when one was given, else a
        ``ModelProto``), ``modified`` and ``details`` (inserted, skipped).
    """
    config = SplitConfig.build(config, options)
    include, exclude = config.layers.include, config.layers.exclude
    if output is not None:
        check_output(model, output, {"the calibration data": data})
    if data is not None:
        check_batching(data, config.data.batch_size, config.data.max_batches, min_batch=2)
    proto = _load_copy(model)
    result = SplitBatchNormPass(include=include, exclude=exclude)(proto)
    selected = select_layers(find_analog_layers(proto), include, exclude)
    if not result.modified and not selected:
        raise NothingToDoError(
            "no analog layer (Conv, ConvTranspose, Gemm, MatMul with a constant weight) "
            + ("matches --include/--exclude" if include or exclude else "in the model")
            + ": nothing to split"
        )
    if not result.modified and not any(layer.bn is not None for layer in selected):
        # every selected layer was skipped: writing the input back unchanged would look like success
        raise NothingToDoError(f"no analog layer can take a BatchNorm: {skip_summary(selected)}")
    if data is not None and result.details["inserted"]:
        total = count_batches(data, config.data.batch_size, config.data.max_batches)
        with Progress("measuring", total, enabled=config.runtime.show_progress) as bar:
            fill_inserted_stats(proto, proto, result.details["inserted"], data, config.reading(), progress=bar)
    record(
        proto,
        "split",
        {
            "inserted": len(result.details["inserted"]),
            "include": include,
            "exclude": exclude,
            "measured": data is not None,
        },
    )
    if output is not None:
        save_model(proto, output, external_data=external_data)
    result.model = from_model(proto, like=model)
    return result


def inject(
    model: ModelLike,
    noise: Optional[NoiseModel] = None,
    config: Optional[InjectConfig] = None,
    *,
    output=None,
    external_data: Optional[bool] = None,
    **options: Unpack[InjectOptions],
) -> PassResult:
    """Write one simulated chip's noisy weights into the analog layers.

    The settings come as an :class:`~nabn_onnx.calibration.config.InjectConfig` or as its
    flat keywords (``noise=``, ``include=``, ``exclude=``), which fill in ``config``'s fields,
    as for :func:`split` and :func:`~nabn_onnx.calibrate`. ``inject(model, noise)`` and
    ``inject(model, noise, include=...)`` work as before.

    Args:
        model: path, ``ModelProto`` or ``onnx_graphsurgeon.Graph`` (not modified).
        noise: the noise model and seed (the ``noise`` field of ``config``).
        config: the noise and which layers get it (``layers``).
        output: save the result here (atomically).
        external_data: store the output's tensors in ``<output>.data`` (None: only above 2 GB).
        **options: flat settings keywords (:class:`~nabn_onnx.calibration.config.InjectOptions`):
            ``include=`` (regular expression of layer names that get noise; all by default),
            ``exclude=`` (regular expression of layer names that stay clean).

    Returns:
        The pass result; ``model`` is an ``onnx_graphsurgeon.Graph`` when one was given.

    Raises:
        NabnError: the model already carries injected noise, or has no analog weight.
        TypeError: no noise model given.
    """
    if noise is not None:
        options = {**options, "noise": noise}  # type: ignore[typeddict-unknown-key]
    config = InjectConfig.build(config, options)
    noise_model, include, exclude = config.noise, config.layers.include, config.layers.exclude
    assert noise_model is not None  # InjectConfig.build refuses a missing noise
    if output is not None:
        check_output(model, output)
    proto = _load_copy(model)
    result = InjectWeightNoisePass(noise_model, include=include, exclude=exclude)(proto)
    if "already" in result.details:
        raise NabnError(
            f"the model already carries injected noise ({result.details['already']}); inject into the clean model"
        )
    if not result.modified:
        layers = select_layers(find_analog_layers(proto), include, exclude)
        why = skip_summary(layers, noise=True)
        raise NothingToDoError(
            "no analog layer with a constant weight matched: nothing to put noise on" + (f" ({why})" if why else "")
        )
    if output is not None:
        save_model(proto, output, external_data=external_data)
    result.model = from_model(proto, like=model)
    return result


def inspect_model(model: ModelLike, include: Optional[str] = None, exclude: Optional[str] = None) -> str:
    """A table of the analog layers: op, channels, weight, BatchNorm (original, inserted, none) and why skipped."""
    proto = _load_copy(model)
    layers = find_analog_layers(proto)
    selected = {id(x) for x in select_layers(layers, include, exclude)}
    rows = [("layer", "op", "channels", "weight", "BatchNorm", "note")]
    for layer in layers:
        if layer.bn is not None:
            bn = f"{layer.bn_origin}: {layer.bn.name or layer.bn.output[0]}"
        else:
            bn = "none"
        if layer.bn is None and layer.skip_reason:
            note = f"skipped: {layer.skip_reason}"
        elif layer.bn is None and id(layer) not in selected:
            note = "not selected (--include/--exclude)"
        elif layer.bn is None:
            note = "split would insert one"
        else:
            note = ""
        rows.append((layer.name, layer.op_type, str(layer.channels or "?"), layer.weight or "-", bn, note))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    counts = {k: sum(1 for x in layers if (x.bn_origin or "none") == k) for k in ("original", "inserted", "none")}
    lines.append(
        f"{len(layers)} analog layer(s): {counts['original']} with an original BatchNorm, "
        f"{counts['inserted']} with an inserted one, {counts['none']} without"
    )
    return "\n".join(lines)
