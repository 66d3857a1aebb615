"""Finding the analog layers of a model and the BatchNormalization that follows each.

An *analog layer* is a node whose weight would live in a PIM crossbar: ``Conv`` and
``ConvTranspose`` of any rank, group and bias; ``Gemm``; ``MatMul`` whose right operand is
a constant 2-D weight. Matching is kept apart from rewriting: :func:`find_analog_layers`
only describes the graph, with a reason for every layer a pass must leave alone.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import onnx
from onnx import ModelProto, NodeProto, TensorProto

from ..errors import NabnError
from .initializers import weightless_copy
from .provenance import read_record

__all__ = [
    "ANALOG_OPS",
    "AnalogLayer",
    "find_analog_layers",
    "GraphIndex",
    "layer_name",
    "infer_ranks",
    "infer_shapes_light",
    "skip_summary",
    "select_layers",
    "batchnorm_nodes",
]

logger = logging.getLogger(__name__)

ANALOG_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Weight types the passes can compute with (a crossbar simulation of quantized weights is another tool).
_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)


def _outer_reads(node: NodeProto) -> set:
    """Names a node's subgraphs read from outside themselves (empty for a node without subgraphs)."""
    reads: set = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for graph in graphs:
            defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
            for inner in graph.node:
                defined.update(inner.output)
            for inner in graph.node:
                reads.update(n for n in inner.input if n and n not in defined)
                reads.update(n for n in _outer_reads(inner) if n not in defined)
            reads.update(o.name for o in graph.output if o.name not in defined)
    return reads


def layer_name(node: NodeProto) -> str:
    """The name users see for a node: its name, or its first output when it has none."""
    return node.name or node.output[0]


class GraphIndex:
    """Producers, consumers and initializers of a model's main graph.

    A main-graph node that holds subgraphs (If/Loop/Scan) counts as a consumer of every
    main-graph tensor its bodies read, so a weight also read inside a branch is seen as shared.
    """

    def __init__(self, model: ModelProto):
        graph = model.graph
        self.initializers: Dict[str, TensorProto] = {t.name: t for t in graph.initializer}
        self.consumers: Dict[str, List[NodeProto]] = defaultdict(list)
        self.producer: Dict[str, NodeProto] = {}
        for node in graph.node:
            for name in list(node.input) + sorted(_outer_reads(node)):
                if name:
                    self.consumers[name].append(node)
            for name in node.output:
                if name:
                    self.producer[name] = node
        self.graph_inputs = {i.name for i in graph.input}
        self.graph_outputs = {o.name for o in graph.output}

    def is_constant(self, name: str) -> bool:
        """True for an initializer.

        Older exporters (``keep_initializers_as_inputs=True``) also list every initializer
        as a graph input; onnxruntime runs those as constants unless a run feeds them, and
        so do the passes (the model keeps them listed as they were).
        """
        return name in self.initializers


@dataclass
class AnalogLayer:
    """One analog layer and what the passes may do with it.

    Attributes:
        node: the Conv/ConvTranspose/Gemm/MatMul node.
        name: :func:`layer_name` of the node.
        weight: name of the weight initializer (None if the weight is not a constant).
        bias: name of the bias initializer, if any.
        channels: output channels (the axis-1 size of the output), if known.
        bn: the BatchNormalization that normalizes the output, if any.
        bn_origin: ``"original"``, ``"inserted"`` (by nabn-onnx) or None.
        skip_reason: why a BatchNormalization cannot be inserted here (None if it can).
        noise_skip_reason: why noise cannot be put on the weight (None if it can).
    """

    node: NodeProto
    name: str
    weight: Optional[str]
    bias: Optional[str]
    channels: Optional[int]
    bn: Optional[NodeProto] = None
    bn_origin: Optional[str] = None
    skip_reason: Optional[str] = None
    noise_skip_reason: Optional[str] = None

    @property
    def op_type(self) -> str:
        """The analog node's op type (one of ``ANALOG_OPS``)."""
        return self.node.op_type


def _attr(node: NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def infer_shapes_light(model: ModelProto, batch_size: Optional[int] = None) -> Dict[str, Tuple[Optional[int], ...]]:
    """Shape of every tensor shape inference can tell (None for unknown dimensions).

    Inference runs on a copy of the graph without tensor data, so it costs no memory
    however large the weights are. With ``batch_size``, a symbolic first dimension of each
    model input is fixed to it first.
    """
    light = weightless_copy(model)
    if batch_size is not None:
        inits = {t.name for t in model.graph.initializer}
        for value in light.graph.input:
            dims = value.type.tensor_type.shape.dim
            if value.name not in inits and len(dims) and not dims[0].HasField("dim_value"):
                dims[0].dim_value = batch_size
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False)
    except Exception as exc:  # inference is a hint only; a model it cannot handle is still usable
        logger.debug("shape inference failed: %s", exc)
        inferred = light
    shapes: Dict[str, Tuple[Optional[int], ...]] = {}
    graph = inferred.graph
    for info in list(graph.value_info) + list(graph.output) + list(graph.input):
        tensor_type = info.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def infer_ranks(model: ModelProto) -> Dict[str, int]:
    """Rank of every tensor whose rank shape inference can tell."""
    return {name: len(shape) for name, shape in infer_shapes_light(model).items()}


def _type_name(data_type: int) -> str:
    return TensorProto.DataType.Name(data_type) if data_type in TensorProto.DataType.values() else str(data_type)


def _channels(node: NodeProto, weight: TensorProto) -> Optional[int]:
    dims = list(weight.dims)
    if node.op_type == "Conv":
        return dims[0] if dims else None
    if node.op_type == "ConvTranspose":
        return dims[1] * int(_attr(node, "group", 1)) if len(dims) >= 2 else None
    if node.op_type == "Gemm":
        if len(dims) != 2:
            return None
        return dims[0] if _attr(node, "transB", 0) else dims[1]
    if node.op_type == "MatMul":
        return dims[1] if len(dims) == 2 else None
    return None


def find_analog_layers(model: ModelProto, ranks: Optional[Dict[str, int]] = None) -> List[AnalogLayer]:
    """Describe every analog layer of the main graph, in graph order.

    Args:
        model: the model (Constant weights already lifted by :func:`nabn_onnx.model.load_model`).
        ranks: tensor ranks from :func:`infer_ranks` (computed when omitted and needed).

    Returns:
        One :class:`AnalogLayer` per matching node, with skip reasons filled in.
    """
    index = GraphIndex(model)
    inserted = set(read_record(model, "inserted_bn", []) or [])
    layers: List[AnalogLayer] = []
    for node in model.graph.node:
        if node.op_type not in ANALOG_OPS or node.domain not in ("", "ai.onnx"):
            continue
        if len(node.input) < 2:
            continue
        weight_name = node.input[1]
        bias_name = None
        if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 2 and node.input[2]:
            bias_name = node.input[2] if index.is_constant(node.input[2]) else None
        layer = AnalogLayer(node=node, name=layer_name(node), weight=None, bias=bias_name, channels=None)
        layers.append(layer)
        if not index.is_constant(weight_name):
            source = index.producer.get(weight_name)
            if node.op_type == "MatMul" and index.is_constant(node.input[0]):
                reason = "the constant is the left operand (W @ x): its output channels are not on axis 1"
            elif source is not None and source.op_type == "DequantizeLinear":
                reason = (
                    "the weight is quantized (QDQ: DequantizeLinear of an integer tensor), which nabn-onnx "
                    "does not handle yet: split, inject and calibrate the float model before quantizing it"
                )
            else:
                reason = f"weight '{weight_name}' is not a constant (it is computed or fed at run time)"
            layer.skip_reason = layer.noise_skip_reason = reason
            continue
        weight = index.initializers[weight_name]
        if weight.data_type not in _FLOAT_TYPES:
            layer.skip_reason = layer.noise_skip_reason = (
                f"weight '{weight_name}' has data type {_type_name(weight.data_type)}: "
                "only float weights (float32, float16, double) are handled"
            )
            continue
        layer.weight = weight_name
        layer.channels = _channels(node, weight)
        bn = _following_bn(node, index)
        if bn is not None:
            layer.bn = bn
            layer.bn_origin = "inserted" if bn.name in inserted else "original"
        users = list(index.consumers[weight_name])
        if len(users) > 1:
            layer.skip_reason = f"weight '{weight_name}' is shared with {len(users) - 1} other node(s)"
        elif layer.channels is None:
            layer.skip_reason = f"unknown channel count (weight '{weight_name}' has shape {list(weight.dims)})"
        elif node.op_type == "Gemm" and _attr(node, "transA", 0) not in (0, 1):
            layer.skip_reason = "unsupported Gemm attributes"
        elif node.op_type == "MatMul":
            if ranks is None:
                ranks = infer_ranks(model)
            rank = ranks.get(node.output[0])
            if rank is None:
                layer.skip_reason = "unknown output rank (shape inference could not tell)"
            elif rank != 2:
                layer.skip_reason = (
                    f"output has rank {rank}: its channels are on the last axis, but BatchNormalization "
                    "normalizes axis 1"
                )
        if layer.skip_reason and layer.bn is None:
            logger.debug("layer %s: %s", layer.name, layer.skip_reason)
    return layers


def _through_analog_periphery(out: str, index: GraphIndex) -> str:
    """The tensor the rest of the graph reads after ``out``.

    That is the end of the chain of :mod:`nabn_onnx.passes.analog_io` ops (noise, ADC,
    digital bias) when ``out`` feeds one, else ``out`` itself.
    """
    prefix = "nabn_analog/"
    if not (out.startswith(prefix) and out.endswith("/raw")):
        return out
    tag = out[: -len("raw")]
    current = out
    for _ in range(16):  # the chain is at most 8 nodes long
        users = [
            u for u in index.consumers.get(current, []) if u.name.startswith(tag) and u.op_type != "RandomNormalLike"
        ]
        if len(users) != 1:
            return out
        current = users[0].output[0]
        if users[0].name in (tag + "bias", tag + "out"):
            return current
    return out


def _following_bn(node: NodeProto, index: GraphIndex) -> Optional[NodeProto]:
    out = _through_analog_periphery(node.output[0], index)
    for user in index.consumers.get(out, []):
        if user.op_type == "BatchNormalization" and user.input[0] == out:
            return user
    return None


def batchnorm_nodes(model: ModelProto) -> Sequence[NodeProto]:
    """All BatchNormalization nodes of the main graph, in graph order."""
    return [n for n in model.graph.node if n.op_type == "BatchNormalization" and n.domain in ("", "ai.onnx")]


def skip_summary(layers: Sequence[AnalogLayer], noise: bool = False) -> str:
    """Why these layers were skipped, in one line: the commonest reason first, with an example layer.

    Reasons that differ only in the tensor they name count as one.
    """
    groups: Dict[str, List[AnalogLayer]] = {}
    for layer in layers:
        reason = layer.noise_skip_reason if noise else layer.skip_reason
        if reason:
            groups.setdefault(re.sub(r"'[^']*'", "'...'", reason), []).append(layer)
    if not groups:
        return ""
    ordered = sorted(groups.values(), key=len, reverse=True)
    first = ordered[0]
    reason = first[0].noise_skip_reason if noise else first[0].skip_reason
    text = f"{len(first)} of {len(layers)} analog layer(s) skipped, e.g. {first[0].name}: {reason}"
    if len(ordered) > 1:
        text += f" ({sum(len(g) for g in ordered[1:])} more for other reasons: see nabn-onnx inspect)"
    return text


def select_layers(
    layers: Sequence[AnalogLayer], include: Optional[str] = None, exclude: Optional[str] = None
) -> List[AnalogLayer]:
    """Layers whose names match ``include`` (all when None) and not ``exclude`` (``re.search``)."""
    inc = _compile("include", include)
    exc = _compile("exclude", exclude)
    return [
        layer
        for layer in layers
        if (inc is None or inc.search(layer.name)) and (exc is None or not exc.search(layer.name))
    ]


def _compile(option: str, pattern: Optional[str]) -> Optional[re.Pattern[str]]:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise NabnError(f"{option} pattern {pattern!r} is not a valid regular expression ({exc})") from None
