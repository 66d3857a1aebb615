"""InsertAnalogIOPass / StripAnalogIOPass: the analog layer's periphery as graph operators.

The weight-noise models (:mod:`nabn_onnx.noise`) change the crossbar's conductances; these
passes add what happens to the *activations* on their way through it, so any model runs
the non-idealities in onnxruntime::

    Before:   X --Conv(W, b)--> Y

    After:    X --[DAC]--> X' --Conv(W)--> Y_raw --[+noise]--[ADC]--> --Add(b)--> Y

    DAC:      X'  = Round(Clip(X, -B_in, B_in) / d_in) * d_in,       d_in  = B_in / (2^(dac_bits-1) - 1)
    noise:    Y_n = Y_raw + RandomNormalLike(Y_raw, scale = out_noise * u)       (fresh each run)
    ADC:      Y_a = Round(Clip(Y_n, -B_out, B_out) / d_out) * d_out,  d_out = B_out / (2^(adc_bits-1) - 1)

The units follow aihwkit's forward ``IOParameters`` (simulator/parameters/io.py), where an
analog layer computes ``W/max|W| @ x/max|x|``: per layer ``u = max|W| * max|X|``, with
``max|X|`` measured once on calibration data (:func:`measure_input_ranges`, a static
stand-in for aihwkit's per-vector noise management). ``B_in = inp_bound * max|X|``
(aihwkit's ``inp_bound`` = 1.0, io.py:46), ``B_out = out_bound * u`` (``out_bound`` = 12,
io.py:74), and the output noise std is ``out_noise * u`` (``out_noise`` = 0.06, io.py:77).
aihwkit's default resolutions, ``inp_res = 1/(2^7 - 2)`` and ``out_res = 1/(2^9 - 2)``
(io.py:56, 105), are close to 7-bit and 9-bit signed converters here.

The bias stays digital, as in aihwkit (``mapping.digital_bias``): a Conv/ConvTranspose/Gemm
bias is taken off the node and added after the ADC (Gemm's ``beta`` folded in). Each stage
is optional (``out_noise = 0``, ``adc_bits = None``, ``dac_bits = None``); a layer gets
nothing when none is on.

Everything inserted is named ``nabn_analog/...`` and listed under ``nabn.analog`` in
``metadata_props``; :class:`StripAnalogIOPass` removes exactly that and gives back the
original graph. The noise is seeded (``seed`` plus the layer's index) so a session's
sequence of draws is reproducible; each run of the session draws anew, so calibrating such
a model pools BatchNorm statistics over as many draws as there are batches.
"""

from __future__ import annotations

import copy
import functools
import logging
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

from ..errors import NabnError, NoiseConfigError
from ..model import GsGraph, find_analog_layers, is_gs_graph, read_record, record, to_model
from .base import Pass, PassResult
from .split import select_layers

__all__ = ["AnalogIO", "InsertAnalogIOPass", "StripAnalogIOPass", "measure_input_ranges", "PREFIX"]

logger = logging.getLogger(__name__)

PREFIX = "nabn_analog/"
_RECORD = "analog"
_NP: Dict[int, type] = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64}


@dataclass(frozen=True)
class AnalogIO:
    """Settings of the analog periphery (see the module docstring for the units).

    Attributes:
        out_noise: output noise std in units of ``u = max|W| max|X|`` (0: off; aihwkit's default 0.06).
        adc_bits: ADC resolution in bits, sign included (None: no ADC).
        out_bound: ADC range in units of ``u`` (aihwkit's default 12).
        dac_bits: DAC resolution in bits, sign included (None: no DAC).
        inp_bound: DAC range in units of the measured ``max|X|`` (aihwkit's default 1).
        seed: seed of the first layer's RandomNormalLike (layer ``i`` gets ``seed + i``).
    """

    out_noise: float = 0.0
    adc_bits: Optional[int] = None
    out_bound: float = 12.0
    dac_bits: Optional[int] = None
    inp_bound: float = 1.0
    seed: int = 0

    def __post_init__(self):
        for name in ("out_noise", "out_bound", "inp_bound"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                raise NoiseConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("out_bound", "inp_bound"):
            if getattr(self, name) == 0:
                raise NoiseConfigError(f"{name} must be > 0")
        for name in ("adc_bits", "dac_bits"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 2 <= value <= 24
            ):
                raise NoiseConfigError(
                    f"{name} must be an integer from 2 to 24 (or None for no converter), got {value!r}"
                )
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**31:
            raise NoiseConfigError(f"seed must be an integer in [0, 2**31), got {self.seed!r}")
        if not (self.out_noise or self.adc_bits or self.dac_bits):
            raise NoiseConfigError("nothing to insert: give out_noise > 0, adc_bits or dac_bits")


def _opset(model: ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


def _constant(new_inits: List[TensorProto], tag: str, np_type: type, name: str, value) -> str:
    """Add ``value`` as the initializer ``tag + name`` (to ``new_inits``); its name."""
    new_inits.append(numpy_helper.from_array(np.asarray(value, dtype=np_type), tag + name))
    return tag + name


def _elem_type(model: ModelProto, weight: str) -> int:
    for t in model.graph.initializer:
        if t.name == weight:
            return t.data_type
    return TensorProto.FLOAT


def measure_input_ranges(
    model: Union[ModelProto, GsGraph],
    data,
    *,
    batch_size: int = 64,
    max_batches: Optional[int] = 8,
    include: Optional[str] = None,
    exclude: Optional[str] = None,
    providers: Optional[Sequence[str]] = None,
) -> Dict[str, float]:
    """``{layer name: max|X|}`` of each analog layer's input over the data (reduced in the graph)."""
    from ..data import input_specs, iter_batches
    from ..runtime import MEASURE, make_session

    probe = to_model(model) if is_gs_graph(model) else copy.deepcopy(model)
    layers = [layer for layer in select_layers(find_analog_layers(probe), include, exclude) if layer.weight]
    outputs = {}
    for i, layer in enumerate(layers):
        x = layer.node.input[0]
        name = f"{PREFIX}probe/{i}"
        probe.graph.node.extend(
            [
                helper.make_node("Abs", [x], [name + "/abs"]),
                helper.make_node("ReduceMax", [name + "/abs"], [name + "/max"], keepdims=0),
                helper.make_node("Cast", [name + "/max"], [name], to=TensorProto.FLOAT),
            ]
        )
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, []))
        outputs[layer.name] = name
    if not outputs:
        return {}
    session = make_session(probe, optimization=MEASURE, providers=providers)
    fetch = list(outputs.values())
    ranges = dict.fromkeys(outputs, 0.0)
    for batch in iter_batches(data, input_specs(probe), batch_size=batch_size, max_batches=max_batches):
        for layer_name, value in zip(outputs, session.run(fetch, batch.feeds)):
            ranges[layer_name] = max(ranges[layer_name], float(value))
    return ranges


class InsertAnalogIOPass(Pass):
    """Insert DAC, output noise and ADC around each analog layer.

    Args:
        settings: the periphery (:class:`AnalogIO`).
        input_ranges: ``{layer name: max|X|}`` from :func:`measure_input_ranges`; needed
            for the DAC, the ADC and the output noise of every layer they act on.
        include: regular expression on layer names; only matching layers are touched.
        exclude: regular expression on layer names; matching layers are left alone.
    """

    def __init__(
        self,
        settings: AnalogIO,
        input_ranges: Dict[str, float],
        include: Optional[str] = None,
        exclude: Optional[str] = None,
    ):
        self.settings = settings
        self.input_ranges = dict(input_ranges)
        self.include = include
        self.exclude = exclude

    def call(self, model: ModelProto) -> PassResult:
        """Wrap each selected analog layer in DAC, output noise, ADC and a digital bias, unless already done."""
        if read_record(model, _RECORD) is not None:
            logger.warning("model already carries analog periphery ops; not inserting again")
            return PassResult(model, False, {"layers": []})
        if _opset(model) < 11:
            raise NabnError(
                f"the analog periphery needs opset 11 or later (Round, Clip with inputs); the model has {_opset(model)}"
            )
        s = self.settings
        inits = {t.name: t for t in model.graph.initializer}
        done: List[Dict[str, object]] = []
        skipped: Dict[str, str] = {}
        new_inits: List[TensorProto] = []
        for index, layer in enumerate(select_layers(find_analog_layers(model), self.include, self.exclude)):
            if layer.weight is None:
                skipped[layer.name] = layer.noise_skip_reason or "no constant weight"
                continue
            if layer.name not in self.input_ranges:
                skipped[layer.name] = "no measured input range"
                continue
            node = layer.node
            dtype = _elem_type(model, layer.weight)
            np_type = _NP.get(dtype, np.float32)
            x_max = float(self.input_ranges[layer.name])
            w_max = float(np.abs(numpy_helper.to_array(inits[layer.weight])).max())
            unit = w_max * x_max
            if unit == 0 or not np.isfinite(unit):
                skipped[layer.name] = f"zero or non-finite range (max|W| = {w_max}, max|X| = {x_max})"
                continue
            tag = f"{PREFIX}{index}/"
            inputs = list(node.input)
            entry: Dict[str, object] = {
                "layer": layer.name,
                "op": node.op_type,
                "tag": tag,
                "output": node.output[0],
                "inputs": inputs,
                "max_x": x_max,
                "max_w": w_max,
            }
            const = functools.partial(_constant, new_inits, tag, np_type)

            before: List = []
            nodes: List = []
            if s.dac_bits:
                bound = s.inp_bound * x_max
                step = bound / (2 ** (s.dac_bits - 1) - 1)
                x, x_out = node.input[0], tag + "dac"
                before += [
                    helper.make_node(
                        "Clip",
                        [x, const("dac_lo", -bound), const("dac_hi", bound)],
                        [tag + "dac_clip"],
                        name=tag + "dac_clip",
                    ),
                    helper.make_node(
                        "Div", [tag + "dac_clip", const("dac_step", step)], [tag + "dac_div"], name=tag + "dac_div"
                    ),
                    helper.make_node("Round", [tag + "dac_div"], [tag + "dac_round"], name=tag + "dac_round"),
                    helper.make_node("Mul", [tag + "dac_round", const("dac_step2", step)], [x_out], name=tag + "dac"),
                ]
                node.input[0] = x_out
            bias = None
            if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 2 and node.input[2]:
                bias = node.input[2]
            y = node.output[0]
            current = tag + "raw"
            node.output[0] = current
            if s.out_noise:
                nodes += [
                    helper.make_node(
                        "RandomNormalLike",
                        [current],
                        [tag + "noise"],
                        name=tag + "noise",
                        mean=0.0,
                        scale=float(s.out_noise * unit),
                        seed=float(s.seed + index),
                    ),
                    helper.make_node("Add", [current, tag + "noise"], [tag + "noisy"], name=tag + "noisy"),
                ]
                current = tag + "noisy"
            if s.adc_bits:
                bound = s.out_bound * unit
                step = bound / (2 ** (s.adc_bits - 1) - 1)
                nodes += [
                    helper.make_node(
                        "Clip",
                        [current, const("adc_lo", -bound), const("adc_hi", bound)],
                        [tag + "adc_clip"],
                        name=tag + "adc_clip",
                    ),
                    helper.make_node(
                        "Div", [tag + "adc_clip", const("adc_step", step)], [tag + "adc_div"], name=tag + "adc_div"
                    ),
                    helper.make_node("Round", [tag + "adc_div"], [tag + "adc_round"], name=tag + "adc_round"),
                    helper.make_node(
                        "Mul", [tag + "adc_round", const("adc_step2", step)], [tag + "adc"], name=tag + "adc"
                    ),
                ]
                current = tag + "adc"
            if bias is not None:
                values = numpy_helper.to_array(inits[bias]).astype(np.float64) if bias in inits else None
                if values is None:
                    skipped[layer.name] = "bias is not a constant"  # undo this layer's rewiring
                    del node.input[:]
                    node.input.extend(inputs)
                    node.output[0] = y
                    new_inits = [t for t in new_inits if not t.name.startswith(tag)]
                    continue
                if node.op_type == "Gemm":
                    beta = next((a.f for a in node.attribute if a.name == "beta"), 1.0)
                    values = values * beta
                else:  # channels on axis 1 of an N-d output
                    rank = len(inits[layer.weight].dims)
                    values = values.reshape([-1] + [1] * (rank - 2))
                del node.input[2]
                nodes.append(helper.make_node("Add", [current, const("bias", values)], [y], name=tag + "bias"))
            else:
                nodes.append(helper.make_node("Identity", [current], [y], name=tag + "out"))
            position = list(model.graph.node).index(node)
            for offset, new in enumerate([*before, node, *nodes]):
                if new is not node:
                    model.graph.node.insert(position + offset, new)
            done.append(entry)
        if not done:
            return PassResult(model, False, {"layers": [], "skipped": skipped})
        model.graph.initializer.extend(new_inits)
        record(model, _RECORD, {"settings": asdict(s), "layers": done})
        logger.info("inserted analog periphery around %d layer(s), %d skipped", len(done), len(skipped))
        return PassResult(model, True, {"layers": [e["layer"] for e in done], "skipped": skipped})


class StripAnalogIOPass(Pass):
    """Remove what :class:`InsertAnalogIOPass` inserted: the original graph comes back."""

    def call(self, model: ModelProto) -> PassResult:
        """Restore the recorded layers' inputs and outputs and drop the inserted ops and initializers."""
        recorded = read_record(model, _RECORD)
        if recorded is None:
            return PassResult(model, False, {"layers": []})
        graph = model.graph
        # The chain starts at "<tag>raw": its producer (the analog node, or a BatchNorm that
        # split put after it since) writes the original output again; the analog node (found by
        # its op and weight) gets its original inputs back, the DAC'd input and the bias.
        for entry in recorded["layers"]:
            raw = entry["tag"] + "raw"
            producers = [n for n in graph.node if not n.name.startswith(PREFIX) and raw in n.output]
            analog = [
                n
                for n in graph.node
                if not n.name.startswith(PREFIX)
                and len(n.input) > 1
                and n.input[1] == entry["inputs"][1]
                and n.op_type == entry["op"]
            ]
            if len(producers) != 1 or len(analog) != 1:
                raise NabnError(f"cannot find layer {entry['layer']} of nabn.analog in the graph: was it edited since?")
            outputs = list(producers[0].output)
            producers[0].output[outputs.index(raw)] = entry["output"]
            del analog[0].input[:]
            analog[0].input.extend(entry["inputs"])
            _restore_bias(model, analog[0], entry)
        keep = [n for n in graph.node if not n.name.startswith(PREFIX)]
        del graph.node[:]
        graph.node.extend(keep)
        inits = [t for t in graph.initializer if not t.name.startswith(PREFIX)]
        del graph.initializer[:]
        graph.initializer.extend(inits)
        props = [p for p in model.metadata_props if p.key != "nabn." + _RECORD]
        del model.metadata_props[:]
        model.metadata_props.extend(props)
        return PassResult(model, True, {"layers": [e["layer"] for e in recorded["layers"]]})


def _restore_bias(model: ModelProto, node, entry: Dict) -> None:
    """Rebuild the layer's original bias initializer from the digital bias when it is gone.

    The insert leaves the original bias in place, unread; a tool that drops initializers no
    node reads (onnx-graphsurgeon's export does) removes it. The digital bias holds its
    values (times Gemm's ``beta``): exact for Conv and ConvTranspose, and for Gemm when
    ``beta`` is 1; otherwise within one rounding of the bias's type.
    """
    inputs = entry["inputs"]
    if len(inputs) < 3 or not inputs[2]:
        return
    name = inputs[2]
    graph = model.graph
    known = {t.name for t in graph.initializer} | {i.name for i in graph.input}
    if name in known or any(name in n.output for n in graph.node):
        return
    digital = next((t for t in graph.initializer if t.name == entry["tag"] + "bias"), None)
    if digital is None:
        raise NabnError(f"cannot restore the bias {name!r} of layer {entry['layer']}: it is gone from the graph")
    values = numpy_helper.to_array(digital).reshape(-1)
    beta = next((a.f for a in node.attribute if a.name == "beta"), 1.0) if node.op_type == "Gemm" else 1.0
    if beta != 1.0:
        values = (values.astype(np.float64) / beta).astype(values.dtype)
    graph.initializer.append(numpy_helper.from_array(values, name))
    logger.debug("restored the bias %s of %s from the digital bias", name, entry["layer"])
