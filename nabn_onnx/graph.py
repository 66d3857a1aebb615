"""Finding the analog layers of a model and the BatchNormalization that follows each.

An *analog layer* is a node whose weight would live in a PIM crossbar: ``Conv`` and
``ConvTranspose`` of any rank, group and bias; ``Gemm``; ``MatMul`` whose right operand is
a constant 2-D weight. Matching is kept apart from rewriting: :func:`find_analog_layers`
only describes the graph, with a reason for every layer a pass must leave alone.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import onnx
from onnx import ModelProto, NodeProto, TensorProto

from .io import read_record

__all__ = ["ANALOG_OPS", "AnalogLayer", "find_analog_layers", "GraphIndex", "layer_name", "infer_ranks", "infer_shapes_light"]

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
    light = _without_weights(model)
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


def _without_weights(model: ModelProto) -> ModelProto:
    """A shallow stand-in of ``model`` whose initializers keep dims and type but no data."""
    light = ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(light, field, getattr(model, field))
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph = light.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    listed = {i.name for i in graph.input}
    for init in model.graph.initializer:
        if init.data_type in (TensorProto.INT64, TensorProto.INT32) and len(init.dims) <= 1 and _numel(init) <= 64:
            graph.initializer.append(init)  # shape-like constants: inference needs their values
        elif init.name not in listed:
            graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return light


def _type_name(data_type: int) -> str:
    return TensorProto.DataType.Name(data_type) if data_type in TensorProto.DataType.values() else str(data_type)


def _numel(tensor: TensorProto) -> int:
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count


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
        model: the model (Constant weights already lifted by :func:`nabn_onnx.io.load_model`).
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
            if node.op_type == "MatMul" and index.is_constant(node.input[0]):
                reason = "the constant is the left operand (W @ x): its output channels are not on axis 1"
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
        users = [n for n in index.consumers[weight_name]]
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


def _following_bn(node: NodeProto, index: GraphIndex) -> Optional[NodeProto]:
    out = node.output[0]
    for user in index.consumers.get(out, []):
        if user.op_type == "BatchNormalization" and user.input[0] == out:
            return user
    return None


def batchnorm_nodes(model: ModelProto) -> Sequence[NodeProto]:
    """All BatchNormalization nodes of the main graph, in graph order."""
    return [n for n in model.graph.node if n.op_type == "BatchNormalization" and n.domain in ("", "ai.onnx")]
